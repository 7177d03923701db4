"""The MOST 17.4 password policy, the generator and argon2 hashing (directory/passwords.py)."""

from __future__ import annotations

import string
import unicodedata

import pytest

from gateway.directory.passwords import (
    MIN_LENGTH,
    generate_password,
    hash_password,
    policy_violation,
    verify_password,
)

ACCOUNT = "dvbe@most.gov.vn"
SHORT = "at least 8 characters"
NAME = "account name"
CLASSES = "at least 3 of"


@pytest.mark.parametrize(
    ("password", "account", "rule"),
    [
        # length: 8 is the minimum, counted in characters
        ("", ACCOUNT, SHORT),
        ("Ab1!", ACCOUNT, SHORT),
        ("Ab1!xyz", ACCOUNT, SHORT),
        ("Ab1!xyzw", ACCOUNT, None),
        ("Mật1!kh", ACCOUNT, SHORT),
        # the account name: neither equal nor contained, whatever the case
        ("Tran.An2026", "tran.an2026@most.gov.vn", NAME),
        ("TRAN.AN2026", "tran.an2026@most.gov.vn", NAME),
        ("Dvbe2026!", ACCOUNT, NAME),
        ("xx#DVBE#99", ACCOUNT, NAME),
        ("Dv-be2026!", ACCOUNT, None),
        ("Dvbe2026!", "", None),  # no account to compare with
        # the length rule is reported before the account rule
        ("dvbe1", ACCOUNT, SHORT),
        # fewer than 3 of the 4 classes
        ("abcdefgh", ACCOUNT, CLASSES),
        ("abcdefgh1", ACCOUNT, CLASSES),
        ("Abcdefghij", ACCOUNT, CLASSES),
        ("ABCDEFGH!", ACCOUNT, CLASSES),
        ("12345678!", ACCOUNT, CLASSES),
        ("ABCDEFGH12", ACCOUNT, CLASSES),
        ("abcdefg!@#", ACCOUNT, CLASSES),
        # every combination of 3 classes, and all 4
        ("Abcdefg1", ACCOUNT, None),  # upper, lower, digit
        ("Abcdefg!", ACCOUNT, None),  # upper, lower, special
        ("ABCDEF1!", ACCOUNT, None),  # upper, digit, special
        ("abcdef1!", ACCOUNT, None),  # lower, digit, special
        ("Abcde1!x", ACCOUNT, None),  # all four
        # Vietnamese letters are letters, with their case
        ("Mậtkhẩu2026", ACCOUNT, None),
        ("mậtkhẩu2026", ACCOUNT, CLASSES),
        ("MẬTKHẨU2026", ACCOUNT, CLASSES),
        ("Đườngđiđêm", ACCOUNT, CLASSES),
        ("Đường-đi-1", ACCOUNT, None),
        # spaces and punctuation are special characters
        ("correct horse battery", ACCOUNT, CLASSES),
        ("Correct horse battery", ACCOUNT, None),
        ("correct horse 2026", ACCOUNT, None),
        ("mật khẩu 2026", ACCOUNT, None),
    ],
)
def test_policy(password: str, account: str, rule: str | None) -> None:
    problem = policy_violation(password, account)
    if rule is None:
        assert problem is None
    else:
        assert problem is not None
        assert rule in problem
        assert "MOST 17.4" in problem
        assert "\n" not in problem


def test_policy_message_names_the_minimum() -> None:
    assert str(MIN_LENGTH) in policy_violation("Ab1!", ACCOUNT)


def test_policy_does_not_depend_on_unicode_normalisation() -> None:
    for password in ("mậtkhẩu2026", "Mật1!kh"):
        nfc = unicodedata.normalize("NFC", password)
        nfd = unicodedata.normalize("NFD", password)
        assert nfc != nfd
        assert policy_violation(nfd, ACCOUNT) == policy_violation(nfc, ACCOUNT)


@pytest.mark.parametrize("account", [ACCOUNT, "a@most.gov.vn", "x1@most.gov.vn", "ab@b.vn"])
def test_generated_passwords_satisfy_the_policy(account: str) -> None:
    drawn = {generate_password(account) for _ in range(200)}
    assert len(drawn) == 200  # random, not a fixed string
    for password in drawn:
        assert policy_violation(password, account) is None, password
        assert len(password) == 14
        assert any(c in string.ascii_uppercase for c in password)
        assert any(c in string.ascii_lowercase for c in password)
        assert any(c in string.digits for c in password)
        assert account.split("@")[0] not in password.lower()


def test_generated_password_length_is_a_parameter() -> None:
    assert len(generate_password(ACCOUNT, length=20)) == 20


def test_hash_and_verify_round_trip() -> None:
    stored = hash_password("Mậtkhẩu2026")
    assert stored.startswith("$argon2id$")
    assert "Mậtkhẩu2026" not in stored
    assert verify_password(stored, "Mậtkhẩu2026")
    assert not verify_password(stored, "Mậtkhẩu2027")
    assert hash_password("Mậtkhẩu2026") != stored  # salted


@pytest.mark.parametrize("stored", [None, "", "garbage", "$argon2id$v=19$m=1,t=1,p=1$x$y"])
def test_verify_against_a_missing_or_damaged_hash_is_false(stored: str | None) -> None:
    assert verify_password(stored, "Mậtkhẩu2026") is False
