"""PGP/MIME (RFC 3156) over a gateway-owned GnuPG home, through python-gnupg (MOST Art. 16.2).

A pure library: no config, no events, no pipeline. The caller (the signing stage) builds one
`Keyring` per process and calls it from worker threads; every method blocks on a `gpg` process.

Why these gpg options (`_GPG_OPTIONS`):
- `--trust-model always`: the operator imports each key explicitly (`mailgate keys import`);
  that import *is* the trust decision. There is no web of trust to consult, and without it gpg
  would refuse to encrypt to an uncertified key and would recheck the trustdb on every call.
- `--no-auto-check-trustdb`, `--no-auto-key-retrieve`, `--no-auto-key-locate`: no trustdb
  rebuild and never a network lookup (a keyserver or WKD fetch) in the middle of a message.
- `--pinentry-mode loopback` on every call (with `--batch --no-tty`, which python-gnupg adds): a
  passphrase, when a key has one, comes from the caller on a pipe; a protected key without one
  fails at once instead of waiting for a pinentry that no one will answer.
- `--homedir` is always the gateway's own directory and `GNUPGHOME` in gpg's environment says the
  same, so neither the tests nor the gateway ever read or write the user's ~/.gnupg.

- `--no-random-seed-file`: gpg processes running at once take the seed file's lock in turn,
  and libgcrypt waits 0.25 s and then 1.25 s for it, so a message now and then took 1.5 s
  longer (the p99 of sign+encrypt with two SMTP processes: 1.56 s, 0.22 s without the file).
  The kernel's getrandom() seeds every call; the file only spared that.
- Signing names the key with `--local-user`, never python-gnupg's `--default-key`: given an
  expired or revoked key, `--default-key` quietly signs with another secret key.
- `LC_ALL=C` and `--display-charset utf-8`: gpg's messages are matched in English below.

Speed: python-gnupg starts one gpg process per call (sign+encrypt is one call). What makes a
call cheap is an agent already running with the unprotected secret keys in memory: `Keyring`
launches it once (`gpgconf --launch gpg-agent`) and `close()` stops it; a killed agent costs
about half the rate (tests/unit/test_pgp.py prints the figures). Other gpg options measured
(`--compress-algo none`, `--lock-never`, `--no-sig-cache`) changed nothing beyond noise:
the process start is the cost. If the agent dies, the next gpg call
starts a new one; a call that cannot reach it is a `PgpTemporaryError`.

Errors: `PgpError` (the same input would fail again: no or unusable key, bad data) and
`PgpTemporaryError` (gpg missing, killed after `timeout` s, agent unreachable, keyring
unreadable). A key listing gpg could not read is always temporary, never "no key".

Passphrases: keys are best imported without one (the key store's files are 0600 under
data_dir). Where a key has one, the caller passes it to `import_key`, `sign`, `encrypt` (with
`sign_with`) and `decrypt`; it travels to gpg on a pipe, never in argv, a log or an exception.
After one correct use the agent keeps the key unlocked for its cache TTL (gpg-agent's
default-cache-ttl, 600 s from the last use), so later calls work without it for a while.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import quopri
import secrets
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses
from pathlib import Path
from queue import Queue

import gnupg

__all__ = [
    "Decrypted",
    "KeyInfo",
    "Keyring",
    "PgpError",
    "PgpFailure",
    "PgpTemporaryError",
    "Verification",
    "is_encrypted",
    "is_signed",
]

log = logging.getLogger(__name__)

_GPG_OPTIONS = [
    "--trust-model",
    "always",
    "--no-auto-check-trustdb",
    "--no-auto-key-retrieve",
    "--no-auto-key-locate",
    "--pinentry-mode",
    "loopback",
    "--display-charset",
    "utf-8",
    "--no-greeting",
    "--no-secmem-warning",
    "--no-random-seed-file",
]
_DIGEST = ["--digest-algo", "SHA256"]
# OpenPGP hash algorithm ids (RFC 4880 §9.4) -> the micalg name RFC 3156 §5 asks for.
_HASH_NAMES = {"1": "md5", "2": "sha1", "3": "ripemd160", "8": "sha256", "9": "sha384"}
_HASH_NAMES |= {"10": "sha512", "11": "sha224"}
# Phrases in gpg's (LC_ALL=C) stderr that mean "try again later", not "this message is bad".
_TEMPORARY = (
    "can't connect to the agent",
    "no gpg-agent running",
    "connection to agent lost",
    "permission denied",
    "input/output error",
    "no space left on device",
    "resource temporarily unavailable",
    "keydb_search failed",
    "pubring.kbx: read error",
    "waiting for lock",
)
_SIG_PART_HEADERS = (
    b'Content-Type: application/pgp-signature; name="signature.asc"\r\n'
    b"Content-Description: OpenPGP digital signature\r\n"
    b'Content-Disposition: attachment; filename="signature.asc"\r\n\r\n'
)
_ENC_VERSION_PART = (
    b"Content-Type: application/pgp-encrypted\r\n"
    b"Content-Description: PGP/MIME version identification\r\n\r\n"
    b"Version: 1\r\n"
)
_ENC_DATA_HEADERS = (
    b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n'
    b"Content-Description: OpenPGP encrypted message\r\n"
    b'Content-Disposition: inline; filename="encrypted.asc"\r\n\r\n'
)
_LIST_TTL = 30.0  # seconds a key listing is reused while the keyring files are unchanged


class _NoKeyMaterial(logging.Filter):
    """python-gnupg logs the first 256 bytes of imported key data at DEBUG: drop that record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("import_keys:")


