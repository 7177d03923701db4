"""Outbound signatures and encryption (MOST 16.2; CONTRACT "Signing and encryption, by
default"), planned per message and per recipient, then applied.

- A local sender holding its own S/MIME key signs with it (detached, SHA-256); holding only
  an OpenPGP secret key, it signs PGP/MIME. A key it holds that cannot sign now (expired,
  wrong usage) refuses the message (5xx naming ``[smime]``): never unsigned in its name.
- A subject starting with an ``encrypt_subject_tags`` tag asks for encryption to every
  (final, expanded) recipient: S/MIME where it has a usable certificate, PGP/MIME where it
  has a usable public key (``preference`` decides when it has both). Recipients sharing a
  method share one ciphertext with a recipient record each. A recipient with neither:
  ``missing_recipient_key = "reject"`` refuses the whole message naming it (nothing sent
  to anyone); ``"send-plain"`` gives it the signed, unencrypted message.
- Temporary trouble (gpg silent, openssl slow, a key file unreadable) is a 451, never
  unsigned or plain mail.

Everything here blocks (file reads, gpg and openssl processes, RSA): run it in a thread.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import decode_header, make_header
from typing import Any

from gateway.signing import certs, smime
from gateway.signing.certs import Bundle
from gateway.signing.keys import KeyStore, KeyStoreError


class Refused(Exception):
    """A permanent refusal: ``rule`` names the rule for the reply and the event."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


