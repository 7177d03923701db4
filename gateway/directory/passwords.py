"""Password hashing (argon2id) and the password policy of MOST Art. 17.4."""

from __future__ import annotations

import secrets
import string

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
MIN_LENGTH = 8


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant-time check; a missing or damaged hash never matches."""
    if not stored_hash:
        return False
    try:
        return _HASHER.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def policy_violation(password: str, account: str) -> str | None:
    """The MOST 17.4 rule ``password`` breaks for ``account``, or None if it complies."""
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
