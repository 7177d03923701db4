"""``mailgate keys ...`` (CONTRACT.md): thin calls into the key store, each change an
event (``actor`` = "cli"), never with key material in it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization

from gateway.config import Config
from gateway.events.writer import record_cli_event
from gateway.signing import certs, dkim
from gateway.signing.keys import ALGORITHMS, DkimKey, KeyStore, KeyStoreError

DEFAULT_SELECTOR = "mail"
WARN_DAYS = 30  # keys list marks what expires within this many days
LoadConfig = Callable[[argparse.Namespace], Config]


class KeyCommandError(Exception):
    """One line for stderr, exit status 1."""


def _selector(args: argparse.Namespace, config: Config) -> str:
    if args.selector:
        return str(args.selector)
    return config.signing.dkim.selector if config.signing.dkim else DEFAULT_SELECTOR


def public_fingerprint(key: DkimKey) -> str:
    """SHA-256 of the public key (SubjectPublicKeyInfo DER), for lists and events."""
    der = key.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()


def dkim_generate(config: Config, args: argparse.Namespace) -> int:
    store = KeyStore(config.gateway.data_dir)
    selector = _selector(args, config)
    domain = args.domain.strip().lower()
    if domain not in config.gateway.domains:
        raise KeyCommandError(
            f"{domain} is not a local domain (gateway.domains: {', '.join(config.gateway.domains)})"
        )
    try:
        key = store.generate_dkim(domain, selector, args.algorithm)
    except KeyStoreError as exc:
        raise KeyCommandError(str(exc)) from None
    record_cli_event(config.log.dir, "key_generated", kind="dkim", domain=key.domain,
                     selector=key.selector, algorithm=key.algorithm,
                     fingerprint=public_fingerprint(key))  # fmt: skip
    print(dkim.dns_record(key.selector, key.domain, key.key))
    return 0


def dkim_record(config: Config, args: argparse.Namespace) -> int:
    store = KeyStore(config.gateway.data_dir)
    selector = _selector(args, config)
    try:
        key = store.dkim_key(args.domain, selector)
    except KeyStoreError as exc:
        raise KeyCommandError(str(exc)) from None
    if key is None:
        raise KeyCommandError(
            f"no DKIM key for {args.domain} selector {selector};"
            f" make one with: mailgate keys dkim-generate {args.domain} --selector {selector}"
        )
    print(dkim.dns_record(key.selector, key.domain, key.key))
    return 0


def _address(text: str) -> str:
    address = text.strip().lower()
    local, _, domain = address.rpartition("@")
    if not local or "." not in domain:
        raise KeyCommandError(f"{text!r} is not an address")
    return address


def key_import(config: Config, args: argparse.Namespace) -> int:
    """A PEM or PKCS#12 (S/MIME) or an armoured OpenPGP key for ``address``: a local
    mailbox's own key (it signs, and decrypts what is sent to it), or another address's
    certificate or public key (mail to it can be encrypted)."""
    address = _address(args.address)
    try:
        data = Path(args.file).read_bytes()
        password = (
            Path(args.password_file).read_bytes().strip(b"\r\n") if args.password_file else None
        )
    except OSError as exc:
        raise KeyCommandError(f"cannot read {exc.filename}: {exc.strerror}") from None
    local = config.is_local(address)
    store = KeyStore(config.gateway.data_dir)
    try:
        if b"-----BEGIN PGP " in data:
            return _import_pgp(config, store, address, data, password, local)
        return _import_smime(config, store, address, data, password, local)
    finally:
        store.close()


def _import_smime(config: Config, store: KeyStore, address: str, data: bytes,
                  password: bytes | None, local: bool) -> int:  # fmt: skip
    try:
        bundle = certs.load_bundle(data, password)
    except certs.CertificateError as exc:
        raise KeyCommandError(f"not imported: {exc}") from None
    cert = bundle.certificate
    named = certs.addresses_of(cert)
    if address not in named:
        shown = ", ".join(sorted(named)) or "no address"
        raise KeyCommandError(f"not imported: the certificate is for {shown}, not {address}")
    if bundle.key is not None and not local:
        raise KeyCommandError(
            f"not imported: {address} is not a local mailbox, so the gateway must not hold its"
            " private key; import the certificate alone"
        )
    purpose = "sign" if bundle.key is not None else "encrypt"
    problem = certs.problem(cert, address, purpose, datetime.now(UTC), _crl(config))
    if problem is not None:
        raise KeyCommandError(f"not imported: {problem}")
    try:
        store.import_smime(address, bundle)
    except KeyStoreError as exc:
        raise KeyCommandError(str(exc)) from None
    fingerprint = certs.fingerprint(cert)
    usage = "sign, decrypt" if bundle.key is not None else "encrypt to"
    expires = cert.not_valid_after_utc.date()
    record_cli_event(config.log.dir, "key_imported", kind="smime", user=address,
                     fingerprint=fingerprint, reason=f"{usage}; expires {expires}")  # fmt: skip
    print(f"imported S/MIME {usage} {address} {fingerprint}")
    return 0


def _import_pgp(config: Config, store: KeyStore, address: str, data: bytes,
                password: bytes | None, local: bool) -> int:  # fmt: skip
    from gateway.signing.pgp import PgpFailure

    if b"-----BEGIN PGP PRIVATE KEY BLOCK-----" in data and not local:
        raise KeyCommandError(
            f"not imported: {address} is not a local mailbox, so the gateway must not hold its"
            " secret key; import its public key"
        )
    keyring = store.keyring()
    try:
        held = {k.fingerprint for k in keyring.keys(None)}
        imported = keyring.import_key(data, passphrase=password.decode() if password else None)
    except PgpFailure as exc:
        raise KeyCommandError(f"not imported: {exc}") from None
    strangers = [k for k in imported if address not in k.addresses]
    if strangers:
        for key in strangers:  # taken back (a key must name the address it is filed
            if key.fingerprint not in held:  # under), unless it was held before
                keyring.remove(key.fingerprint)
        shown = ", ".join(sorted({a for k in strangers for a in k.addresses})) or "no address"
        raise KeyCommandError(f"not imported: the key is for {shown}, not {address}")
    for key in imported:
        usage = "sign, decrypt" if key.secret else "encrypt to"
        expires = key.expires.date() if key.expires else "never"
        reason = f"{usage}; expires {expires}"
        record_cli_event(config.log.dir, "key_imported", kind="pgp", user=address,
                         fingerprint=key.fingerprint, reason=reason)  # fmt: skip
        print(f"imported OpenPGP {usage} {address} {key.fingerprint}")
    return 0


def _crl(config: Config) -> Any:
    path = config.signing.crl_file
    if path is None:
        return None
    from cryptography import x509

    data = path.read_bytes()
    try:
        return (
            x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
        )
    except ValueError:
        raise KeyCommandError(f"signing.crl_file {path} is not a CRL") from None


def key_remove(config: Config, args: argparse.Namespace) -> int:
    address = _address(args.address)
    fingerprint = args.fingerprint.strip().replace(":", "")
    store = KeyStore(config.gateway.data_dir)
    try:
        if store.remove_smime(address, fingerprint):
            kind = "smime"
        else:
            from gateway.signing.pgp import PgpFailure

            keyring = store.keyring()
            match = [k for k in keyring.keys(address) if k.fingerprint == fingerprint.upper()]
            if not match:
                raise KeyCommandError(f"{address} holds no key {fingerprint}")
            try:
                keyring.remove(match[0].fingerprint)
            except PgpFailure as exc:
                raise KeyCommandError(str(exc)) from None
            kind = "pgp"
    finally:
        store.close()
    record_cli_event(
        config.log.dir, "key_removed", kind=kind, user=address, fingerprint=fingerprint
    )
    print(f"removed {kind} {address} {fingerprint}")
    return 0


def _expiry(moment: datetime | None, now: datetime) -> tuple[str | None, str | None]:
    if moment is None:
        return None, None
    if moment <= now:
        return moment.date().isoformat(), "EXPIRED"
    if moment - now <= timedelta(days=WARN_DAYS):
        return moment.date().isoformat(), f"expires in {(moment - now).days} days"
    return moment.date().isoformat(), None


def _key_kind(cert: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    public = cert.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        return f"rsa-{public.key_size}"
    if isinstance(public, ec.EllipticCurvePublicKey):
        return f"ec-{public.curve.name}"
    return type(public).__name__


def key_list(config: Config, args: argparse.Namespace) -> int:
    store = KeyStore(config.gateway.data_dir)
    wanted = args.address.strip().lower() if args.address else None
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    try:
        for key in store.dkim_keys():
            if wanted and wanted.rpartition("@")[2] != key.domain:
                continue
            rows.append({
                "kind": "dkim", "owner": key.domain, "selector": key.selector,
                "algorithm": key.algorithm, "fingerprint": public_fingerprint(key),
                "usage": "dkim signing", "expires": None, "warning": None,
            })  # fmt: skip
        for address in store.smime_addresses():
            if wanted and wanted != address:
                continue
            for bundle in store.smime_bundles(address):
                cert = bundle.certificate
                expires, warning = _expiry(cert.not_valid_after_utc, now)
                rows.append({
                    "kind": "smime", "owner": address,
                    "algorithm": _key_kind(cert),
                    "fingerprint": certs.fingerprint(cert),
                    "usage": "sign, decrypt" if bundle.key is not None else "encrypt to",
                    "expires": expires, "warning": warning,
                    "key_usage": certs.usages(cert),
                })  # fmt: skip
        if store.has_keyring():
            for key in store.keyring().keys(wanted):
                expires, warning = _expiry(key.expires, now)
                if key.revoked:
                    warning = "REVOKED"
                rows.append({
                    "kind": "pgp", "owner": ", ".join(key.addresses),
                    "algorithm": "openpgp", "fingerprint": key.fingerprint,
                    "usage": "sign, decrypt" if key.secret else "encrypt to",
                    "expires": expires, "warning": warning,
                })  # fmt: skip
    except KeyStoreError as exc:
        raise KeyCommandError(str(exc)) from None
    finally:
        store.close()
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    for row in rows:
        extra = f" selector={row['selector']}" if row.get("selector") else ""
        warning = f"  ** {row['warning']}" if row.get("warning") else ""
        expires = row["expires"] or "no expiry"
        print(f"{row['kind']:6} {row['owner']:32} {row['algorithm']:16} {row['usage']:14}"
              f" {expires:10} {row['fingerprint']}{extra}{warning}")  # fmt: skip
    return 0


def add_key_commands(
    commands: argparse._SubParsersAction,
    add: Callable[..., argparse.ArgumentParser],
    load: LoadConfig,
) -> None:
    """Register ``keys ...`` on the main parser; ``add`` makes a subcommand whose
    handler takes the parsed arguments."""
    keys = commands.add_parser("keys", help="signing and encryption keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )

    def handler(action: Callable[[Config, argparse.Namespace], int]) -> Callable[..., int]:
        def run(args: argparse.Namespace) -> int:
            return action(load(args), args)

        return run

    p = add(keys, "dkim-generate", handler(dkim_generate), "make a DKIM key, print its record")
    p.add_argument("domain")
    p.add_argument("--selector", help="default: signing.dkim.selector, else mail")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="rsa")
    p = add(keys, "dkim-record", handler(dkim_record), "print a DKIM key's DNS record again")
    p.add_argument("domain")
    p.add_argument("--selector")
    p = add(keys, "list", handler(key_list), "kind, fingerprint, usage, expiry")
    p.add_argument("address", nargs="?")
    p.add_argument("--json", action="store_true")
    p = add(keys, "import", handler(key_import), "import an S/MIME or OpenPGP key or certificate")
    p.add_argument("address")
    p.add_argument("file", help="PEM, PKCS#12, or an ASCII-armoured OpenPGP key")
    p.add_argument("--password-file", help="the PKCS#12 or key passphrase, in a file")
    p = add(keys, "remove", handler(key_remove), "remove a certificate or OpenPGP key")
    p.add_argument("address")
    p.add_argument("fingerprint")