class Unavailable(Exception):
    """A temporary failure: 451 naming ``rule``."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Policy:
    sign_outbound: bool
    encrypt_subject_tags: tuple[str, ...]
    missing_recipient_key: str  # "reject" | "send-plain"
    preference: str  # "smime" | "pgp"


@dataclass
class Plan:
    """What will be done to one message."""

    signer: tuple[str, Any] | None = None  # ("smime", Bundle) or ("pgp", KeyInfo)
    smime: dict[str, Bundle] = field(default_factory=dict)  # recipient -> certificate
    pgp: dict[str, Any] = field(default_factory=dict)  # recipient -> KeyInfo
    plain: list[str] = field(default_factory=list)  # recipients that get no ciphertext
    encrypt: bool = False

    @property
    def changes_nothing(self) -> bool:
        return self.signer is None and not self.encrypt


def subject_asks_encryption(subject: str | None, tags: Sequence[str]) -> bool:
    """The subject (RFC 2047 decoded, NFC, case-folded) starts with one of ``tags``."""
    if not subject:
        return False
    try:
        text = str(make_header(decode_header(subject)))
    except (ValueError, LookupError):
        text = subject
    text = unicodedata.normalize("NFC", text).strip().casefold()
    return any(text.startswith(unicodedata.normalize("NFC", t).casefold()) for t in tags)


def plan(
    store: KeyStore,
    policy: Policy,
    sender: str | None,
    subject: str | None,
    recipients: Sequence[str],
    now: datetime | None = None,
) -> Plan:
    """Decide who signs and who gets which ciphertext; raises Refused or Unavailable."""
    now = now or datetime.now(UTC)
    result = Plan(encrypt=subject_asks_encryption(subject, policy.encrypt_subject_tags))
    try:
        if policy.sign_outbound and sender:
            result.signer = _signer(store, sender, now)
        if not result.encrypt:
            return result
        missing: list[str] = []
        for recipient in recipients:
            method, key, why = _recipient_key(store, recipient, policy.preference, now)
            if method == "smime":
                result.smime[recipient] = key
            elif method == "pgp":
                result.pgp[recipient] = key
            else:
                missing.append(f"{recipient} ({why})")
                result.plain.append(recipient)
    except KeyStoreError as exc:
        raise Unavailable("signing", str(exc)) from None
    except _PgpTemporary as exc:
        raise Unavailable("pgp", str(exc)) from None
    if missing and policy.missing_recipient_key == "reject":
        raise Refused(
            "encryption", "no usable certificate or OpenPGP key for " + ", ".join(missing)
        )
    return result


class _PgpTemporary(Exception):
    pass


def _keyring(store: KeyStore) -> Any:
    from gateway.signing.pgp import PgpTemporaryError

    try:
        return store.keyring()
    except PgpTemporaryError as exc:
        raise _PgpTemporary(str(exc)) from None


def _signer(store: KeyStore, sender: str, now: datetime) -> tuple[str, Any] | None:
    bundle, why = store.signing_bundle(sender, now)
    if bundle is not None:
        return ("smime", bundle)
    if why is not None:
        raise Refused("smime", f"the signing certificate of {sender} cannot sign: {why}")
    if store.has_keyring():
        from gateway.signing.pgp import PgpTemporaryError

        try:
            key = _keyring(store).signing_key(sender)
        except PgpTemporaryError as exc:
            raise _PgpTemporary(str(exc)) from None
        if key is not None:
            return ("pgp", key)
    return None


def _recipient_key(
    store: KeyStore, recipient: str, preference: str, now: datetime
) -> tuple[str | None, Any, str]:
    bundle, why = store.encryption_certificate(recipient, now)
    pgp_key = None
    if store.has_keyring():
        from gateway.signing.pgp import PgpTemporaryError

        try:
            pgp_key = _keyring(store).encryption_key(recipient)
        except PgpTemporaryError as exc:
            raise _PgpTemporary(str(exc)) from None
    if bundle is not None and (pgp_key is None or preference == "smime"):
        return "smime", bundle, ""
    if pgp_key is not None:
        return "pgp", pgp_key, ""
    return None, None, why if why != "no S/MIME certificate" else "no certificate or key"


@dataclass
class Applied:
    """The bodies: one per group of recipients, and what the event says."""

    groups: list[tuple[list[str], bytes]]
    summary: str


def apply(store: KeyStore, the_plan: Plan, message: bytes, recipients: Sequence[str]) -> Applied:
    """Sign and encrypt as planned; raises Refused or Unavailable."""
    from gateway.signing.pgp import PgpError, PgpTemporaryError

    notes: list[str] = []
    try:
        signed = message
        signer = the_plan.signer
        if signer is not None and signer[0] == "smime":
            signed = smime.sign(message, signer[1])
            notes.append(f"signed S/MIME {certs.fingerprint(signer[1].certificate)[:16]}")
        elif signer is not None:
            signed = _keyring(store).sign(message, signer[1])
            notes.append(f"signed PGP {signer[1].fingerprint}")
        if not the_plan.encrypt:
            return Applied([(list(recipients), signed)], "; ".join(notes))
        groups: list[tuple[list[str], bytes]] = []
        if the_plan.smime:
            to = list(the_plan.smime)
            body = smime.encrypt(signed, [b.certificate for b in the_plan.smime.values()])
            groups.append((to, body))
            notes.append("encrypted S/MIME to " + ", ".join(
                f"{r} {certs.fingerprint(b.certificate)[:16]}" for r, b in the_plan.smime.items()
            ))  # fmt: skip
        if the_plan.pgp:
            to = list(the_plan.pgp)
            pgp_signer = signer[1] if signer is not None and signer[0] == "pgp" else None
            source = message if pgp_signer is not None else signed
            body = _keyring(store).encrypt(
                source, list(the_plan.pgp.values()), sign_with=pgp_signer
            )
            groups.append((to, body))
            notes.append("encrypted PGP to " + ", ".join(
                f"{r} {k.fingerprint}" for r, k in the_plan.pgp.items()
            ))  # fmt: skip
        if the_plan.plain:
            groups.append((list(the_plan.plain), signed))
            notes.append("not encrypted for " + ", ".join(the_plan.plain) + " (send-plain)")
        return Applied(groups, "; ".join(notes))
    except smime.SmimeTemporaryError as exc:
        raise Unavailable("smime", str(exc)) from None
    except smime.SmimeError as exc:
        raise Refused("smime", str(exc)) from None
    except (PgpTemporaryError, _PgpTemporary) as exc:
        raise Unavailable("pgp", str(exc)) from None
    except PgpError as exc:
        raise Refused("pgp", str(exc)) from None
