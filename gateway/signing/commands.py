"""``mailgate keys ...`` (CONTRACT.md): thin calls into the key store, each change an
event (``actor`` = "cli"), never with key material in it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization

from gateway.config import Config
from gateway.events.writer import EventLog
from gateway.signing import dkim
from gateway.signing.keys import ALGORITHMS, DkimKey, KeyStore, KeyStoreError

DEFAULT_SELECTOR = "mail"
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
    events = EventLog(config.log.dir)
    try:
        events.emit("key_generated", actor="cli", kind="dkim", domain=key.domain,
                    selector=key.selector, algorithm=key.algorithm,
                    fingerprint=public_fingerprint(key))  # fmt: skip
    finally:
        events.close()
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


def key_list(config: Config, args: argparse.Namespace) -> int:
    store = KeyStore(config.gateway.data_dir)
    rows: list[dict[str, Any]] = []
    for key in store.dkim_keys():
        if args.address and args.address.lower().rpartition("@")[2] != key.domain:
            continue
        rows.append({
            "kind": "dkim", "owner": key.domain, "selector": key.selector,
            "algorithm": key.algorithm, "fingerprint": public_fingerprint(key),
            "usage": "dkim signing", "expires": None,
        })  # fmt: skip
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    for row in rows:
        extra = f" selector={row['selector']}" if row.get("selector") else ""
        print(f"{row['kind']:6} {row['owner']:32} {row['algorithm']:16} {row['usage']:24}"
              f" {row['expires'] or 'no expiry':12} {row['fingerprint'][:32]}{extra}")  # fmt: skip
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
