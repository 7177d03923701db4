"""DKIM (RFC 6376, Ed25519 per RFC 8463) for outbound mail of local domains.

dkimpy does the canonicalisation and the choice and hashing of header fields, exactly as
it does for its own signatures; the private-key operation is ``cryptography``'s, because
dkimpy's RSA is pure Python (~190 signatures/s against ~4,900 on this kind of machine).
relaxed/relaxed: a signature that survives the whitespace changes other MTAs make.

Verification (inbound) is dkimpy's own, with the key looked up in DNS through dnspython
with a short timeout: a lookup that fails is ``temperror``, never a crash or a 4xx.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass

import dkim as dkimpy
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim import canonicalization
from dkim.canonicalization import CanonicalizationPolicy

SigningKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
CANONICALIZATION = b"relaxed/relaxed"
HEADER_NAME = b"DKIM-Signature"


def algorithm_of(key: SigningKey) -> bytes:
    return b"rsa-sha256" if isinstance(key, rsa.RSAPrivateKey) else b"ed25519-sha256"


def signature_field(
    message: bytes, domain: str, selector: str, key: SigningKey, now: int | None = None
) -> bytes:
    """The ``DKIM-Signature:`` field (folded, CRLF-terminated) to put on top of
    ``message`` (CRLF lines). Signs dkimpy's default header set, From twice (so a second
    From cannot be added unnoticed)."""
    parsed, body = _cut(message)
    include = [name.lower() for name in parsed.default_sign_headers()]
    if b"from" not in include:
        raise dkimpy.ParameterError("the message has no From field to sign")
    policy = CanonicalizationPolicy.from_c_value(CANONICALIZATION)
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    fields = [
        (b"v", b"1"),
        (b"a", algorithm_of(key)),
        (b"c", CANONICALIZATION),
        (b"d", domain.encode("ascii")),
        (b"s", selector.encode("ascii")),
        (b"t", str(int(now if now is not None else time.time())).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
        (b"b", b"0" * 60),  # folded onto its own line, as dkimpy does, then replaced
    ]
    value = dkimpy.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(HEADER_NAME))
    value = dkimpy.RE_BTAG.sub(b"\\1", value)
    hasher = hashlib.sha256()
    headers = policy.canonicalize_headers(parsed.headers)
    dkimpy.hash_headers(hasher, policy, headers, include, (HEADER_NAME, b" " + value), {})
    digest = hasher.digest()
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    else:
        signature = key.sign(digest)
    fields[-1] = (b"b", base64.b64encode(signature))
    value = b"; ".join(b"=".join(f) for f in fields) + b"\r\n"
    return HEADER_NAME + b": " + dkimpy.fold(value, namelen=len(HEADER_NAME))


def _cut(message: bytes) -> tuple[dkimpy.DKIM, bytes]:
    """dkimpy's parse of the header section, and the body, cut exactly where dkimpy's
    ``rfc822_parse`` cuts them. With CRLF lines only (what the gateway stores) that is
    the first empty line, and dkimpy would split and rejoin the whole body line by line
    for nothing (a fifth of a signature's cost); anything else gets dkimpy's own parse."""
    end = message.find(b"\r\n\r\n")
    if end < 0 or message.startswith(b"\r\n") or message.count(b"\n") != message.count(b"\r\n"):
        parsed = dkimpy.DKIM(message)
        return parsed, parsed.body
    return dkimpy.DKIM(message[: end + 4]), message[end + 4 :]


_WSP_RUN = re.compile(rb"[\t ]+")


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4, byte for byte what dkimpy's ``Relaxed.canonicalize_body`` gives,
    at C speed for ordinary text: its two regular expressions try every byte (~80 µs
    each on 5 KB); here they run only when the body holds a tab or two spaces in a row,
    and trailing single spaces go with ``bytes.replace``."""
    if b"\t" in body or b"  " in body:
        body = _WSP_RUN.sub(b" ", body)
    body = body.replace(b" \r\n", b"\r\n")
    return canonicalization.correct_empty_body(canonicalization.strip_trailing_lines(body))


def dns_record(selector: str, domain: str, key: SigningKey) -> str:
    """The TXT record to publish, one line: ``S._domainkey.D. IN TXT "v=DKIM1; ..."``."""
    from cryptography.hazmat.primitives import serialization

    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        kind = "rsa"
    else:
        der = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        kind = "ed25519"
    encoded = base64.b64encode(der).decode("ascii")
    # TXT strings hold 255 bytes each; resolvers join the pieces.
    pieces = [encoded[i : i + 200] for i in range(0, len(encoded), 200)]
    text = " ".join(f'"{p}"' for p in [f"v=DKIM1; k={kind}; p=" + pieces[0], *pieces[1:]])
    return f"{selector}._domainkey.{domain}. IN TXT {text}"


def record_text(selector: str, domain: str, key: SigningKey) -> bytes:
    """The TXT record's value as a resolver returns it (the pieces joined)."""
    record = dns_record(selector, domain, key)
    joined = "".join(record.split(" IN TXT ", 1)[1].replace('" "', "").strip('"'))
    return joined.encode("ascii")


@dataclass(frozen=True, slots=True)
class DkimResult:
    """One signature's result, as RFC 8601 names it (``dkim=pass header.d=... ``)."""

    result: str  # pass, fail, neutral, temperror, permerror (none: no signature)
    domain: str | None = None
    selector: str | None = None
    reason: str | None = None


def verify(message: bytes, txt_lookup: TxtLookup) -> list[DkimResult]:
    """Every DKIM signature of ``message``, checked (blocking: run in a thread)."""
    checker = dkimpy.DKIM(message, timeout=5)
    results: list[DkimResult] = []
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    for index in range(count):
        published: list[bytes | None] = []

        def lookup(
            name: bytes, timeout: float = 5, published: list[bytes | None] = published
        ) -> bytes | None:
            published.append(txt_lookup(name, timeout))
            return published[-1]

        try:
            ok = checker.verify(idx=index, dnsfunc=lookup)
        except TxtTemporaryError as exc:
            results.append(DkimResult("temperror", *_ids(checker), reason=str(exc)))
            continue
        except dkimpy.ValidationError as exc:
            # A body changed on the way is a failed signature, not a broken one.
            kind = "fail" if "body hash mismatch" in str(exc) else "permerror"
            results.append(DkimResult(kind, *_ids(checker), reason=str(exc).split(" (")[0]))
            continue
        except dkimpy.DKIMException as exc:
            results.append(DkimResult("permerror", *_ids(checker), reason=str(exc)[:200]))
            continue
        domain, selector = _ids(checker)
        if not ok and published and published[-1] is None:
            results.append(DkimResult("permerror", domain, selector, "no key published"))
        else:
            results.append(DkimResult("pass" if ok else "fail", domain, selector,
                                      None if ok else "signature did not verify"))  # fmt: skip
    return results


class TxtTemporaryError(dkimpy.DKIMException):
    """The key could not be looked up now (timeout, server failure): temperror."""


def _ids(checker: dkimpy.DKIM) -> tuple[str | None, str | None]:
    fields = checker.signature_fields or {}
    domain, selector = fields.get(b"d"), fields.get(b"s")
    return (
        domain.decode("ascii", "replace") if isinstance(domain, bytes) else None,
        selector.decode("ascii", "replace") if isinstance(selector, bytes) else None,
    )


class TxtLookup:
    """dkimpy's ``dnsfunc``: the TXT record of a name, through dnspython with a timeout.

    ``nameserver`` (``signing.dns_resolver``) points at one resolver (tests, closed
    networks); otherwise the system's. A name that does not exist gives no key (dkimpy
    says so: permerror); a timeout or server failure raises TxtTemporaryError."""

    def __init__(self, timeout: float, nameserver: tuple[str, int] | None = None) -> None:
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=nameserver is None)
        if nameserver is not None:
            resolver.nameservers = [nameserver[0]]
            resolver.port = nameserver[1]
        resolver.lifetime = timeout
        resolver.timeout = timeout
        self._resolver = resolver

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        import dns.exception
        import dns.resolver

        try:
            answer = self._resolver.resolve(name.decode("ascii").rstrip("."), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            shown = name.decode("ascii", "replace")
            raise TxtTemporaryError(f"DNS lookup of {shown}: {exc}") from None
        for record in answer:
            return b"".join(record.strings)
        return None
