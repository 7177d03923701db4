"""One message's story (``mailgate logs trace``): every event about it, in order, across days.

Not every event names the message: the relay's and the spool's carry ``queue_id``
(``dequeued``, ``bounced``), the SMTP session's carry ``session`` (``session_start``,
``auth_success``). So the story is gathered in rounds through the index: the message id
gives the queue ids and sessions, which give their events, and a bounce's
``dsn_queue_id`` gives the bounce's own delivery. Session events are taken only when
they belong to no message (the session's start, login and end), so another message sent
in the same session does not creep in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway.events.index import bare_id, record_keys
from gateway.events.lookup import key_needles, search_days
from gateway.events.search import sort_key
from gateway.events.table import EVENT_WIDTH, clean, fit, times

__all__ = ["outcome", "story", "trace"]

Record = dict[str, Any]
_ROUNDS = 4  # message -> queue ids and sessions -> bounce queue ids -> (nothing new)


def trace(log_dir: Any, message_id: str) -> list[Record]:
    """Every event of the message, in time order (empty if the log never saw it)."""
    wanted = {"m\0" + bare_id(message_id)}
    asked: set[str] = set()
    found: dict[str, Record] = {}
    for _ in range(_ROUNDS):
        new = frozenset(wanted - asked)
        if not new:
            break
        asked |= new

        def linked(record: Record, new: frozenset[str] = new) -> bool:
            hits = record_keys(record) & new
            if not hits:
                return False
            if all(h.startswith("S\0") for h in hits):  # only the session links it
                return "message_id" not in record and "queue_id" not in record
            return True

        for record, _ in search_days(log_dir, None, None, new, key_needles(new), linked):
            identity = repr(sorted(record.items(), key=lambda item: item[0]))
            if identity in found:
                continue
            found[identity] = record
            for key in record_keys(record):
                if key[0] in "qS":
                    wanted.add(key)
    return sorted(found.values(), key=sort_key)


def _list(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(clean(v) for v in value) or "-"
    return clean(value) if value is not None else "-"


def describe(record: Record) -> str:
    """One sentence for one event of the story."""
    event = record.get("event")
    get = record.get
    attempt = f" (attempt {clean(get('attempt'))})" if get("attempt") is not None else ""
    hop = f" via {clean(get('next_hop'))}" if get("next_hop") else ""
    reply = clean(get("reason") or get("code") or "")
    if event == "session_start":
        listener = clean(get("listener") or "SMTP")
        return f"{listener} session {clean(get('session'))} from {clean(get('client'))}"
    if event == "auth_success":
        return f"logged in as {clean(get('user'))}"
    if event == "session_end":
        return f"session {clean(get('session'))} closed"
    if event == "message_accepted":
        size = f", {clean(get('size'))} bytes" if get("size") is not None else ""
        return (
            f"received from {clean(get('sender'))} for {_list(get('recipients'))}{size}:"
            f" answered {clean(get('code'))}"
        )
    if event in ("message_rejected", "message_tempfailed"):
        return f"refused, answered {clean(get('code'))}: {clean(get('reason'))}"
    if event == "message_transformed":
        return f"filter verdict: {clean(get('reason'))}"
    if event == "group_expanded":
        return f"group {clean(get('group'))} expanded to {_list(get('recipients'))}"
    if event == "delivered":
        what = "bounce delivered" if get("sender") == "" else "delivered"
        return f"{what} to {_list(get('recipients'))}{hop}{attempt}: {reply}"
    if event == "deferred":
        return f"deferred for {_list(get('recipients'))}{hop}{attempt}: {reply}"
    if event == "delivery_failed":
        return f"refused for {_list(get('recipients'))}{hop}{attempt}: {reply}"
    if event == "retry_scheduled":
        return f"spooled, retry {clean(get('attempt'))} planned for {_list(get('recipients'))}"
    if event == "dequeued":
        return f"taken from the spool{attempt}"
    if event == "bounced":
        return (
            f"bounce sent to {clean(get('sender'))} for {_list(get('recipients'))}:"
            f" {clean(get('reason'))} (bounce {clean(get('dsn_queue_id'))})"
        )
    detail = clean(get("reason") or "")
    return f"{clean(event)}{': ' + detail if detail else ''}"


def outcome(records: list[Record]) -> str:
    """The final state of each recipient, from the last delivery event that names it."""
    state: dict[str, str] = {}
    refused = None
    for record in records:
        event = record.get("event")
        if event in ("message_rejected", "message_tempfailed"):
            refused = f"refused ({clean(record.get('code'))}), nothing delivered"
        if record.get("sender") == "" and event == "delivered":
            continue  # the bounce's own delivery, to the sender
        verb = {
            "delivered": "delivered",
            "deferred": "still queued",
            "delivery_failed": "failed",
            "bounced": "bounced",
        }.get(str(event))
        if verb is None:
            continue
        for recipient in record.get("recipients") or []:
            if isinstance(recipient, str):
                state[recipient] = verb
    if not state:
        return refused or "no delivery recorded"
    groups: dict[str, list[str]] = {}
    for recipient, verb in state.items():
        groups.setdefault(verb, []).append(clean(recipient))
    return "; ".join(f"{verb}: {', '.join(names)}" for verb, names in groups.items())


def story(message_id: str, records: list[Record]) -> Iterator[str]:
    """The trace as lines for people: a title, one line per event, the outcome."""
    yield f"message {clean(message_id)}: {len(records)} event(s)"
    for record in records:
        utc, local = times(record)
        event = fit(clean(record.get("event")), EVENT_WIDTH)
        yield f"  {utc} UTC  {local} local  {event}  {describe(record)}"
    yield f"outcome: {outcome(records)}"