logging.getLogger("gnupg").addFilter(_NoKeyMaterial())


class PgpFailure(Exception):
    """Base of both failures; `reason` is short, safe to log, and never holds key material."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PgpError(PgpFailure):
    """Permanent: the same message and keys would fail again (5xx)."""


class PgpTemporaryError(PgpFailure):
    """gpg did not answer in time, the agent is gone, the keyring is unreadable (4xx)."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One OpenPGP key as gpg lists it; `fingerprint` is always the primary key's."""

    fingerprint: str
    keyid: str
    addresses: tuple[str, ...]
    uids: tuple[str, ...]
    subkeys: tuple[str, ...]
    secret: bool
    created: datetime | None
    expires: datetime | None
    can_sign: bool
    can_encrypt: bool
    revoked: bool
    expired: bool

    def usable(self, now: datetime | None = None) -> bool:
        """Not revoked, not expired (gpg's validity or the expiry date against `now`)."""
        now = now or datetime.now(UTC)
        return not (self.revoked or self.expired or (self.expires and self.expires <= now))


@dataclass(frozen=True, slots=True)
class Verification:
    """One PGP/MIME verification result for Authentication-Results and events.

    status: "pass" (good signature by a usable key in our keyring), "fail" (bad signature,
    revoked key, malformed signature part), "neutral" (cannot be checked here: no public key,
    expired key or signature, unsupported algorithm), "none" (not a PGP/MIME signed message).
    A tampered message is "fail" and is delivered stamped, not refused (issue 13).
    """

    status: str
    reason: str
    fingerprint: str | None = None
    key_id: str | None = None
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Decrypted:
    """The decrypted message (outer headers kept) and its signature, if one was inside."""

    message: bytes
    signed: bool
    verification: Verification


# --- MIME helpers ------------------------------------------------------------------------


def _crlf(data: bytes) -> bytes:
    """Canonical line ends (RFC 3156 §3 signs CRLF text); bare CR and LF become CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def _split(message: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its folded lines and CRLF, byte-exact) and the body.

    The email package cannot give back a part's bytes exactly, and signing needs them, so the
    header block is cut at the first empty line and fields at lines not starting with WSP.
    """
    data = _crlf(message)
    if data.startswith(b"\r\n"):
        return [], data[2:]
    end = data.find(b"\r\n\r\n")
    head, body = (data + b"\r\n", b"") if end < 0 else (data[: end + 2], data[end + 4 :])
    fields: list[bytes] = []
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields, body


