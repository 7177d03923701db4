"""S/MIME sign, encrypt, verify and decrypt whole RFC 5322 messages (MOST Art. 16.2).

Messages go in and out as bytes with CRLF line ends. The outer header fields (From, To,
Subject, Received, ...) stay outside; the Content-* fields and MIME-Version travel inside the
signed or encrypted entity. Signing and encryption use `cryptography`'s pkcs7 builders.
`cryptography` has no verification API, so `verify` runs `openssl cms -verify` (the OpenSSL
that `cryptography` itself builds on, maintained, and the tool the other side tests with) as a
subprocess with an argument list and a timeout.
"""

from __future__ import annotations

import base64
import binascii
import email.header
import email.utils
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from gateway.mime.sniff import is_utf8
from gateway.signing.certs import Bundle, addresses_of, fingerprint

OPENSSL_TIMEOUT = 10.0

_SIG_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature")
_MIME_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")
# ContentInfo contentType OIDs, DER-encoded (tag, length, value).
_OID_AUTH_ENVELOPED = bytes.fromhex("060b2a864886f70d0109100117")  # 1.2.840.113549.1.9.16.1.23
# Parse and regenerate only what must be re-encoded. compat32 writes header text back as it
# came (no refolding; RFC 2047 only for raw 8-bit) and costs a fraction of policy.default.
_POLICY = policy.compat32.clone(linesep="\r\n", cte_type="7bit")

Status = Literal["pass", "fail", "none", "neutral"]


class SmimeError(Exception):
    """A permanent failure (bad input, no usable key): the caller answers 5xx."""


class SmimeTemporaryError(SmimeError):
    """A failure that may pass on retry (openssl timing out or missing): the caller answers 4xx."""


@dataclass(frozen=True, slots=True)
class Signer:
    """Who signed: enough for Authentication-Results and events, no key material."""

    addresses: frozenset[str]
    fingerprint: str
    certificate: x509.Certificate = field(repr=False)


@dataclass(frozen=True, slots=True)
class Verification:
    """RFC 8601 smime= result: pass (intact, chain reaches `trusted`, signer is From),
    neutral (intact but untrusted or unchecked chain), fail (altered, bad signature, or
    signer not the From address), none (not signed)."""

    status: Status
    reason: str = ""
    signer: Signer | None = None
    # Opaque signed-data only: the message with the signed entity in place of the
    # pkcs7-mime body (outer header fields kept), for delivery to readers without S/MIME.
    unwrapped: bytes | None = field(default=None, repr=False)


# --- raw message handling -------------------------------------------------------------


def _crlf(data: bytes) -> bytes:
    """Canonical CRLF line ends (lone LF -> CRLF; CRLF and lone CR untouched)."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _split(message: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its folding and CRLF, byte-exact) and the body."""
    if message.startswith(b"\r\n"):
        return [], message[2:]
    end = message.find(b"\r\n\r\n")
    head, body = (message, b"") if end < 0 else (message[: end + 2], message[end + 4 :])
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line if line.endswith(b"\r\n") else line + b"\r\n")
    return fields, body


def _name(header_field: bytes) -> bytes:
    return header_field.split(b":", 1)[0].strip().lower()


def _is_content(header_field: bytes) -> bool:
    name = _name(header_field)
    return name.startswith(b"content-") or name == b"mime-version"


def _parts(message: bytes) -> tuple[list[bytes], bytes]:
    """Outer (non-content) fields and the MIME entity (content fields + body)."""
    fields, body = _split(message)
    outer = [f for f in fields if not _is_content(f)]
    inner = [f for f in fields if _is_content(f)]
    return outer, b"".join(inner) + b"\r\n" + body


def _headers(message: bytes) -> Message:
    """The top-level header fields only: the body is not read."""
    end = message.find(b"\r\n\r\n")
    return BytesHeaderParser(policy=policy.compat32).parsebytes(
        message if end < 0 else message[: end + 4]
    )


def is_signed(message: bytes) -> bool:
    """multipart/signed with a PKCS#7 signature, or opaque signed-data."""
    head = _headers(message)
    ctype = head.get_content_type()
    if ctype == "multipart/signed":
        return str(head.get_param("protocol", "")).lower() in _SIG_TYPES
    return ctype in _MIME_TYPES and _smime_type(head) == "signed-data"


def is_encrypted(message: bytes) -> bool:
    """application/pkcs7-mime enveloped (or auth-enveloped) data."""
    return _encrypted_head(_headers(message))


