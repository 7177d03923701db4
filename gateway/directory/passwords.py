"""Password hashing (argon2id) and the password policy of MOST Art. 17.4."""

from __future__ import annotations

import contextlib
import secrets
import string
import unicodedata
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """argon2id cost per hash; the defaults are RFC 9106's second recommended option
    (the library's own default): 64 MiB, 3 passes, 4 lanes."""

    memory_kib: int = 65536
    time_cost: int = 3
    parallelism: int = 4

    def hasher(self) -> PasswordHasher:
        return PasswordHasher(
            time_cost=self.time_cost, memory_cost=self.memory_kib, parallelism=self.parallelism
        )


# Used when a caller names no hasher (tests swap it for a cheap one); serve and the CLI
# pass the one built from [auth].
_HASHER = Argon2Params().hasher()
MIN_LENGTH = 8


# Per parameter set: a dummy costs what that hasher's hashes cost.
_DUMMY_HASHES: dict[tuple[int, int, int], str] = {}


def normalized(password: str) -> str:
    """NFC, so "mật" typed precomposed or decomposed is the same password (and class count)."""
    return unicodedata.normalize("NFC", password)


def hash_password(password: str, hasher: PasswordHasher | None = None) -> str:
    return (hasher or _HASHER).hash(normalized(password))


def verify_password(
    stored_hash: str | None, password: str, hasher: PasswordHasher | None = None
) -> bool:
    """A missing or damaged hash never matches, and costs as much as a real check, so the
    time taken does not tell unknown addresses (or groups) from real ones."""
    return check_password(stored_hash, password, hasher)[0]


def check_password(
    stored_hash: str | None, password: str, hasher: PasswordHasher | None = None
) -> tuple[bool, bool]:
    """(matches, needs a new hash): a match made with other parameters than ``hasher``'s
    is upgraded by the caller (argon2-cffi's ``check_needs_rehash``)."""
    hasher = hasher or _HASHER
    if not stored_hash:
        cost = (hasher.time_cost, hasher.memory_cost, hasher.parallelism)
        dummy = _DUMMY_HASHES.get(cost)
        if dummy is None:
            dummy = _DUMMY_HASHES[cost] = hasher.hash(secrets.token_hex(16))
        with contextlib.suppress(VerificationError, InvalidHashError):
            hasher.verify(dummy, "")
        return False, False
    try:
        hasher.verify(stored_hash, normalized(password))
    except (VerificationError, InvalidHashError):
        return False, False
    try:
        return True, hasher.check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return True, True


@dataclass(frozen=True, slots=True)
class PolicyBreach:
    """The MOST 17.4 rule a password breaks, in English (CLI, events) and Vietnamese
    (the self-service page shows both next to the field)."""

    rule: str  # a short name: "length", "account_name", "classes"
    en: str
    vi: str


def policy_breach(password: str, account: str) -> PolicyBreach | None:
    """The MOST 17.4 rule ``password`` breaks for ``account``, or None if it complies."""
    password = normalized(password)
    if len(password) < MIN_LENGTH:
        return PolicyBreach(
            "length",
            f"at least {MIN_LENGTH} characters (MOST 17.4)",
            f"ít nhất {MIN_LENGTH} ký tự (Điều 17.4)",
        )
    name = account.split("@", 1)[0].lower()
    if name and name in password.lower():
        return PolicyBreach(
            "account_name",
            "must not be or contain the account name (MOST 17.4)",
            "không được trùng hoặc chứa tên tài khoản (Điều 17.4)",
        )
    classes = [
        any(c.isupper() for c in password),
        any(c.islower() for c in password),
        any(c.isdigit() for c in password),
        any(not c.isalnum() for c in password),
    ]
    if sum(classes) < 3:
        return PolicyBreach(
            "classes",
            "at least 3 of: upper case, lower case, digit, special character (MOST 17.4)",
            "có ít nhất 3 trong 4 loại: chữ hoa, chữ thường, chữ số, ký tự đặc biệt (Điều 17.4)",
        )
    return None


def policy_violation(password: str, account: str) -> str | None:
    """The MOST 17.4 rule ``password`` breaks for ``account`` in English, or None."""
    breach = policy_breach(password, account)
    return breach.en if breach else None


def generate_password(account: str, length: int = 14) -> str:
    """A random password that satisfies the policy (for new and reset mailboxes)."""
    alphabet = string.ascii_letters + string.digits + "!#$%&*+-=?@^_"
    while True:
        candidate = "".join(secrets.choice(alphabet) for _ in range(length))
        if policy_violation(candidate, account) is None and all(
            any(c in group for c in candidate)
            for group in (string.ascii_uppercase, string.ascii_lowercase, string.digits)
        ):
            return candidate


# OWASP Password Storage Cheat Sheet: argon2id configurations of equal strength, p=1.
OWASP_MINIMUMS = ((47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5))
# RFC 9106 4: first recommended option (2 GiB, t=1, p=4), second (64 MiB, t=3, p=4).
RFC9106_OPTIONS = ((2097152, 1), (65536, 3))


def meets_owasp(params: Argon2Params) -> bool:
    return any(params.memory_kib >= m and params.time_cost >= t for m, t in OWASP_MINIMUMS)


def meets_rfc9106(params: Argon2Params) -> bool:
    return any(params.memory_kib >= m and params.time_cost >= t for m, t in RFC9106_OPTIONS)


@dataclass(frozen=True, slots=True)
class HashCost:
    wall_seconds: float
    cpu_seconds: float  # all threads (argon2 runs its lanes on threads of its own)


def measure_cost(params: Argon2Params) -> HashCost:
    """What one verification costs on this machine (a hash costs the same)."""
    import time

    hasher = params.hasher()
    wall, cpu = time.perf_counter(), time.process_time()
    hasher.hash(secrets.token_hex(16))
    return HashCost(time.perf_counter() - wall, time.process_time() - cpu)
