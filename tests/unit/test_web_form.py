"""gateway/web/form.py: a submitted password form against a real directory and the one
authenticator (argon2id at its cheapest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.auth import Authenticator
from gateway.auth_throttle import LoginThrottle
from gateway.config import AuthSection
from gateway.directory.mailboxes import Directory, Registration
from gateway.web import form as web_form
from gateway.web.form import Submission, change_password

USER, PASSWORD = "nvbinh@example.gov.vn", "Ban-Dau-2026"
NEW = "Mật-Khẩu-Mới-2026"
CHEAP = AuthSection(argon2_memory_kib=8, argon2_time_cost=1, argon2_parallelism=1)


@pytest.fixture
def directory(tmp_path: Path):
    directory = Directory.for_data_dir(tmp_path, CHEAP.argon2().hasher())
    directory.add(Registration(USER, "Nguyễn Văn Bình"), PASSWORD, must_change=True)
    yield directory
    directory.close()


@pytest.fixture
def auth(directory: Directory):
    authenticator = Authenticator(directory, LoginThrottle(3, 100, 900), CHEAP)
    yield authenticator
    authenticator.close()


class Events(list[tuple[str, dict[str, Any]]]):
    def __call__(self, event: str, **fields: Any) -> None:
        self.append((event, fields))

    def names(self) -> list[str]:
        return [name for name, _ in self]


def submission(**changes: str) -> Submission:
    values = {"address": USER, "current": PASSWORD, "new": NEW, "confirm": NEW}
    values.update(changes)
    return Submission.from_form(values)


async def test_change_stores_the_new_password_and_clears_must_change(
    auth: Authenticator, directory: Directory
) -> None:
    events = Events()
    outcome = await change_password(
        auth, submission(address=" NVBinh@Example.gov.vn "), "h", events
    )
    assert outcome.changed and outcome.errors == {}
    assert directory.check_password(USER, NEW) and not directory.check_password(USER, PASSWORD)
    mailbox = directory.get(USER)
    assert mailbox is not None and not mailbox.must_change
    assert events.names() == ["auth_success", "password_changed"]
    changed = events[-1][1]
    assert changed["actor"] == "user" and changed["user"] == USER
    # The old password no longer logs in, even though the cache had remembered it.
    assert (await auth.login(USER, PASSWORD, "h")).mailbox is None
    assert (await auth.login(USER, NEW, "h")).mailbox is not None


@pytest.mark.parametrize(
    ("new", "rule"),
    [
        ("Ab1-x", "at least 8 characters"),
        ("x-NVBINH-2026", "account name"),
        ("onlylowercase", "at least 3 of"),
    ],
)
async def test_weak_password_is_refused_next_to_its_field_without_a_login(
    auth: Authenticator, directory: Directory, new: str, rule: str
) -> None:
    events = Events()
    outcome = await change_password(auth, submission(new=new, confirm=new), "h", events)
    assert not outcome.changed and set(outcome.errors) == {"new"}
    assert rule in outcome.errors["new"].en and "Điều 17.4" in outcome.errors["new"].vi
    assert events.names() == ["password_change_refused"]  # no argon2 run, no auth event
    assert directory.check_password(USER, PASSWORD)


async def test_confirmation_must_match_and_new_must_differ(auth: Authenticator) -> None:
    outcome = await change_password(auth, submission(confirm=NEW + "x"), "h", Events())
    assert set(outcome.errors) == {"confirm"}
    assert outcome.errors["confirm"] is web_form.MISMATCH
    same = await change_password(auth, submission(new=PASSWORD, confirm=PASSWORD), "h", Events())
    assert same.errors == {"new": web_form.SAME_AS_CURRENT}


async def test_missing_fields_are_each_named(auth: Authenticator) -> None:
    outcome = await change_password(auth, Submission.from_form({}), "h", Events())
    assert set(outcome.errors) == {"address", "current", "new", "confirm"}


async def test_wrong_current_password_counts_against_the_login_throttle(
    auth: Authenticator, directory: Directory
) -> None:
    events = Events()
    for _ in range(3):
        outcome = await change_password(auth, submission(current="Sai-Mat-Khau-1"), "h", events)
        assert outcome.errors == {"current": web_form.WRONG}
    throttled = await change_password(auth, submission(), "h", events)
    assert throttled.errors == {"current": web_form.THROTTLED}
    assert events.names().count("auth_failure") == 4
    assert directory.check_password(USER, PASSWORD)


async def test_locked_mailbox_cannot_change_its_password(
    auth: Authenticator, directory: Directory
) -> None:
    directory.set_state(USER, "locked", "leaked password")
    outcome = await change_password(auth, submission(), "h", Events())
    assert outcome.errors == {"current": web_form.LOCKED}
    assert directory.check_password(USER, PASSWORD)


async def test_a_change_made_meanwhile_is_not_overwritten(
    auth: Authenticator, directory: Directory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator resets the password between the check and the write: the reset wins."""
    original = auth.change_password

    async def operator_first(proved, new_password):  # type: ignore[no-untyped-def]
        directory.set_password(USER, "Dat-Lai-2026-X", must_change=True)
        return await original(proved, new_password)

    monkeypatch.setattr(auth, "change_password", operator_first)
    events = Events()
    outcome = await change_password(auth, submission(), "h", events)
    assert outcome.errors == {"current": web_form.CHANGED_MEANWHILE}
    assert directory.check_password(USER, "Dat-Lai-2026-X")
    assert events.names()[-1] == "password_change_refused"


async def test_no_password_reaches_an_event(auth: Authenticator) -> None:
    events = Events()
    await change_password(auth, submission(new="short", confirm="short"), "h", events)
    await change_password(auth, submission(current="Sai-Mat-Khau-1"), "h", events)
    await change_password(auth, submission(), "h", events)
    text = repr(events)
    for secret in (PASSWORD, NEW, "Sai-Mat-Khau-1", "short"):
        assert secret not in text