def _encrypted_head(head: Message) -> bool:
    if head.get_content_type() not in _MIME_TYPES:
        return False
    kind = _smime_type(head)
    if kind:
        return kind in ("enveloped-data", "authenveloped-data")
    name = str(head.get_param("name", "") or head.get_filename("") or "").lower()
    return name.endswith(".p7m")


def _smime_type(head: Message) -> str:
    return str(head.get_param("smime-type", "")).lower()


# --- making the signed entity 7-bit safe ----------------------------------------------


def _needs_recoding(part: Message) -> bool:
    cte = str(part.get("content-transfer-encoding", "7bit")).strip().lower()
    if part.is_multipart() or cte in ("base64", "quoted-printable"):
        return False
    raw = _raw_payload(part)
    if cte in ("8bit", "binary") or not raw.isascii() or b"\0" in raw:
        return True
    return any(len(line) > 998 for line in raw.splitlines())


def _raw_payload(part: Message) -> bytes:
    """The payload bytes as they came (decode=True is the identity for 7bit/8bit/binary)."""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _qp(data: bytes) -> bytes:
    """Quoted-printable text with CRLF hard breaks; 'From ' escaped so no mbox mangles it."""
    encoded = binascii.b2a_qp(data.replace(b"\r\n", b"\n"), istext=True)
    if encoded.startswith(b"From ") or b"\nFrom " in encoded:
        lines = encoded.split(b"\n")
        encoded = b"\n".join(b"=46" + ln[1:] if ln.startswith(b"From ") else ln for ln in lines)
    return encoded.replace(b"\n", b"\r\n")


def _b64(data: bytes) -> bytes:
    """Base64 in 76-character lines, CRLF, ending with CRLF."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _recode(part: Message) -> None:
    """Re-encode one 8-bit leaf: text as quoted-printable, anything else as base64."""
    data = part.get_payload(decode=True) or b""
    new_fields, body = _recoded(part, data)
    for name, value in new_fields:
        del part[name]
        part[name] = value
    part.set_payload(body.decode("ascii"))


def _recoded(head: Message, data: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """The header fields to set and the 7-bit body for one leaf's raw content."""
    is_text = head.get_content_maintype() == "text"
    fields = [("Content-Transfer-Encoding", "quoted-printable" if is_text else "base64")]
    if is_text and "content-type" not in head:
        charset = "utf-8" if is_utf8(data) else "unknown-8bit"
        fields.insert(0, ("Content-Type", f'text/plain; charset="{charset}"'))
    return fields, _qp(data) if is_text else _b64(data)


def _recode_single(entity: bytes) -> bytes | None:
    """A one-part entity re-encoded without the full parser and generator (the common,
    hot case); None when it is a multipart or message/* and needs the tree."""
    fields, body = _split(entity)
    head = BytesHeaderParser(policy=policy.compat32).parsebytes(b"".join(fields) + b"\r\n")
    if head.get_content_maintype() in ("multipart", "message"):
        return None
    if not all(f.isascii() for f in fields):
        return None  # raw 8-bit header fields: the tree path encodes them
    cte = str(head.get("content-transfer-encoding", "7bit")).strip().lower()
    if cte in ("base64", "quoted-printable"):
        return entity
    new_fields, new_body = _recoded(head, body)
    replaced = {name.lower().encode("ascii") for name, _ in new_fields}
    kept = [f for f in fields if _name(f) not in replaced]
    added = [f"{name}: {value}\r\n".encode("ascii") for name, value in new_fields]
    return b"".join(kept + added) + b"\r\n" + new_body


def _seven_bit_headers(part: Message) -> bool:
    """Raw 8-bit (UTF-8) MIME header fields made 7-bit: parameters such as a Vietnamese
    filename as RFC 2231, other fields as RFC 2047 words. True when something changed."""
    raw = list(part.raw_items())  # as parsed: compat32's get() would lose the 8-bit bytes
    names = {k.lower(): k for k, v in reversed(raw) if not str(v).isascii()}  # first spelling
    for name, spelling in names.items():
        values = [_seven_bit_value(name, _unraw(str(v))) for k, v in raw if k.lower() == name]
        del part[name]
        for value in values:
            part[spelling] = value
    return bool(names)


def _seven_bit_value(name: str, text: str) -> str:
    if name not in ("content-type", "content-disposition"):
        return text if text.isascii() else email.header.Header(text, "utf-8").encode()
    holder = Message()
    holder[name] = text
    params = holder.get_params(header=name) or [("", "")]
    return params[0][0] + "".join(f"; {_param(key, value)}" for key, value in params[1:])


