"""What the hash chain costs: emit per event (the event loop pays it at every stage of
every session) and ``logs verify`` per event.

    .venv/bin/python bench/emit.py [EVENTS]

Writes EVENTS events (default 200,000) over four days into a temporary folder with the
real writer, then verifies them. The cost before the chain was measured by running the
same loop against the writer of commit 4506309 (README, "Tamper evidence").
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.events.verify import verify
from gateway.events.writer import EventLog

FIELDS = {
    "session": "s1a2b3c4d5e6",
    "client": "203.0.113.7",
    "listener": "inbound",
    "sender": "nvan@example.gov.vn",
    "recipients": ["a@example.gov.vn", "b@other.org"],
    "size": 12345,
    "code": 250,
}


def main(events: int) -> None:
    days = 4
    with tempfile.TemporaryDirectory() as folder:
        log_dir = Path(folder)
        start_day = datetime(2026, 11, 1, tzinfo=UTC)
        now = [start_day]
        log = EventLog(log_dir, clock=lambda: now[0], sync_interval=3600)
        spent = 0.0
        for day in range(days):
            now[0] = start_day + timedelta(days=day)
            began = time.perf_counter()
            for number in range(events // days):
                log.emit("delivered", message_id=f"<{day}.{number}@x>", **FIELDS)
            spent += time.perf_counter() - began
        log.close()
        began = time.perf_counter()
        report = verify(log_dir)
        checked = time.perf_counter() - began
    written = events // days * days
    print(f"emit:   {spent / written * 1e6:.1f} us per event ({written} events)")
    print(f"verify: {checked / written * 1e6:.1f} us per event, intact={report.intact}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
