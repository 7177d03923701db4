"""auth.py: one authenticator, its throttle counting attempts in flight, what is logged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.auth import Authenticator, loggable_user
from gateway.auth_throttle import LoginThrottle
from gateway.directory.mailboxes import Directory, Registration
from gateway.smtp import replies

USER, PASSWORD = "an@example.gov.vn", "Dung-Mat-Khau-2026"


@pytest.fixture
def directory(tmp_path: Path):
    directory = Directory.for_data_dir(tmp_path)
    directory.add(Registration(USER, "Nguyễn Văn An"), PASSWORD)
    yield directory
    directory.close()


def authenticator(directory: Directory, per_address: int = 3) -> Authenticator:
    return Authenticator(directory, LoginThrottle(per_address, 100, 900))


async def test_parallel_guesses_get_no_more_tries_than_the_limit(directory: Directory) -> None:
    """Six connections guessing at once: before, each passed the throttle check while the
    others were still hashing, so all six got a guess in."""
    auth = authenticator(directory, per_address=2)
    results = await asyncio.gather(*(auth.login(USER, f"wrong-{n}", "192.0.2.9") for n in range(6)))
    codes = sorted(r.reply.code for r in results if r.reply is not None)
    assert codes.count(replies.AUTH_FAILED.code) == 2
    assert codes.count(replies.AUTH_THROTTLED.code) == 4
    auth.close()


async def test_locked_owner_is_told_and_a_wrong_password_is_not(directory: Directory) -> None:
    directory.set_state(USER, "locked", "inactive 6 months")
    auth = authenticator(directory)
    right = await auth.login(USER, PASSWORD, "192.0.2.9")
    assert right.mailbox is None and right.reply is not None
    assert right.reply.text.startswith(replies.AUTH_MAILBOX_LOCKED.text)
    assert "locked" in right.reason
    wrong = await auth.login(USER, "not-it", "192.0.2.9")
    assert wrong.reply is not None
    assert wrong.reply.text.startswith(replies.AUTH_FAILED.text)
    auth.close()


async def test_success_records_the_access(directory: Directory) -> None:
    auth = authenticator(directory)
    result = await auth.login(f"  {USER.upper()} ", PASSWORD, "192.0.2.9")
    assert result.mailbox is not None and result.reply is None
    mailbox = directory.get(USER)
    assert mailbox is not None and mailbox.last_access is not None
    auth.close()


async def test_a_password_in_the_user_field_is_not_logged(directory: Directory) -> None:
    auth = authenticator(directory)
    result = await auth.login("Sup3r$ecret!Pass", "x", "192.0.2.9")
    assert result.user is None
    unknown = await auth.login("nobody@example.gov.vn", "x", "192.0.2.9")
    assert unknown.user == "nobody@example.gov.vn"  # an address: fine to record
    auth.close()


def test_loggable_user() -> None:
    assert loggable_user("an@example.gov.vn", known=False) == "an@example.gov.vn"
    assert loggable_user("hunter2", known=False) is None
    assert loggable_user("an", known=True) == "an"


async def test_six_months_without_access_locks_at_login_before_maintenance(
    directory: Directory,
) -> None:
    """MOST 13.3 decides at the login itself, not at the next maintenance run."""
    from datetime import UTC, datetime, timedelta

    directory.record_access(USER, datetime.now(UTC) - timedelta(days=200))
    auth = authenticator(directory)
    result = await auth.login(USER, PASSWORD, "192.0.2.9")
    assert result.mailbox is None and result.reply is not None
    assert result.reply.text.startswith(replies.AUTH_MAILBOX_LOCKED.text)
    assert "no access since" in result.reason
    auth.close()