def _unraw(value: str) -> str:
    """Text from raw header bytes that compat32 hands back as surrogate escapes or as
    Latin-1 code points (its unknown-8bit Header); the bytes are taken as UTF-8."""
    try:
        raw = value.encode("latin-1", "surrogateescape")
    except UnicodeEncodeError:
        return value  # already real text
    return raw.decode("utf-8", "replace")


def _param(key: str, value: str | tuple[str, str, str]) -> str:
    text = email.utils.collapse_rfc2231_value(value) if isinstance(value, tuple) else value
    text = _unraw(text)
    if text.isascii():
        return f'{key}="{email.utils.quote(text)}"'
    return f"{key}*={email.utils.encode_rfc2231(text, 'utf-8', '')}"


def _plainly_seven_bit(entity: bytes) -> bool:
    """The fast path: ASCII, no NUL, short lines and no part labelled 8bit/binary."""
    if not entity.isascii() or b"\0" in entity:
        return False
    lowered = entity.lower()
    if b"8bit" in lowered or b"binary" in lowered:
        return False
    return all(len(line) <= 998 for line in entity.split(b"\r\n"))


def seven_bit_entity(entity: bytes) -> bytes:
    """The entity unchanged when already 7-bit safe, else with every 8-bit part re-encoded,
    so no relay can alter a signed byte (RFC 8551 §3.1.2)."""
    if _plainly_seven_bit(entity):
        return entity
    single = _recode_single(entity)
    if single is not None:
        return single
    tree = BytesParser(policy=_POLICY).parsebytes(entity)
    renamed = [p for p in tree.walk() if _seven_bit_headers(p)]
    leaves = [p for p in tree.walk() if _needs_recoding(p)]
    containers = [
        p
        for p in tree.walk()
        if p.is_multipart()
        and str(p.get("content-transfer-encoding", "")).strip().lower() in ("8bit", "binary")
    ]
    if not leaves and not containers and not renamed:
        return entity
    for part in leaves:
        _recode(part)
    for part in containers:
        part.replace_header("Content-Transfer-Encoding", "7bit")
    return tree.as_bytes(policy=_POLICY)


# --- sign and encrypt -------------------------------------------------------------------


def sign(message: bytes, bundle: Bundle) -> bytes:
    """Detached multipart/signed (SHA-256) over the 7-bit-safe entity, outer headers kept."""
    if bundle.key is None:
        raise SmimeError("no private key for the signing certificate")
    outer, entity = _parts(_crlf(message))
    entity = seven_bit_entity(entity)
    builder = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(entity)
        .add_signer(bundle.certificate, bundle.key, hashes.SHA256())
    )
    for cert in bundle.chain:
        builder = builder.add_certificate(cert)
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    try:
        signature = builder.sign(serialization.Encoding.DER, options)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SmimeError(f"cannot sign with this certificate and key: {exc}") from None
    boundary = _boundary(entity)
    head = (
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n'
        f' micalg=sha-256; boundary="{boundary}"\r\n\r\n'
        "This is an S/MIME signed message\r\n"
        f"\r\n--{boundary}\r\n"
    ).encode("ascii")
    tail = (
        f"\r\n--{boundary}\r\n"
        'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="smime.p7s"\r\n\r\n'
    ).encode("ascii")
    end = f"\r\n--{boundary}--\r\n".encode("ascii")
    return b"".join(outer) + head + entity + tail + _b64(signature) + end


def _boundary(entity: bytes) -> str:
    while True:
        boundary = f"----=_mailgate_smime_{os.urandom(12).hex()}"
        if boundary.encode("ascii") not in entity:
            return boundary


def encrypt(message: bytes, certificates: Sequence[x509.Certificate]) -> bytes:
    """AES-256-CBC enveloped data, one recipient info per certificate, outer headers kept."""
    if not certificates:
        raise SmimeError("no recipient certificate to encrypt to")
    outer, entity = _parts(_crlf(message))
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(entity)
    builder = builder.set_content_encryption_algorithm(algorithms.AES256)
    for cert in certificates:
        try:
            builder = builder.add_recipient(cert)
        except (TypeError, ValueError):
            raise SmimeError(
                f"cannot encrypt to certificate {fingerprint(cert)[:16]}: only RSA is supported"
            ) from None
    der = builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    head = (
        "MIME-Version: 1.0\r\n"
        "Content-Type: application/pkcs7-mime; smime-type=enveloped-data;\r\n"
        ' name="smime.p7m"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="smime.p7m"\r\n\r\n'
    ).encode("ascii")
    return b"".join(outer) + head + _b64(der)


