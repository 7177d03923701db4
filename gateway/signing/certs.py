"""S/MIME certificates and keys: load, match to addresses, judge usability (MOST Art. 16.2).

A pure library over `cryptography`'s x509: the key store and `mailgate keys` call it, so a
certificate that cannot serve (expired, wrong usage, wrong address, revoked) is refused with a
reason a person can act on, before any message depends on it. Messages never carry key material.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
Purpose = Literal["sign", "encrypt"]


class CertificateError(ValueError):
    """A certificate or key that cannot be loaded or used; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class Bundle:
    """One identity: the end-entity certificate, its key if we hold it, and intermediates."""

    certificate: x509.Certificate
    key: PrivateKey | None = field(default=None, repr=False)
    chain: tuple[x509.Certificate, ...] = ()


def load_bundle(data: bytes, password: bytes | None = None) -> Bundle:
    """Load PEM (certificates, optional key, maybe encrypted PKCS#8) or PKCS#12 (DER)."""
    if b"-----BEGIN" in data:
        return _load_pem(data, password)
    return _load_der(data, password)


def _pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    """Split PEM text into (label, block) pairs so each block is parsed by its own loader."""
    blocks: list[tuple[str, bytes]] = []
    label, lines = "", []
    for line in data.splitlines():
        text = line.strip()
        if text.startswith(b"-----BEGIN ") and text.endswith(b"-----"):
            label, lines = text[11:-5].decode("ascii", "replace"), [text]
        elif label and text.startswith(b"-----END "):
            lines.append(text)
            blocks.append((label, b"\n".join(lines) + b"\n"))
            label, lines = "", []
        elif label:
            lines.append(text)
    return blocks


def _load_pem(data: bytes, password: bytes | None) -> Bundle:
    blocks = _pem_blocks(data)
    certs: list[x509.Certificate] = []
    key = None
    for label, block in blocks:
        if label in ("CERTIFICATE", "X509 CERTIFICATE"):
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                raise CertificateError("a CERTIFICATE block in the PEM is malformed") from None
        elif label.endswith("PRIVATE KEY"):
            if key is not None:
                raise CertificateError("the PEM holds more than one private key")
            key = _load_pem_key(block, password)
    if not certs:
        raise CertificateError("no certificate found in the PEM data")
    return _bundle(certs, key)


def _load_pem_key(block: bytes, password: bytes | None) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(block, password)
    except TypeError:
        if password is None:
            raise CertificateError("the private key is encrypted: a password is needed") from None
        raise CertificateError(
            "a password was given but the private key is not encrypted"
        ) from None
    except ValueError:
        if password is not None:
            raise CertificateError(
                "wrong password for the private key (or a corrupt key)"
            ) from None
        raise CertificateError("the private key is malformed or of an unsupported kind") from None
    return _usable_key(key)


def _usable_key(key: object) -> PrivateKey:
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return key
    raise CertificateError(f"unsupported private key type {type(key).__name__}: use RSA or EC")


def _load_der(data: bytes, password: bytes | None) -> Bundle:
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError:
        try:
            return Bundle(x509.load_der_x509_certificate(data))
        except ValueError:
            pass
        if password is None:
            raise CertificateError(
                "not PEM, a DER certificate or a readable PKCS#12 (a password may be needed)"
            ) from None
        raise CertificateError("wrong password for the PKCS#12 file, or it is corrupt") from None
    certs = ([cert] if cert is not None else []) + list(extra)
    if not certs:
        raise CertificateError("the PKCS#12 file holds no certificate")
    return _bundle(certs, _usable_key(key) if key is not None else None)


