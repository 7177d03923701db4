"""The mailbox lifecycle, applied by ``mailgate maintenance`` as of a given day.

Rules (defaults of the regulations):
* no access for 6 months since creation or last access -> locked; 12 months -> revoked
  (MOST 13.3, MIC 7.2.a); groups have no login and are exempt;
* departure recorded with ``retire --on``: staff -> sending locked on that day, revoked
  6 months later; director rank -> sending locked 1 month later, revoked 12 months later
  (MIC 6.4.c; MOST 13.2.b caps every departure at 12 months).
States only ever get stricter here (active < send-locked < locked < revoked), so running
it twice on the same day changes nothing the second time.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from gateway.directory.mailboxes import Directory, Mailbox, parse_stored

SEVERITY = {"active": 0, "send-locked": 1, "locked": 2, "revoked": 3}
INACTIVE_LOCK_MONTHS = 6
INACTIVE_REVOKE_MONTHS = 12
RETIREMENT = {  # rank -> (months until sending is locked, months until revoked)
    "staff": (0, 6),
    "director": (1, 12),
}


def add_months(day: date, months: int) -> date:
    """Calendar months, clamped to the month's last day (31 Aug + 6 months = 28/29 Feb)."""
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return day.replace(
        year=year, month=month, day=min(day.day, calendar.monthrange(year, month)[1])
    )


@dataclass(frozen=True, slots=True)
class Transition:
    address: str
    old_state: str
    new_state: str
    reason: str


def due_transition(mailbox: Mailbox, today: date) -> Transition | None:
    """The strictest state the rules require of ``mailbox`` on ``today``, if stricter than now."""
    wanted: list[tuple[str, str]] = []
    if mailbox.kind != "group":
        last = parse_stored(mailbox.last_access or mailbox.created_at).date()
        if today >= add_months(last, INACTIVE_REVOKE_MONTHS):
            wanted.append(("revoked", f"no access since {last} (12 months, MOST 13.3)"))
        elif today >= add_months(last, INACTIVE_LOCK_MONTHS):
            wanted.append(("locked", f"no access since {last} (6 months, MOST 13.3, MIC 7.2.a)"))
    if mailbox.retire_on:
        left = date.fromisoformat(mailbox.retire_on)
        lock_after, revoke_after = RETIREMENT.get(mailbox.rank, RETIREMENT["staff"])
        if today >= add_months(left, revoke_after):
            why = f"left on {left}, {mailbox.rank}: revoked after {revoke_after} months"
            wanted.append(("revoked", f"{why} (MIC 6.4.c)"))
        elif today >= add_months(left, lock_after):
            wanted.append(
                ("send-locked", f"left on {left}, {mailbox.rank}: sending locked (MIC 6.4.c)")
            )
    if not wanted:
        return None
    state, reason = max(wanted, key=lambda item: SEVERITY[item[0]])
    if SEVERITY[state] <= SEVERITY[mailbox.state]:
        return None
    return Transition(mailbox.address, mailbox.state, state, reason)


def effective_state(mailbox: Mailbox, today: date | None = None) -> tuple[str, str | None]:
    """The state the rules give ``mailbox`` now, and why: the stored one, or a stricter
    one whose deadline has passed though ``maintenance`` has not recorded it yet. Login
    and sending decide by this, so a departure recorded for today blocks at once."""
    due = due_transition(mailbox, today or datetime.now(UTC).date())
    if due is not None:
        return due.new_state, due.reason
    return mailbox.state, mailbox.lock_reason


def sendable_identities(
    directory: Directory, address: str, today: date | None = None
) -> frozenset[str]:
    """Who ``address`` may send as now: itself and the delegated unit mailboxes whose
    effective state is active. A unit mailbox past its departure deadline may not send,
    whoever speaks for it (MIC 6.4.c, 7.1), from the day the deadline passes, not from
    the next ``maintenance`` run. Blocking: call it in a thread."""
    own = address.lower()
    kept = {own}
    for unit in directory.sender_identities(address) - {own}:
        mailbox = directory.get(unit)
        if mailbox is not None and effective_state(mailbox, today)[0] == "active":
            kept.add(unit)
    return frozenset(kept)


def apply_lifecycle(
    directory: Directory, today: date, emit: Callable[..., object]
) -> list[Transition]:
    """Apply every due transition, each recorded as a ``mailbox_state`` event."""
    moment = datetime.combine(today, time(0, 0), tzinfo=UTC)
    done = []
    for mailbox in directory.list():
        transition = due_transition(mailbox, today)
        if transition is None:
            continue
        directory.set_state(mailbox.address, transition.new_state, transition.reason, moment)
        emit(
            "mailbox_state",
            user=mailbox.address,
            old_state=transition.old_state,
            state=transition.new_state,
            reason=transition.reason,
            actor="maintenance",
        )
        done.append(transition)
    return done
