"""The key store under ``data_dir/keys`` (MOST 16.2): DKIM keys per domain and selector;
S/MIME certificates and keys per address; the gateway's own GNUPGHOME for OpenPGP.

Folders are 0700 and files 0600, created so (never chmod-ed after the fact). ``serve``
reads the store at each message, through a cache keyed by each file's size and mtime, so
a key imported or generated with ``mailgate keys`` while it runs counts for the next
message, without a restart.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.signing import certs
from gateway.signing.certs import Bundle
from gateway.signing.dkim import SigningKey

if TYPE_CHECKING:
    from gateway.signing.pgp import Keyring

ALGORITHMS = ("rsa", "ed25519")
RSA_BITS = 2048


class KeyStoreError(Exception):
    """A key that cannot be made, read or used; the message says why (never the key)."""


@dataclass(frozen=True, slots=True)
class DkimKey:
    domain: str
    selector: str
    key: SigningKey

    @property
    def algorithm(self) -> str:
        return "rsa-sha256" if isinstance(self.key, rsa.RSAPrivateKey) else "ed25519-sha256"


def _label(text: str, what: str) -> str:
    value = text.strip().lower().rstrip(".")
    labels = value.split(".")
    if not value or not all(
        label and len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label)
        for label in labels
    ):
        raise KeyStoreError(f"{text!r} is not a valid {what}")
    return value


def _smime_name(address: str) -> str:
    """The folder name of ``address``'s S/MIME material: ``local@domain``, lower case."""
    local, _, domain = address.strip().lower().rpartition("@")
    if not local or "/" in local or local.startswith("."):
        raise KeyStoreError(f"{address!r} is not an address")
    return f"{local}@{_label(domain, 'domain')}"