# --- decrypt ----------------------------------------------------------------------------


def decrypt(message: bytes, bundle: Bundle, *, timeout: float = OPENSSL_TIMEOUT) -> bytes:
    """The message again: outer headers kept, the encrypted entity restored in place.

    Header fields the sender protected inside the entity win over their outer copies.
    """
    if bundle.key is None:
        raise SmimeError("no private key to decrypt with")
    message = _crlf(message)
    head = _headers(message)
    if not _encrypted_head(head):
        raise SmimeError("not an S/MIME encrypted message")
    fields, body = _split(message)
    cte = str(head.get("content-transfer-encoding", "")).strip().lower()
    try:
        der = base64.b64decode(body) if cte == "base64" else body
    except binascii.Error:
        raise SmimeError("the encrypted part is not valid base64") from None
    if not der:
        raise SmimeError("the encrypted part is empty")
    try:
        if _is_auth_enveloped(der) or _smime_type(head) == "authenveloped-data":
            plain = _openssl_decrypt(der, bundle, timeout)  # cryptography cannot
        else:
            plain = pkcs7.pkcs7_decrypt_der(der, bundle.certificate, bundle.key, [])
    except UnsupportedAlgorithm:
        plain = _openssl_decrypt(der, bundle, timeout)
    except (ValueError, TypeError):
        raise SmimeError(
            "cannot decrypt: not encrypted to this certificate, or the data is corrupt"
        ) from None
    outer = [f for f in fields if not _is_content(f)]
    inner_fields, inner_body = _split(_crlf(plain))
    protected = {_name(f) for f in inner_fields if not _is_content(f)}
    kept = [f for f in outer if _name(f) not in protected]
    return b"".join(kept) + b"".join(inner_fields) + b"\r\n" + inner_body


def _openssl_decrypt(der: bytes, bundle: Bundle, timeout: float) -> bytes:
    """What cryptography will not decrypt: legacy ciphers (3DES, the `openssl smime -encrypt`
    default) and AuthEnvelopedData (AES-GCM, RFC 5083). `openssl cms -decrypt`, the key
    handed over a pipe so it never touches disk."""
    assert bundle.key is not None
    exe = shutil.which("openssl")
    if exe is None:
        raise SmimeTemporaryError("openssl not found on PATH: cannot decrypt a legacy cipher")
    key_pem = bundle.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with tempfile.TemporaryDirectory(prefix="mailgate-smime-") as tmp:
        recip = Path(tmp) / "recip.pem"
        recip.write_bytes(bundle.certificate.public_bytes(serialization.Encoding.PEM))
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, key_pem)  # a key is a few KB: within one pipe buffer
            os.close(write_end)
            write_end = -1
            args = ["cms", "-decrypt", "-inform", "DER", "-recip", str(recip)]
            done = subprocess.run(
                [exe, *args, "-inkey", f"/dev/fd/{read_end}"],
                input=der,
                capture_output=True,
                timeout=timeout,
                pass_fds=(read_end,),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SmimeTemporaryError(f"openssl cms -decrypt took over {timeout:g} s") from None
        except OSError as exc:
            raise SmimeTemporaryError(f"cannot run openssl: {exc.strerror}") from None
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
    if done.returncode != 0:
        raise SmimeError("cannot decrypt (openssl): not encrypted to this certificate, or corrupt")
    return done.stdout


def _is_auth_enveloped(der: bytes) -> bool:
    """ContentInfo starts SEQUENCE { OID contentType ... }: look at that first OID only."""
    if len(der) < 2 or der[0] != 0x30:
        return False
    skip = 2 + (der[1] & 0x7F if der[1] & 0x80 else 0)
    return der[skip : skip + len(_OID_AUTH_ENVELOPED)] == _OID_AUTH_ENVELOPED


# --- verify -----------------------------------------------------------------------------


def verify(
    message: bytes,
    trusted: Sequence[x509.Certificate] = (),
    now: datetime | None = None,
    *,
    crls: Sequence[x509.CertificateRevocationList] = (),
    timeout: float = OPENSSL_TIMEOUT,
) -> Verification:
    """Check an S/MIME signature with `openssl cms -verify`.

    One openssl run when the chain reaches `trusted`; a second, with -noverify, only when it
    does not, to tell an altered message (fail) from an intact but untrusted one (neutral).
    With `crls`, the signer must be on none of them and its issuer's CRL must be among them
    (revoked, or no CRL for its issuer: neutral).
    """
    message = _crlf(message)
    if not is_signed(message):
        if is_encrypted(message):
            return Verification("none", "encrypted: decrypt before verifying")
        return Verification("none", "not S/MIME signed")
    with tempfile.TemporaryDirectory(prefix="mailgate-smime-") as tmp:
        signer_pem = Path(tmp) / "signer.pem"
        base = [
            "cms",
            "-verify",
            "-inform",
            "SMIME",
            "-signer",
            str(signer_pem),
        ]
        chain_reason = "no trusted certificates configured"
        if trusted:
            ca_file = Path(tmp) / "trusted.pem"
            # openssl cms has no -CRLfile; the CAfile lookup loads CRLs beside certificates.
            ca_file.write_bytes(
                b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [*trusted, *crls])
            )
            args = [*base, "-CAfile", str(ca_file), "-no-CApath", "-no-CAstore"]
            args += ["-purpose", "smimesign"] + (["-crl_check"] if crls else [])
            if now is not None:
                when = now if now.tzinfo else now.replace(tzinfo=UTC)
                args += ["-attime", str(int(when.timestamp()))]
            ok, out, err = _openssl(args, message, timeout)
            if ok:
                return _with_signer(message, signer_pem, "pass", "", out)
            if _altered(err):
                return Verification("fail", _reason(err))
            chain_reason = _reason(err)
        ok, out, err = _openssl([*base, "-noverify"], message, timeout)
        if not ok:
            return Verification("fail", _reason(err))
        intact = f"signature intact; {chain_reason}"
        return _with_signer(message, signer_pem, "neutral", intact, out)


