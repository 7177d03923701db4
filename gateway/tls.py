"""The gateway's TLS: the server policy both TLS listeners share, and a self-signed
certificate for first runs and loopback tests (real deployments use their own).

Policy: Mozilla's "intermediate" profile (https://wiki.mozilla.org/Security/Server_Side_TLS),
TLS 1.2 and 1.3 only, and on TLS 1.2 only ECDHE key exchange with AEAD ciphers
(AES-GCM, ChaCha20-Poly1305): no CBC suite (LUCKY13 and friends), no static RSA key
exchange, no compression, no renegotiation. Every mail client of the last decade
speaks this; a TLS 1.0 client is refused with a handshake alert and an event.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from asyncio import sslproto
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def write_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    """Write an ECDSA P-256 key (mode 0600, created so) and a one-year certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


# TLS 1.2 suites of the intermediate profile (ECDHE + AEAD); TLS 1.3 suites are all AEAD.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The context of both TLS listeners (STARTTLS and implicit TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(cert, key)
    return context


def following_context(
    cert: Path, key: Path, current: Callable[[], ssl.SSLContext | None]
) -> ssl.SSLContext:
    """A context for a listening socket that owns its TLS (aiohttp's site, asyncio's
    ``start_server(ssl=...)``): such a socket keeps the context it was made with, so this
    one's SNI callback (called for every ClientHello, with or without a server name) moves
    each new handshake onto ``current()``, the context SIGHUP last built. A renewed
    certificate then serves the next connection without a restart."""
    front = server_context(cert, key)

    def follow(connection: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        latest = current()
        if latest is not None and latest is not context:
            connection.context = latest

    front.sni_callback = follow
    return front


class AlertingSSLProtocol(sslproto.SSLProtocol):
    """asyncio drops the alert OpenSSL writes when a handshake fails; send it first, so
    the client learns why (e.g. ``handshake_failure`` for no shared cipher)."""

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            with contextlib.suppress(Exception):  # the peer may be gone already
                self._process_outgoing()  # type: ignore[attr-defined]
        super()._on_handshake_complete(handshake_exc)  # type: ignore[misc]
