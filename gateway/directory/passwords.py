"""Password hashing (argon2id) and the password policy of MOST Art. 17.4."""

from __future__ import annotations

import contextlib
import secrets
import string
import unicodedata

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
MIN_LENGTH = 8


_DUMMY_HASHES: dict[int, str] = {}  # per hasher: a dummy costs what that hasher's hashes cost


def normalized(password: str) -> str:
    """NFC, so "mật" typed precomposed or decomposed is the same password (and class count)."""
    return unicodedata.normalize("NFC", password)


def hash_password(password: str) -> str:
    return _HASHER.hash(normalized(password))


def verify_password(stored_hash: str | None, password: str) -> bool:
    """A missing or damaged hash never matches, and costs as much as a real check, so the
    time taken does not tell unknown addresses (or groups) from real ones."""
    if not stored_hash:
        dummy = _DUMMY_HASHES.get(id(_HASHER))
        if dummy is None:
            dummy = _DUMMY_HASHES[id(_HASHER)] = _HASHER.hash(secrets.token_hex(16))
        with contextlib.suppress(VerificationError, InvalidHashError):
            _HASHER.verify(dummy, "")
        return False
    try:
        return _HASHER.verify(stored_hash, normalized(password))
    except (VerificationError, InvalidHashError):
        return False


def policy_violation(password: str, account: str) -> str | None:
    """The MOST 17.4 rule ``password`` breaks for ``account``, or None if it complies."""
    password = normalized(password)
    if len(password) < MIN_LENGTH:
        return f"at least {MIN_LENGTH} characters (MOST 17.4)"
    name = account.split("@", 1)[0].lower()
    if name and name in password.lower():
        return "must not be or contain the account name (MOST 17.4)"
    classes = [
        any(c.isupper() for c in password),
        any(c.islower() for c in password),
        any(c.isdigit() for c in password),
        any(not c.isalnum() for c in password),
    ]
    if sum(classes) < 3:
        return "at least 3 of: upper case, lower case, digit, special character (MOST 17.4)"
    return None


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