def private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file of mode 0600 (made so, never loosened)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class KeyStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "keys"
        self._smime_text = str(self.root / "smime")
        self._keyring_text = str(self.keyring_home)
        self._lock = threading.Lock()
        self._dkim_cache: dict[Path, tuple[tuple[int, int], DkimKey]] = {}
        self._dkim_paths: dict[tuple[str, str], Path] = {}  # (domain, selector) as given
        self._smime_cache: dict[str, tuple[tuple[int, int], Bundle]] = {}
        self._keyring: Keyring | None = None
        self.gpg_timeout = 10.0

    # -- DKIM ------------------------------------------------------------------------

    def dkim_path(self, domain: str, selector: str) -> Path:
        return self.root / "dkim" / _label(domain, "domain") / f"{_label(selector, 'selector')}.pem"

    def generate_dkim(self, domain: str, selector: str, algorithm: str = "rsa") -> DkimKey:
        """A new key (RSA 2048 or Ed25519), stored 0600; an existing one is never replaced."""
        if algorithm not in ALGORITHMS:
            raise KeyStoreError(f"unknown algorithm {algorithm!r}; use rsa or ed25519")
        path = self.dkim_path(domain, selector)
        if path.exists():
            raise KeyStoreError(
                f"a DKIM key for {domain} selector {selector} exists already ({path});"
                " choose another selector, or remove it first"
            )
        key: SigningKey = (
            rsa.generate_private_key(65537, RSA_BITS)
            if algorithm == "rsa"
            else ed25519.Ed25519PrivateKey.generate()
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            private_file(path, pem)
        except FileExistsError:
            raise KeyStoreError(f"a DKIM key for {domain} selector {selector} exists") from None
        return DkimKey(path.parent.name, path.stem, key)

    def dkim_key(self, domain: str, selector: str) -> DkimKey | None:
        """The stored key, or None; KeyStoreError when it exists but cannot be used.
        Asked once per signed message: the path is remembered, the file's stat decides
        whether the key read before still stands."""
        path = self._dkim_paths.get((domain, selector))
        if path is None:
            try:
                path = self.dkim_path(domain, selector)
            except KeyStoreError:
                return None
            if len(self._dkim_paths) < 1024:  # domains and selectors come from the config
                self._dkim_paths[(domain, selector)] = path
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyStoreError(f"cannot read the DKIM key {path}: {exc.strerror}") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._dkim_cache.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise KeyStoreError(f"cannot read the DKIM key {path}: {exc.strerror}") from None
        except ValueError:
            raise KeyStoreError(f"{path} is not a PEM private key") from None
        if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise KeyStoreError(f"{path}: DKIM keys are RSA or Ed25519")
        found = DkimKey(path.parent.name, path.stem, key)
        with self._lock:
            self._dkim_cache[path] = (stamp, found)
        return found

    def dkim_keys(self) -> list[DkimKey]:
        """Every stored DKIM key (for ``keys list``); unreadable ones are skipped."""
        found = []
        for path in sorted((self.root / "dkim").glob("*/*.pem")):
            try:
                key = self.dkim_key(path.parent.name, path.stem)
            except KeyStoreError:
                continue
            if key is not None:
                found.append(key)
        return found

    # -- S/MIME ----------------------------------------------------------------------
    # One PEM file per certificate, named by its SHA-256: the certificate, its chain and,
    # for a local mailbox's own identity, its private key (PKCS#8, unencrypted: the gateway
    # signs unattended; the file is 0600 under a 0700 folder).

    def smime_folder(self, address: str) -> Path:
        return self.root / "smime" / _smime_name(address)

    def import_smime(self, address: str, bundle: Bundle) -> Path:
        """Store ``bundle`` for ``address``; the same certificate again is refused."""
        path = self.smime_folder(address) / f"{certs.fingerprint(bundle.certificate)}.pem"
        blocks = []
        if bundle.key is not None:
            blocks.append(
                bundle.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        for cert in (bundle.certificate, *bundle.chain):
            blocks.append(cert.public_bytes(serialization.Encoding.PEM))
        try:
            private_file(path, b"".join(blocks))
        except FileExistsError:
            raise KeyStoreError(f"{address} holds this certificate already") from None
        return path

    def smime_bundles(self, address: str) -> list[Bundle]:
        """Every certificate stored for ``address`` (read afresh when a file changed)."""
        try:
            folder = f"{self._smime_text}/{_smime_name(address)}"
            with os.scandir(folder) as listing:  # os, not pathlib: this runs per message
                paths = sorted(entry.path for entry in listing if entry.name.endswith(".pem"))
        except (KeyStoreError, FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise KeyStoreError(f"cannot read {folder}: {exc.strerror}") from None
        found = []
        for path in paths:
            try:
                stat = os.stat(path)
                stamp = (stat.st_mtime_ns, stat.st_size)
                with self._lock:
                    cached = self._smime_cache.get(path)
                if cached is not None and cached[0] == stamp:
                    found.append(cached[1])
                    continue
                bundle = certs.load_bundle(Path(path).read_bytes())
            except FileNotFoundError:  # removed meanwhile
                continue
            except OSError as exc:
                raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from None
            except certs.CertificateError as exc:
                raise KeyStoreError(f"{path}: {exc}") from None
            with self._lock:
                self._smime_cache[path] = (stamp, bundle)
            found.append(bundle)
        return found

    def smime_addresses(self) -> list[str]:
        folder = self.root / "smime"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def remove_smime(self, address: str, fingerprint: str) -> bool:
        path = self.smime_folder(address) / f"{fingerprint.lower().replace(':', '')}.pem"
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def may_hold(self, address: str) -> bool:
        """Cheap (two stats): whether ``address`` might hold a signing key, S/MIME or
        OpenPGP. False means surely not, so the stage skips its lookups."""
        try:
            name = _smime_name(address)
        except KeyStoreError:
            return False
        # os.path on strings: pathlib's objects cost a tenth of this check at 1,000 msgs/s
        return os.path.isdir(f"{self._smime_text}/{name}") or os.path.isdir(self._keyring_text)

    def signing_bundle(self, address: str, now: datetime) -> tuple[Bundle | None, str | None]:
        """The identity ``address`` signs with (its own key and certificate), or why the
        one it holds cannot sign now; (None, None) when it holds none."""
        own = [b for b in self.smime_bundles(address) if b.key is not None]
        if not own:
            return None, None
        why = None
        for bundle in sorted(own, key=lambda b: b.certificate.not_valid_after_utc, reverse=True):
            why = certs.problem(bundle.certificate, address, "sign", now)
            if why is None:
                return bundle, None
        return None, why

    def encryption_certificate(self, address: str, now: datetime) -> tuple[Bundle | None, str]:
        """A certificate ``address`` may be encrypted to, or why none is usable."""
        why = "no S/MIME certificate"
        held = self.smime_bundles(address)
        for bundle in sorted(held, key=lambda b: b.certificate.not_valid_after_utc, reverse=True):
            problem = certs.problem(bundle.certificate, address, "encrypt", now)
            if problem is None:
                return bundle, ""
            why = problem
        return None, why

    # -- OpenPGP ---------------------------------------------------------------------

    @property
    def keyring_home(self) -> Path:
        return self.root / "gnupg"

    def has_keyring(self) -> bool:
        """Whether any OpenPGP key was ever imported (a stat): no keyring, no gpg call."""
        return self.keyring_home.is_dir()

    def keyring(self) -> Keyring:
        """The gateway's own GNUPGHOME (``keys/gnupg``), opened once, its agent kept warm."""
        from gateway.signing.pgp import Keyring

        with self._lock:
            if self._keyring is None:
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._keyring = Keyring(self.keyring_home, timeout=self.gpg_timeout)
            return self._keyring

    def close(self, stop_agent: bool = True) -> None:
        """Forget the keyring; ``stop_agent`` also stops the gpg-agent of its home, which
        every process of one gateway shares (an SMTP helper leaves it to the primary)."""
        with self._lock:
            if self._keyring is not None:
                if stop_agent:
                    self._keyring.close()
                self._keyring = None