def _bundle(certs: list[x509.Certificate], key: PrivateKey | None) -> Bundle:
    """Pick the end-entity certificate: the key's, else the first that is not a CA."""
    if key is not None:
        wanted = _spki(key.public_key())
        leaf = next((c for c in certs if _spki(c.public_key()) == wanted), None)
        if leaf is None:
            raise CertificateError("the private key does not match any certificate given")
    else:
        leaf = next((c for c in certs if not _is_ca(c)), certs[0])
    return Bundle(leaf, key, tuple(c for c in certs if c is not leaf))


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def addresses_of(cert: x509.Certificate) -> frozenset[str]:
    """rfc822Name SANs and subject emailAddress, lower-cased: how certs match mailboxes."""
    found = {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found.update(san.get_values_for_type(x509.RFC822Name))
    except x509.ExtensionNotFound:
        pass
    return frozenset(a.strip().lower() for a in found if a.strip())


def _ext(cert: x509.Certificate, cls: type) -> object | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def problem(
    cert: x509.Certificate,
    address: str,
    purpose: Purpose,
    now: datetime,
    crl: x509.CertificateRevocationList | None = None,
) -> str | None:
    """None when `cert` may `purpose` for `address` at `now`, else why not (for a person)."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    address = address.strip().lower()
    held = addresses_of(cert)
    if address not in held:
        listed = ", ".join(sorted(held)) or "no address"
        return f"certificate is for {listed}, not {address}"
    if now > cert.not_valid_after_utc:
        return f"certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if now < cert.not_valid_before_utc:
        return f"certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if crl is not None and crl.issuer == cert.issuer:
        revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if revoked is not None:
            return f"certificate was revoked on {revoked.revocation_date_utc:%Y-%m-%d} UTC"
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if isinstance(eku, x509.ExtendedKeyUsage) and not (
        ExtendedKeyUsageOID.EMAIL_PROTECTION in eku
        or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku
    ):
        return "certificate's extended key usage lacks emailProtection (S/MIME)"
    return _usage_problem(cert, purpose)


def _usage_problem(cert: x509.Certificate, purpose: Purpose) -> str | None:
    public = cert.public_key()
    if purpose == "encrypt" and not isinstance(public, rsa.RSAPublicKey):
        return "only RSA certificates can be encrypted to (S/MIME enveloped data here)"
    if purpose == "sign" and isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "EdDSA certificates cannot sign S/MIME here: use RSA or EC"
    ku = _ext(cert, x509.KeyUsage)
    if not isinstance(ku, x509.KeyUsage):
        return None
    if purpose == "sign" and not ku.digital_signature:
        return "certificate's key usage lacks digitalSignature: it cannot sign"
    if purpose == "encrypt" and not (ku.key_encipherment or ku.key_agreement):
        return "certificate's key usage lacks keyEncipherment: it cannot be encrypted to"
    return None


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lower-case hex without colons."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


_KU_NAMES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)


_EKU_NAMES = {
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}


def usages(cert: x509.Certificate) -> list[str]:
    """Key usage bits and EKU names, camelCase as in RFC 5280, for `keys list`."""
    names: list[str] = []
    ku = _ext(cert, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage):
        for attr in _KU_NAMES:
            if getattr(ku, attr):
                head, *rest = attr.split("_")
                names.append(head + "".join(w.title() for w in rest))
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if isinstance(eku, x509.ExtendedKeyUsage):
        names.extend(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku)
    return names


def describe(cert: x509.Certificate) -> dict[str, object]:
    """What `keys list` and events show about a certificate: never key material."""
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "usages": usages(cert),
        "addresses": sorted(addresses_of(cert)),
        "fingerprint": fingerprint(cert),
    }


def load_certificates(path: Path | None) -> tuple[x509.Certificate, ...]:
    """The PEM certificates in ``path`` (``signing.smime_ca_file``); none without a path."""
    if path is None:
        return ()
    try:
        return tuple(x509.load_pem_x509_certificates(path.read_bytes()))
    except ValueError:
        raise CertificateError(f"{path} holds no PEM certificate") from None


def load_crls(path: Path | None) -> tuple[x509.CertificateRevocationList, ...]:
    """The CRL in ``path`` (``signing.crl_file``, PEM or DER); none without a path."""
    if path is None:
        return ()
    data = path.read_bytes()
    try:
        if b"-----BEGIN" in data:
            return (x509.load_pem_x509_crl(data),)
        return (x509.load_der_x509_crl(data),)
    except ValueError:
        raise CertificateError(f"{path} is not a CRL") from None
