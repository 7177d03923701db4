"""The table ``logs search`` prints for people: aligned, one line per event, hostile-proof."""

from __future__ import annotations

import time

import pytest

from gateway.events import table


@pytest.fixture(autouse=True)
def hanoi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Ho_Chi_Minh")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_row_shows_utc_and_local_time_event_parties_code_reason() -> None:
    line = table.row(
        {"ts": "2026-11-25T08:00:00.000000Z", "event": "message_rejected",
         "sender": "an@x.gov.vn", "recipients": ["b@y.vn", "c@y.vn"], "code": 550,
         "reason": "550 5.7.1 Relaying denied [relay]", "chain": "ignored"}
    )  # fmt: skip
    assert line.startswith("2026-11-25 08:00:00  2026-11-25 15:00:00  message_rejected  ")
    longest = table.row({"ts": "2026-11-25T08:00:00Z", "event": "password_change_refused"})
    assert "password_change_refused" in longest  # every name the gateway writes fits
    assert "an@x.gov.vn → b@y.vn, c@y.vn" in line
    assert line.endswith("550   550 5.7.1 Relaying denied [relay]")
    assert "UTC+07:00" in table.header()


def test_columns_line_up_whatever_the_values() -> None:
    rows = [
        table.row({"ts": "2026-11-25T08:00:00Z", "event": "x", "sender": "a@b.vn",
                   "recipients": ["Nguyễn@b.vn"], "code": 250, "reason": "r"}),
        table.row({"ts": "2026-11-25T08:00:00Z", "event": "e" * 40, "sender": "s" * 200,
                   "recipients": [f"r{i}@b.vn" for i in range(9)], "code": 451, "reason": "r"}),
        table.row({"ts": "2026-11-25T08:00:00Z", "event": "x",
                   "sender": "Nguye\u0302\u0303n@b.vn", "code": 250, "reason": "r"}),
        table.header(),
    ]  # fmt: skip
    column = table.TIME_WIDTH * 2 + table.EVENT_WIDTH + table.WHO_WIDTH + 8  # 4 gaps of 2
    for line, code in zip(rows, ("250", "451", "250", "CODE"), strict=True):
        assert table.width(line[: line.rindex(code)]) == column, line
    assert rows[1].count("…") == 2  # event and parties cut
    many = table.row({"ts": "2026-11-25T08:00:00Z", "sender": "a@b.vn",
                      "recipients": [f"r{i}@b.vn" for i in range(9)]})  # fmt: skip
    assert "a@b.vn → r0@b.vn, r1@b.vn, r2@b.vn (+6)" in many


@pytest.mark.parametrize(
    "hostile",
    ["a\nFAKE 2026-11-25 event", "a\rb", "\x1b[2J\x1b[31mred", "\u202egnp.exe", "a\u2028b",
     "x" * 100_000, "\x00", "\ud800"],
)  # fmt: skip
def test_hostile_values_stay_on_one_escaped_line(hostile: str) -> None:
    record = {"ts": hostile, "event": hostile, "sender": hostile, "recipients": [hostile, 5],
              "code": hostile, "reason": hostile, "user": hostile}  # fmt: skip
    line = table.row(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert all(c.isprintable() for c in line)
    assert table.width(line) < 400


def test_no_sender_shows_the_user_or_the_client() -> None:
    assert "user u@x.vn" in table.row({"ts": "2026-11-25T08:00:00Z", "event": "auth_success",
                                       "user": "u@x.vn", "client": "1.2.3.4"})  # fmt: skip
    assert "client 1.2.3.4" in table.row({"ts": "2026-11-25T08:00:00Z", "event": "x",
                                          "client": "1.2.3.4"})  # fmt: skip
    assert "<> → a@x.vn" in table.row({"ts": "2026-11-25T08:00:00Z", "event": "delivered",
                                       "sender": "", "recipients": ["a@x.vn"]})  # fmt: skip