def _field_name(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def _is_inner(field: bytes) -> bool:
    """Content-* and MIME-Version describe the content, so they move into the protected part."""
    name = _field_name(field)
    return name.startswith("content-") or name == "mime-version"


def _entity(fields: list[bytes], body: bytes) -> bytes:
    """The MIME entity to protect: the content header fields and the body."""
    inner = [f for f in fields if _is_inner(f)]
    if not any(_field_name(f) == "content-type" for f in inner):
        charset = b"us-ascii" if body.isascii() else b"utf-8"
        inner.append(b'Content-Type: text/plain; charset="' + charset + b'"\r\n')
    return b"".join(inner) + b"\r\n" + body


def _outer(fields: list[bytes]) -> bytes:
    return b"".join(f for f in fields if not _is_inner(f)) + b"MIME-Version: 1.0\r\n"


def _needs_encoding(part: Message) -> bool:
    """8bit/binary data, or trailing white space a relay may strip (RFC 3156 §3)."""
    cte = str(part.get("content-transfer-encoding", "7bit")).strip().lower()
    if cte in ("8bit", "binary"):
        return True
    if cte == "base64":
        return False
    raw = part.get_payload(decode=cte != "quoted-printable")
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    if not isinstance(raw, bytes):
        return False
    if not raw.isascii():
        return True
    return any(line.endswith((b" ", b"\t")) or len(line) > 998 for line in raw.splitlines())


def _reencode(part: Message) -> None:
    """Text as quoted-printable (readable, CRLF lines), everything else as base64."""
    data = part.get_payload(decode=True) or b""
    if part.get_content_maintype() == "text":
        text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        encoded, cte = quopri.encodestring(text).decode("ascii"), "quoted-printable"
    else:
        encoded, cte = base64.encodebytes(data).decode("ascii"), "base64"
    part.set_payload(encoded)
    if "content-transfer-encoding" in part:
        part.replace_header("Content-Transfer-Encoding", cte)
    else:
        part["Content-Transfer-Encoding"] = cte


def _seven_bit(entity: bytes) -> bytes:
    """The entity with every 8bit/binary leaf re-encoded; unchanged bytes if none needed it.

    Signed data must survive any relay byte for byte (RFC 3156 §3, §5), and a relay may
    downgrade 8bit to 7bit, which would break the signature.
    """
    msg = BytesParser(policy=compat32).parsebytes(entity)
    changed = False
    for part in msg.walk():
        if part.is_multipart():
            continue
        if _needs_encoding(part):
            _reencode(part)
            changed = True
    if not changed:
        return entity
    for part in msg.walk():  # a container's own encoding may only be 7bit once its leaves are
        cte = str(part.get("content-transfer-encoding", "")).strip().lower()
        if part.is_multipart() and cte in ("8bit", "binary"):
            part.replace_header("Content-Transfer-Encoding", "7bit")
    out = io.BytesIO()
    policy = compat32.clone(linesep="\r\n", max_line_length=None)
    BytesGenerator(out, mangle_from_=False, policy=policy).flatten(msg)
    return _crlf(out.getvalue())


def _boundary(*contents: bytes) -> bytes:
    while True:
        b = b"=_mailgate_pgp_" + secrets.token_hex(12).encode("ascii")
        if not any(b in c for c in contents):
            return b


def _raw_parts(body: bytes, boundary: bytes) -> list[bytes]:
    """The exact bytes of each body part of a multipart body (RFC 2046 §5.1.1).

    A signature covers the first part's bytes as sent; the email package re-creates parts
    rather than keeping them, so the delimiter lines are found here. The CRLF before a
    delimiter belongs to the delimiter.
    """
    data = b"\r\n" + body
    delim = b"\r\n--" + boundary
    parts: list[bytes] = []
    start: int | None = None
    pos = 0
    while True:
        at = data.find(delim, pos)
        if at < 0:
            return parts if start is None else []  # no close delimiter: malformed
        after = at + len(delim)
        eol = data.find(b"\r\n", after)
        rest = data[after : len(data) if eol < 0 else eol]
        closing = rest.startswith(b"--")
        if not closing and rest.strip(b" \t"):
            pos = after  # a longer boundary that merely starts with ours
            continue
        if start is not None:
            parts.append(data[start:at])
        if closing:
            return parts
        if eol < 0:
            return []
        start = pos = eol + 2


def _head(message: bytes) -> Message:
    """The top-level header fields only: deciding what a message is needs no body."""
    fields, _ = _split(message)
    return BytesParser(policy=compat32).parsebytes(b"".join(fields) + b"\r\n")


def is_signed(message: bytes) -> bool:
    """multipart/signed with protocol application/pgp-signature (RFC 3156 §5)."""
    msg = _head(message)
    protocol = str(msg.get_param("protocol", "") or "").lower()
    return msg.get_content_type() == "multipart/signed" and protocol == "application/pgp-signature"


def is_encrypted(message: bytes) -> bool:
    """multipart/encrypted with protocol application/pgp-encrypted (RFC 3156 §4)."""
    msg = _head(message)
    protocol = str(msg.get_param("protocol", "") or "").lower()
    return (
        msg.get_content_type() == "multipart/encrypted" and protocol == "application/pgp-encrypted"
    )


# --- gpg ---------------------------------------------------------------------------------


class _TimedGPG(gnupg.GPG):
    """python-gnupg with a deadline: a gpg that does not finish in `timeout` s is killed."""

    def __init__(self, timeout: float, **kwargs: object) -> None:
        self.timeout = timeout
        super().__init__(**kwargs)

    def _collect_output(self, process, result, writer=None, stdin=None):  # type: ignore[no-untyped-def]
        timer = threading.Timer(self.timeout, _expire, (process, result))
        timer.daemon = True
        timer.start()
        try:
            return super()._collect_output(process, result, writer, stdin)
        finally:
            timer.cancel()

    def _handle_io(self, args, fileobj_or_path, result, passphrase=None, binary=False):  # type: ignore[no-untyped-def]
        """python-gnupg's, except that a broken input pipe is not raised: gpg stops reading
        when it refuses (a revoked recipient, before reading a large message) or is killed,
        and its status lines, not BrokenPipeError, say which (permanent vs temporary)."""
        fileobj = self._get_fileobj(fileobj_or_path)
        try:
            process = self._open_subprocess(args, passphrase is not None)
            if passphrase:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.write(f"{passphrase}\n".encode(self.encoding))
            writer = gnupg._threaded_copy_data(fileobj, process.stdin, self.buffer_size, Queue())
            self._collect_output(process, result, writer, process.stdin)
            writer.join(self.timeout)
            return result
        finally:
            if fileobj is not fileobj_or_path:
                fileobj.close()

    def _decode_result(self, result):  # type: ignore[no-untyped-def]
        """Key listings: gpg writes UTF-8 UIDs, and a UTF-8 byte such as 0x85 must not end a
        line, which python-gnupg's latin-1 str.splitlines() does ("Nguyễn" has one)."""
        for line in result.data.decode("utf-8", "replace").split("\n"):
            fields = line.strip().split(":")
            if fields[0] in ("pub", "uid", "sec", "fpr", "sub", "ssb", "sig", "grp"):
                getattr(result, fields[0])(fields)
        return result


def _expire(process: subprocess.Popen, result: object) -> None:
    result.timed_out = True  # type: ignore[attr-defined]
    process.kill()


def _epoch(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if value and value.isdigit() else None


def _addresses(uids: Sequence[str]) -> tuple[str, ...]:
    found = [addr.lower() for _, addr in getaddresses(list(uids)) if "@" in addr]
    return tuple(dict.fromkeys(found))


def _latin1(passphrase: str | None) -> str | None:
    """python-gnupg writes the passphrase in its latin-1 encoding: hand it the UTF-8 bytes."""
    return None if passphrase is None else passphrase.encode("utf-8").decode("latin-1")


def _utf8(text: str) -> str:
    """Undo python-gnupg's latin-1 reading of gpg's UTF-8 output (UIDs)."""
    return text.encode("latin-1", "replace").decode("utf-8", "replace")


def _gpg_said(result: object) -> str:
    """gpg's last own message (not a status line): a reason, never key material."""
    lines = [
        line.strip()
        for line in str(getattr(result, "stderr", "") or "").splitlines()
        if line.startswith("gpg:")
    ]
    return _utf8(lines[-1])[:200] if lines else ""


class Keyring:
    """The gateway's OpenPGP keys in its own GNUPGHOME (0700, files 0600), thread-safe.

    Create once per process; `close()` stops its gpg-agent. Key listings are cached and
    re-read when the keyring files change, so a key imported by another process (`mailgate
    keys import` while `serve` runs) counts for the next message.
    """

    def __init__(
        self, home: str | os.PathLike[str], *, timeout: float = 10.0, gpgbinary: str = "gpg"
    ) -> None:
        self.home = Path(home)
        self.timeout = timeout
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._tmp = self.home / "tmp"
        self._tmp.mkdir(mode=0o700, exist_ok=True)
        self._env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GNUPGHOME": str(self.home),
            "LC_ALL": "C",
            "HOME": str(self.home),
        }
        self._tighten()
        try:
            self._gpg = _TimedGPG(
                timeout,
                gpgbinary=gpgbinary,
                gnupghome=str(self.home),
                options=_GPG_OPTIONS,
                env=self._env,
                encoding="latin-1",  # gpg's stderr may hold any bytes; latin-1 never fails
            )
        except (OSError, ValueError) as exc:
            raise PgpTemporaryError(f"gpg cannot start: {type(exc).__name__}") from None
        self._write = threading.Lock()  # imports and removals, one at a time
        self._cache_lock = threading.Lock()
        self._cache: tuple[tuple[object, ...], float, tuple[KeyInfo, ...]] | None = None
        self._gpgconf("--launch")

    # lifecycle

    def close(self) -> None:
        """Stop this home's gpg-agent (tests, shutdown); a later call would start it again."""
        self._gpgconf("--kill")

    def __enter__(self) -> Keyring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _gpgconf(self, action: str) -> None:
        try:
            subprocess.run(
                ["gpgconf", "--homedir", str(self.home), action, "gpg-agent"],
                env=self._env,
                capture_output=True,
                timeout=self.timeout,
                check=True,
            )
        except subprocess.TimeoutExpired:
            raise PgpTemporaryError(f"gpg-agent did not {action[2:]} in {self.timeout}s") from None
        except (OSError, subprocess.CalledProcessError) as exc:
            raise PgpTemporaryError(
                f"gpg-agent {action[2:]} failed: {type(exc).__name__}"
            ) from None

    def _tighten(self) -> None:
        """Directories 0700, files 0600: key material is readable by the gateway user only."""
        for root, dirs, files in os.walk(self.home):
            for name in dirs + files:
                path = os.path.join(root, name)
                try:  # another gpg may create and remove its lock and temp files meanwhile
                    mode = os.lstat(path).st_mode
                    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
                        os.chmod(path, 0o700 if stat.S_ISDIR(mode) else 0o600)
                except FileNotFoundError:
                    continue

    def _run(self, what: str, call, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Run one python-gnupg call; a timeout, a missing gpg or agent is temporary."""
        try:
            result = call(*args, **kwargs)
        except (OSError, ValueError) as exc:  # gpg missing or not executable
            raise PgpTemporaryError(f"{what}: gpg failed to run ({type(exc).__name__})") from None
        if getattr(result, "timed_out", False):
            raise PgpTemporaryError(f"{what}: gpg did not answer within {self.timeout}s")
        failed = getattr(result, "returncode", 0) != 0
        stderr = str(getattr(result, "stderr", "")).lower()
        if failed and any(marker in stderr for marker in _TEMPORARY):
            raise PgpTemporaryError(f"{what}: {_gpg_said(result) or 'gpg unavailable'}")
        return result

    # keys

    def import_key(self, armored: bytes, passphrase: str | None = None) -> list[KeyInfo]:
        """Import ASCII-armoured public or secret keys; returns the keys the data held."""
        if b"-----BEGIN PGP " not in armored:
            raise PgpError("not an ASCII-armoured OpenPGP key")
        with self._write:
            result = self._run(
                "import", self._gpg.import_keys, armored, passphrase=_latin1(passphrase)
            )
            self._tighten()
            self._cache = None
        fingerprints = [fp for fp in dict.fromkeys(result.fingerprints) if fp]
        if not fingerprints:
            raise PgpError(f"import: no key imported ({_gpg_said(result) or 'no key found'})")
        by_fp = {k.fingerprint: k for k in self.keys()}
        return [by_fp[fp] for fp in fingerprints if fp in by_fp]

    def remove(self, fingerprint: str) -> None:
        """Delete a key (its secret part first, if held) by primary fingerprint."""
        fingerprint = fingerprint.upper().replace(" ", "")
        key = next((k for k in self.keys() if k.fingerprint == fingerprint), None)
        if key is None:
            raise PgpError(f"no key with fingerprint {fingerprint}")
        with self._write:
            if key.secret:
                self._run(
                    "remove",
                    self._gpg.delete_keys,
                    fingerprint,
                    secret=True,
                    expect_passphrase=False,
                )
            result = self._run("remove", self._gpg.delete_keys, fingerprint)
            self._cache = None
        if str(result) != "ok":
            raise PgpError(f"remove {fingerprint}: {result}")

    def keys(self, address: str | None = None) -> list[KeyInfo]:
        """Every key (or those with a UID for `address`), secret ones marked `secret`."""
        all_keys = self._listing()
        if address is None:
            return list(all_keys)
        address = address.strip().lower()
        return [k for k in all_keys if address in k.addresses]

    def signing_key(self, address: str) -> KeyInfo | None:
        """A usable secret key that can sign, with a UID for `address`; the newest wins."""
        found = [k for k in self.keys(address) if k.secret and k.can_sign and k.usable()]
        return max(found, key=_newest, default=None)

    def encryption_key(self, address: str) -> KeyInfo | None:
        """A usable public key that can encrypt, with a UID for `address`; the newest wins."""
        found = [k for k in self.keys(address) if k.can_encrypt and k.usable()]
        return max(found, key=_newest, default=None)

    def _stamp(self) -> tuple[object, ...]:
        stamp: list[object] = []
        for name in ("pubring.kbx", "pubring.gpg", "private-keys-v1.d", "trustdb.gpg"):
            try:
                st = os.stat(self.home / name)
            except FileNotFoundError:
                stamp.append(None)
            except OSError as exc:
                raise PgpTemporaryError(f"keyring unreadable: {exc.strerror}") from None
            else:
                stamp.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamp)

    def _listing(self) -> tuple[KeyInfo, ...]:
        stamp = self._stamp()
        with self._cache_lock:
            cached = self._cache
            if cached and cached[0] == stamp and time.monotonic() - cached[1] < _LIST_TTL:
                return cached[2]
        public = self._run("list keys", self._gpg.list_keys)
        secret = self._run("list keys", self._gpg.list_keys, True)
        for result in (public, secret):  # an empty listing must never stand in for "no key"
            if result.returncode != 0:
                reason = _gpg_said(result) or f"gpg exit {result.returncode}"
                raise PgpTemporaryError(f"keyring unreadable: {reason}")
        held = {k["fingerprint"] for k in secret}
        listing = tuple(_key_info(k, k["fingerprint"] in held) for k in public)
        with self._cache_lock:
            self._cache = (stamp, time.monotonic(), listing)
        return listing

    # messages

    def sign(self, message: bytes, key: KeyInfo, passphrase: str | None = None) -> bytes:
        """multipart/signed (RFC 3156 §5): a detached signature over the canonical content.

        Outer header fields stay outside; Content-* and MIME-Version move into the signed
        part, whose 8bit/binary leaves are re-encoded first.
        """
        fields, body = _split(message)
        entity = _seven_bit(_entity(fields, body))
        result = self._run(
            "sign",
            self._gpg.sign,
            entity,
            detach=True,
            passphrase=_latin1(passphrase),
            extra_args=_signer(key),
        )
        if not result.fingerprint:
            raise PgpError(f"sign with {key.fingerprint}: {_sign_failure(result)}")
        if result.fingerprint not in (key.fingerprint, *key.subkeys):
            raise PgpError(f"sign with {key.fingerprint}: gpg used another key")
        micalg = _HASH_NAMES.get(str(result.hash_algo), "sha256")
        boundary = _boundary(entity)
        signature = _crlf(result.data)
        return b"".join(
            [
                _outer(fields),
                b"Content-Type: multipart/signed; micalg=pgp-",
                micalg.encode("ascii"),
                b';\r\n protocol="application/pgp-signature";\r\n boundary="',
                boundary,
                b'"\r\n\r\n',
                b"This is an OpenPGP/MIME signed message (RFC 4880 and 3156)\r\n",
                b"--" + boundary + b"\r\n",
                entity,
                b"\r\n--" + boundary + b"\r\n",
                _SIG_PART_HEADERS,
                signature,
                b"\r\n--" + boundary + b"--\r\n",
            ]
        )

    def encrypt(
        self,
        message: bytes,
        recipients: Sequence[KeyInfo],
        sign_with: KeyInfo | None = None,
        passphrase: str | None = None,
    ) -> bytes:
        """multipart/encrypted (RFC 3156 §4); with `sign_with`, signed in the same pass (§6.2)."""
        if not recipients:
            raise PgpError("encrypt: no recipients")
        fields, body = _split(message)
        entity = _entity(fields, body)
        if sign_with is not None:
            entity = _seven_bit(entity)
        result = self._run(
            "encrypt",
            self._gpg.encrypt,
            entity,
            [r.fingerprint for r in recipients],
            sign=sign_with is not None,
            always_trust=True,
            armor=True,
            passphrase=_latin1(passphrase),
            extra_args=_signer(sign_with) if sign_with else None,
        )
        if not result.ok:
            who = ", ".join(r.fingerprint for r in recipients)
            raise PgpError(f"encrypt to {who}: {result.status or _gpg_said(result)}")
        boundary = _boundary()
        return b"".join(
            [
                _outer(fields),
                b'Content-Type: multipart/encrypted;\r\n protocol="application/pgp-encrypted";',
                b'\r\n boundary="' + boundary + b'"\r\n\r\n',
                b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n",
                b"--" + boundary + b"\r\n",
                _ENC_VERSION_PART,
                b"\r\n--" + boundary + b"\r\n",
                _ENC_DATA_HEADERS,
                _crlf(result.data),
                b"\r\n--" + boundary + b"--\r\n",
            ]
        )

    def verify(self, message: bytes) -> Verification:
        """Check a PGP/MIME signature over the first part's exact bytes (RFC 3156 §5)."""
        if not is_signed(message):
            reason = "encrypted (decrypt to verify)" if is_encrypted(message) else "not signed"
            return Verification("none", reason)
        _, body = _split(message)
        boundary = _head(message).get_boundary()
        if not boundary:
            return Verification("fail", "multipart/signed without a boundary")
        parts = _raw_parts(body, boundary.encode("ascii", "surrogateescape"))
        if len(parts) != 2:
            return Verification("fail", f"multipart/signed with {len(parts)} parts, not 2")
        sig_part = BytesParser(policy=compat32).parsebytes(parts[1])
        if sig_part.get_content_type() != "application/pgp-signature":
            return Verification("fail", "second part is not application/pgp-signature")
        signature = sig_part.get_payload(decode=True) or b""
        return self._verify_detached(parts[0], signature)

    def _verify_detached(self, data: bytes, signature: bytes) -> Verification:
        with tempfile.NamedTemporaryFile(dir=self._tmp, suffix=".sig") as sig:
            sig.write(signature)
            sig.flush()
            result = self._run("verify", self._gpg.verify_data, sig.name, data)
        return self._verdict(result)

    def _verdict(self, result: gnupg.Verify) -> Verification:
        """Map gpg's status lines to pass/fail/neutral (see `Verification`)."""
        fingerprint = result.pubkey_fingerprint or result.fingerprint
        problems = _signature_problems(result)
        if result.valid and fingerprint and not problems:
            verdict, status = "pass", "good signature"
        else:
            statuses = [p["status"] for p in problems] or ["no signature found"]
            status = next((st for st in statuses if st not in _NEUTRAL), statuses[-1])
            verdict = "neutral" if status in _NEUTRAL else "fail"
        key = next(
            (k for k in self._listing() if fingerprint and k.fingerprint == fingerprint), None
        )
        addresses = key.addresses if key else ()
        return Verification(verdict, status, fingerprint, result.key_id, addresses)

    def decrypt(self, message: bytes, passphrase: str | None = None) -> Decrypted:
        """The inner message with the outer header fields kept, and any signature's result.

        A signature made in the same pass (§6.2) is checked by gpg as it decrypts; a
        multipart/signed inside (§6.1) is verified separately.
        """
        if not is_encrypted(message):
            raise PgpError("not a PGP/MIME encrypted message")
        fields, body = _split(message)
        boundary = _head(message).get_boundary()
        parts = _raw_parts(body, (boundary or "").encode("ascii", "surrogateescape"))
        if len(parts) != 2:
            raise PgpError(f"multipart/encrypted with {len(parts)} parts, not 2")
        data_part = BytesParser(policy=compat32).parsebytes(parts[1])
        ciphertext = data_part.get_payload(decode=True) or b""
        result = self._run("decrypt", self._gpg.decrypt, ciphertext, passphrase=_latin1(passphrase))
        if not result.ok:
            raise PgpError(f"decrypt: {result.status or _gpg_said(result)}")
        inner = _crlf(result.data)
        plain = b"".join(f for f in fields if not _is_inner(f)) + inner
        if result.valid or _signature_problems(result):
            return Decrypted(plain, True, self._verdict(result))
        if is_signed(inner):
            return Decrypted(plain, True, self.verify(plain))
        return Decrypted(plain, False, Verification("none", "not signed"))


# Statuses (python-gnupg's words for gpg's) that mean "cannot be checked here", not "forged".
_NEUTRAL = frozenset(
    {"no public key", "signing key has expired", "signature expired", "signature error"}
)


def _signature_problems(result: gnupg.Verify) -> list[dict]:
    """Problems with a signature; NO_SECKEY is about decryption (other recipients' keys)."""
    return [p for p in result.problems if p.get("status") != "no secret key"]


def _signer(key: KeyInfo) -> list[str]:
    """`--local-user`, not python-gnupg's `--default-key`: given an expired or revoked key,
    `--default-key` silently signs with another secret key; `--local-user` fails."""
    return ["--local-user", key.fingerprint, *_DIGEST]


def _newest(key: KeyInfo) -> datetime:
    return key.created or datetime.min.replace(tzinfo=UTC)


def _sign_failure(result: gnupg.Sign) -> str:
    return result.status or _gpg_said(result) or "no signature created"


def _key_info(key: dict, secret: bool) -> KeyInfo:
    """One python-gnupg listing entry: the primary `fingerprint`, upper-case usable caps."""
    validity = key.get("trust", "")
    cap = key.get("cap", "")
    uids = tuple(key.get("uids", ()))
    expires = _epoch(key.get("expires"))
    return KeyInfo(
        fingerprint=key["fingerprint"],
        keyid=key.get("keyid", ""),
        addresses=_addresses(uids),
        uids=uids,
        subkeys=tuple(sub[2] for sub in key.get("subkeys", ()) if sub[2]),
        secret=secret,
        created=_epoch(key.get("date")),
        expires=expires,
        can_sign="S" in cap,
        can_encrypt="E" in cap,
        revoked=validity == "r",
        expired=validity == "e",
    )
