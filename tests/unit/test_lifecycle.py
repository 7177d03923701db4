"""The mailbox lifecycle (gateway/directory/lifecycle.py): MOST 13.3, MIC 7.2.a, MIC 6.4.c."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.directory.lifecycle import Transition, add_months, apply_lifecycle, due_transition
from gateway.directory.mailboxes import Directory, Mailbox, Registration, parse_stored

DOMAIN = "most.gov.vn"
T = date(2026, 3, 10)  # a chosen "last seen" day
DAY = timedelta(days=1)


def addr(local: str) -> str:
    return f"{local}@{DOMAIN}"


def box(**fields: Any) -> Mailbox:
    """A mailbox as the directory would return it, last seen on day T."""
    base: dict[str, Any] = {
        "address": addr("dvbe"),
        "full_name": "Đỗ Văn Bê",
        "kind": "personal",
        "state": "active",
        "must_change": False,
        "created_at": "2025-01-01T08:00:00Z",
        "last_access": f"{T.isoformat()}T09:15:00Z",
    }
    return Mailbox(**(base | fields))


def seen_on(day: date) -> str:
    return f"{day.isoformat()}T12:00:00Z"


# -- add_months -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [
        (date(2026, 8, 31), 6, date(2027, 2, 28)),
        (date(2027, 8, 31), 6, date(2028, 2, 29)),  # leap year
        (date(2026, 1, 31), 1, date(2026, 2, 28)),
        (date(2026, 3, 31), 1, date(2026, 4, 30)),
        (date(2024, 2, 29), 12, date(2025, 2, 28)),
        (date(2026, 12, 15), 1, date(2027, 1, 15)),
        (date(2026, 7, 15), 6, date(2027, 1, 15)),
        (date(2026, 3, 10), 12, date(2027, 3, 10)),
        (date(2026, 3, 10), 24, date(2028, 3, 10)),
        (date(2026, 5, 31), 0, date(2026, 5, 31)),
    ],
)
def test_add_months_clamps_to_the_end_of_the_month(day: date, months: int, expected: date) -> None:
    assert add_months(day, months) == expected


# -- inactivity (MOST 13.3, MIC 7.2.a) -------------------------------------------------------


@pytest.mark.parametrize(
    ("today", "state"),
    [
        (T, None),
        (add_months(T, 6) - DAY, None),
        (add_months(T, 6), "locked"),
        (add_months(T, 12) - DAY, "locked"),
        (add_months(T, 12), "revoked"),
        (add_months(T, 40), "revoked"),
    ],
)
def test_inactivity(today: date, state: str | None) -> None:
    transition = due_transition(box(), today)
    if state is None:
        assert transition is None
        return
    assert transition == Transition(addr("dvbe"), "active", state, transition.reason)
    assert f"no access since {T}" in transition.reason
    assert "MOST 13.3" in transition.reason
    if state == "locked":
        assert "6 months" in transition.reason and "MIC 7.2.a" in transition.reason
    else:
        assert "12 months" in transition.reason


def test_inactivity_counts_from_creation_when_never_accessed() -> None:
    never = box(last_access=None, created_at=f"{T.isoformat()}T23:59:59Z")
    assert due_transition(never, add_months(T, 6) - DAY) is None
    locked = due_transition(never, add_months(T, 6))
    assert locked is not None and locked.new_state == "locked"
    assert f"no access since {T}" in locked.reason


def test_last_access_resets_the_clock() -> None:
    later = T + timedelta(days=100)
    again = box(created_at=seen_on(T), last_access=seen_on(later))
    assert due_transition(again, add_months(T, 6)) is None
    assert due_transition(again, add_months(T, 12)) is not None  # now 6 months after later
    assert due_transition(again, add_months(later, 6) - DAY) is None
    assert due_transition(again, add_months(later, 6)).new_state == "locked"


def test_groups_are_exempt_from_inactivity() -> None:
    team = box(kind="group", last_access=None, created_at="2020-01-01T00:00:00Z")
    assert due_transition(team, date(2030, 1, 1)) is None


def test_states_only_get_stricter() -> None:
    assert due_transition(box(state="locked"), add_months(T, 6)) is None
    assert due_transition(box(state="revoked"), add_months(T, 40)) is None
    revoke = due_transition(box(state="locked"), add_months(T, 12))
    assert (revoke.old_state, revoke.new_state) == ("locked", "revoked")
    lock = due_transition(box(state="send-locked"), add_months(T, 6))
    assert (lock.old_state, lock.new_state) == ("send-locked", "locked")


# -- departures (MIC 6.4.c, MOST 13.2.b) -----------------------------------------------------

LEFT = date(2026, 6, 15)


def retiring(rank: str, today: date, **fields: Any) -> Mailbox:
    """Departing on LEFT, last seen on ``today`` so inactivity plays no part."""
    return box(rank=rank, retire_on=LEFT.isoformat(), last_access=seen_on(today), **fields)


@pytest.mark.parametrize(
    ("rank", "today", "state"),
    [
        ("staff", LEFT - DAY, None),
        ("staff", LEFT, "send-locked"),  # at once
        ("staff", add_months(LEFT, 6) - DAY, "send-locked"),
        ("staff", add_months(LEFT, 6), "revoked"),
        ("director", LEFT, None),  # keeps sending for a month
        ("director", add_months(LEFT, 1) - DAY, None),
        ("director", add_months(LEFT, 1), "send-locked"),
        ("director", add_months(LEFT, 12) - DAY, "send-locked"),
        ("director", add_months(LEFT, 12), "revoked"),
    ],
)
def test_retirement(rank: str, today: date, state: str | None) -> None:
    transition = due_transition(retiring(rank, today), today)
    if state is None:
        assert transition is None
        return
    assert transition.new_state == state
    assert f"left on {LEFT}" in transition.reason
    assert rank in transition.reason
    assert "MIC 6.4.c" in transition.reason
    if state == "revoked":
        assert ("6 months" if rank == "staff" else "12 months") in transition.reason


def test_retirement_deadlines_clamp_to_the_month() -> None:
    left = date(2026, 8, 31)
    staff = box(retire_on=left.isoformat(), last_access=seen_on(date(2027, 2, 27)))
    assert due_transition(staff, date(2027, 2, 27)).new_state == "send-locked"
    assert due_transition(staff, date(2027, 2, 28)).new_state == "revoked"


def test_a_locked_mailbox_never_relaxes_to_send_locked() -> None:
    locked = retiring("staff", LEFT, state="locked", lock_reason="virus")
    assert due_transition(locked, LEFT) is None
    assert due_transition(locked, add_months(LEFT, 6)).new_state == "revoked"
    director = retiring("director", add_months(LEFT, 1), state="send-locked")
    assert due_transition(director, add_months(LEFT, 1)) is None


def test_the_strictest_rule_wins() -> None:
    # departed a week ago (send-locked) but also inactive for 6 months (locked)
    today = LEFT + timedelta(days=7)
    both = box(retire_on=LEFT.isoformat(), last_access=seen_on(add_months(today, -6)))
    transition = due_transition(both, today)
    assert transition.new_state == "locked"
    assert "MOST 13.3" in transition.reason


# -- apply_lifecycle on a real directory -----------------------------------------------------


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Directory]:
    found = Directory(tmp_path / "directory.sqlite3")
    yield found
    found.close()


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})


def make(directory: Directory, local: str, seen: date, **fields: Any) -> None:
    directory.add(Registration(addr(local), local.title(), **fields), None)
    directory.record_access(addr(local), datetime.combine(seen, time(9, 0), tzinfo=UTC))


def test_apply_lifecycle(directory: Directory) -> None:
    today = add_months(T, 6)
    make(directory, "stale", T)  # exactly 6 months: locked
    make(directory, "almost", T + DAY)  # 6 months minus a day: nothing
    make(directory, "ancient", add_months(T, -6))  # 12 months: revoked
    make(directory, "fresh", today)
    make(directory, "team", add_months(T, -24), kind="group")  # groups are exempt
    make(directory, "leaving", today, rank="staff")
    directory.set_retirement(addr("leaving"), today.isoformat())
    make(directory, "chief", today, rank="director")
    directory.set_retirement(addr("chief"), today.isoformat())
    make(directory, "chief2", today, rank="director")
    directory.set_retirement(addr("chief2"), add_months(today, -1).isoformat())

    emit = Recorder()
    done = apply_lifecycle(directory, today, emit)

    changed = {t.address: (t.old_state, t.new_state) for t in done}
    assert changed == {
        addr("ancient"): ("active", "revoked"),
        addr("stale"): ("active", "locked"),
        addr("leaving"): ("active", "send-locked"),
        addr("chief2"): ("active", "send-locked"),
    }
    states = {m.address.split("@")[0]: m.state for m in directory.list()}
    assert states == {
        "almost": "active",
        "ancient": "revoked",
        "chief": "active",
        "chief2": "send-locked",
        "fresh": "active",
        "leaving": "send-locked",
        "stale": "locked",
        "team": "active",
    }
    stale = directory.require(addr("stale"))
    assert stale.lock_reason == next(t.reason for t in done if t.address == addr("stale"))
    assert parse_stored(stale.state_changed_at) == datetime.combine(today, time(0), tzinfo=UTC)
    assert directory.accepts_mail(addr("stale"))  # locked still receives (MIC 7.1)
    assert not directory.accepts_mail(addr("ancient"))

    assert len(emit.events) == 4
    by_user = {e["user"]: e for e in emit.events}
    assert set(by_user) == set(changed)
    for event in emit.events:
        assert event["event"] == "mailbox_state"
        assert event["actor"] == "maintenance"
        assert (event["old_state"], event["state"]) == changed[event["user"]]
    assert "MOST 13.3" in by_user[addr("stale")]["reason"]
    assert "MIC 7.2.a" in by_user[addr("stale")]["reason"]
    assert "MOST 13.3" in by_user[addr("ancient")]["reason"]
    assert "MIC 6.4.c" in by_user[addr("leaving")]["reason"]
    assert "director" in by_user[addr("chief2")]["reason"]

    # idempotent: the same day again changes nothing and records nothing
    assert apply_lifecycle(directory, today, emit) == []
    assert len(emit.events) == 4
    assert {m.address.split("@")[0]: m.state for m in directory.list()} == states

    # a month later the director who left today is send-locked too
    later = add_months(today, 1)
    done = apply_lifecycle(directory, later, emit)
    assert {t.address: t.new_state for t in done} == {
        addr("chief"): "send-locked",
        addr("almost"): "locked",
    }
    assert len(emit.events) == 6


def test_apply_lifecycle_from_creation(directory: Directory) -> None:
    directory.add(Registration(addr("never"), "Never"), None)
    created = parse_stored(directory.require(addr("never")).created_at).date()
    emit = Recorder()
    assert apply_lifecycle(directory, add_months(created, 6) - DAY, emit) == []
    done = apply_lifecycle(directory, add_months(created, 6), emit)
    assert [(t.address, t.new_state) for t in done] == [(addr("never"), "locked")]
    assert f"no access since {created}" in emit.events[0]["reason"]


def test_an_access_after_a_lock_does_not_unlock(directory: Directory) -> None:
    make(directory, "dvbe", T)
    emit = Recorder()
    apply_lifecycle(directory, add_months(T, 6), emit)
    directory.record_access(addr("dvbe"), datetime.combine(add_months(T, 7), time(), tzinfo=UTC))
    assert apply_lifecycle(directory, add_months(T, 7), emit) == []
    assert directory.require(addr("dvbe")).state == "locked"


def test_locked_mailbox_keeps_its_reason_when_retirement_is_milder(directory: Directory) -> None:
    make(directory, "dvbe", LEFT)
    directory.set_state(addr("dvbe"), "locked", "nghi nhiễm virus")
    directory.set_retirement(addr("dvbe"), LEFT.isoformat())
    emit = Recorder()
    assert apply_lifecycle(directory, LEFT, emit) == []
    assert emit.events == []
    mailbox = directory.require(addr("dvbe"))
    assert (mailbox.state, mailbox.lock_reason) == ("locked", "nghi nhiễm virus")
    done = apply_lifecycle(directory, add_months(LEFT, 6), emit)
    assert [(t.old_state, t.new_state) for t in done] == [("locked", "revoked")]


def test_due_transition_reads_the_stored_record(directory: Directory) -> None:
    make(directory, "dvbe", add_months(LEFT, 1), rank="director")
    directory.set_retirement(addr("dvbe"), LEFT.isoformat())
    stored = directory.require(addr("dvbe"))
    assert (stored.rank, stored.retire_on) == ("director", "2026-06-15")
    assert due_transition(stored, add_months(LEFT, 1) - DAY) is None
    assert due_transition(stored, add_months(LEFT, 1)).new_state == "send-locked"


def test_effective_state_applies_a_passed_deadline_before_maintenance_does() -> None:
    from gateway.directory.lifecycle import effective_state

    stored = retiring("staff", LEFT)  # maintenance has not run: still "active" on file
    assert stored.state == "active"
    assert effective_state(stored, LEFT - DAY) == ("active", None)
    state, why = effective_state(stored, LEFT)
    assert state == "send-locked" and why is not None and "MIC 6.4.c" in why
    locked = box(state="locked", lock_reason="leaked password")
    assert effective_state(locked, T) == ("locked", "leaked password")  # stored stays