def _openssl(args: list[str], data: bytes, timeout: float) -> tuple[bool, bytes, str]:
    """Run openssl; (succeeded, stdout, stderr). Trouble running it is temporary."""
    exe = shutil.which("openssl")
    if exe is None:
        raise SmimeTemporaryError("openssl not found on PATH: cannot verify S/MIME")
    try:
        done = subprocess.run(
            [exe, *args], input=data, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise SmimeTemporaryError(f"openssl cms -verify took over {timeout:g} s") from None
    except OSError as exc:
        raise SmimeTemporaryError(f"cannot run openssl: {exc.strerror}") from None
    return done.returncode == 0, done.stdout, done.stderr.decode("utf-8", "replace")


def _reason(stderr: str) -> str:
    """One line a person can act on, from openssl's error stack."""
    text = stderr.lower()
    if _altered(stderr):
        return "message content was altered after signing, or the signature is bad"
    if "Verify error:" in stderr:
        detail = stderr[stderr.index("Verify error:") + len("Verify error:") :].splitlines()[0]
        return f"signer certificate not accepted: {detail.strip()}"
    if "error reading" in text or "mime" in text or "no content" in text:
        return "malformed S/MIME structure"
    first = next((ln for ln in stderr.splitlines() if ln.strip()), "unknown openssl error")
    return f"openssl: {first.strip()[:200]}"


def _altered(stderr: str) -> bool:
    """openssl's words for a digest or signature mismatch (not a chain problem)."""
    text = stderr.lower()
    return any(w in text for w in ("content verify error", "digest failure", "signature failure"))


def _with_signer(
    message: bytes, signer_pem: Path, status: Status, reason: str, content: bytes
) -> Verification:
    """Attach the signer (and, for opaque signed-data, the unwrapped message); a signer who
    is not the From address makes the result fail."""
    try:
        cert = x509.load_pem_x509_certificates(signer_pem.read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return Verification(status, reason or "signer certificate unavailable")
    held = addresses_of(cert)
    signer = Signer(held, fingerprint(cert), cert)
    head = _headers(message)
    unwrapped = None
    if head.get_content_type() in _MIME_TYPES:
        outer, _ = _parts(message)
        unwrapped = b"".join(outer) + _crlf(content)
    senders = {a.lower() for _, a in email.utils.getaddresses(head.get_all("from", [])) if a}
    if senders and not senders & held:
        listed = ", ".join(sorted(held)) or "no address"
        who = ", ".join(sorted(senders))
        reason = f"signed by a certificate for {listed}, not From {who}"
        return Verification("fail", reason, signer, unwrapped)
    return Verification(status, reason, signer, unwrapped)
