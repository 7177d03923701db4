"""``logs trace``: one message's story across days, linked by message id, queue id, session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.events.index import update
from gateway.events.table import EVENT_WIDTH
from gateway.events.trace import outcome, story, trace
from gateway.events.writer import EventLog

T0 = datetime(2026, 11, 29, 23, 50, tzinfo=UTC)
MID = "<story-1@mof.gov.vn>"


class Clock:
    def __init__(self) -> None:
        self.moment = T0

    def __call__(self) -> datetime:
        return self.moment


def write(log_dir: Path, events: list[tuple[float, str, dict[str, Any]]]) -> None:
    clock = Clock()
    log = EventLog(log_dir, clock=clock)
    for minutes, event, fields in events:
        clock.moment = T0 + timedelta(minutes=minutes)
        log.emit(event, **fields)
    log.close()


S = {"session": "sess1", "listener": "submission", "client": "10.0.0.9"}
OTHER = {"queue_id": "Q2", "message_id": "<other@mof.gov.vn>"}
IDS = {"queue_id": "Q1", "message_id": MID}
STORY = [
    (0, "session_start", S),
    (0.1, "auth_success", {**S, "user": "an@mof.gov.vn"}),
    (0.2, "group_expanded", {"session": "sess1", **IDS, "group": "all@mof.gov.vn",
                             "recipients": ["b@mof.gov.vn", "c@x.vn"]}),
    (0.3, "message_transformed", {"session": "sess1", **IDS, "reason": "[freemail] log"}),
    (0.4, "delivered", {**IDS, "sender": "an@mof.gov.vn", "recipients": ["b@mof.gov.vn"],
                        "next_hop": "lmtp", "code": 250}),
    (0.4, "deferred", {**IDS, "sender": "an@mof.gov.vn", "recipients": ["c@x.vn"],
                       "next_hop": "smtp://relay", "code": 451, "reason": "451 busy"}),
    (0.5, "message_accepted", {**S, **IDS, "sender": "an@mof.gov.vn", "code": 250,
                               "recipients": ["all@mof.gov.vn"], "chain": "zz"}),
    (0.6, "retry_scheduled", {**IDS, "recipients": ["c@x.vn"], "attempt": 1}),
    (1, "message_accepted", {**S, **OTHER, "sender": "an@mof.gov.vn", "code": 250}),
    (2, "session_end", S),
    (20, "dequeued", {"queue_id": "Q1", "attempt": 1}),  # next day
    (20.1, "delivery_failed", {**IDS, "sender": "an@mof.gov.vn", "recipients": ["c@x.vn"],
                               "next_hop": "smtp://relay", "code": 550,
                               "reason": "550 no such user", "attempt": 2}),
    (20.2, "bounced", {"queue_id": "Q1", "sender": "an@mof.gov.vn", "recipients": ["c@x.vn"],
                       "reason": "c@x.vn: 550 no such user", "dsn_queue_id": "D1"}),
    (20.3, "delivered", {"queue_id": "D1", "sender": "", "recipients": ["an@mof.gov.vn"],
                         "code": 250}),
    (21, "delivered", {**OTHER, "sender": "an@mof.gov.vn", "recipients": ["z@x.vn"]}),
]  # fmt: skip
WANTED = [e for e in STORY if "<other" not in str(e[2].get("message_id"))]


@pytest.mark.parametrize("indexed", [False, True])
def test_trace_tells_the_whole_story_across_days(tmp_path: Path, indexed: bool) -> None:
    write(tmp_path, STORY)
    if indexed:
        update(tmp_path, workers=1)
    found = trace(tmp_path, MID.strip("<>"))
    assert [r["event"] for r in found] == [e[1] for e in WANTED]
    assert {r["ts"][:10] for r in found} == {"2026-11-29", "2026-11-30"}
    assert outcome(found) == "delivered: b@mof.gov.vn; bounced: c@x.vn"


def test_story_is_readable(tmp_path: Path) -> None:
    write(tmp_path, STORY)
    lines = list(story(MID, trace(tmp_path, MID)))
    assert lines[0] == f"message {MID}: {len(WANTED)} event(s)"
    text = "\n".join(lines)
    for phrase in (
        "submission session sess1 from 10.0.0.9",
        "logged in as an@mof.gov.vn",
        "group all@mof.gov.vn expanded to b@mof.gov.vn, c@x.vn",
        "filter verdict: [freemail] log",
        "deferred for c@x.vn via smtp://relay: 451 busy",
        "received from an@mof.gov.vn for all@mof.gov.vn: answered 250",
        "refused for c@x.vn via smtp://relay (attempt 2): 550 no such user",
        "bounce sent to an@mof.gov.vn for c@x.vn",
        "bounce delivered to an@mof.gov.vn",
    ):
        assert phrase in text, phrase
    assert lines[-1] == "outcome: delivered: b@mof.gov.vn; bounced: c@x.vn"
    assert len({line.index(" local  ") for line in lines[1:-1]}) == 1
    column = lines[1].index(" local  ") + len(" local  ") + EVENT_WIDTH + 2
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in lines[1:-1])


def test_refused_message_and_unknown_id(tmp_path: Path) -> None:
    write(tmp_path, [(0, "message_rejected", {**IDS, "code": 550, "reason": "[classification]"})])
    found = trace(tmp_path, MID)
    assert outcome(found) == "refused (550), nothing delivered"
    assert trace(tmp_path, "<nobody@x>") == []
