"""``mailgate logs export``: the events of a period for handing over, with their proof.

Authorities ask for "the logs from D1 to D2". JSONL export copies the lines as written
(chain fields included), in file order, so a recipient holding the same days can re-check
the hash chain with the rule in :mod:`gateway.events.chain`. After the events come one
``day_final_hash`` record per day and one ``export_verification`` record: the result of
``logs verify`` over the same days. CSV carries the same records as rows (the trailer rows
have ``event`` = ``day_final_hash`` / ``export_verification``), so one file holds both
and any spreadsheet or CSV reader opens it. A CSV cell that a spreadsheet would run as a
formula (starting with ``= + - @``, tab or CR: a hostile sender address can) gets a
leading ``'`` (OWASP's CSV-injection advice); the JSONL export is the exact copy.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from gateway.events.search import LEADING_FIELDS, day_files, open_day
from gateway.events.verify import Report, verify
from gateway.events.writer import rfc3339

FORMATS = ("jsonl", "csv")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# The contract's fields in the order search prints them, then the chain, then the rest.
CSV_COLUMNS = ("ts", "event", *LEADING_FIELDS, "seq", "chain", "other")


def export(log_dir: Path, since: datetime, until: datetime, fmt: str, out: TextIO) -> Report:
    """Write the events with ``since <= ts <= until`` and the verification; return it."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    report = verify(log_dir, since.date(), until.date())
    trailer = _trailer(report, since, until)
    if fmt == "jsonl":
        for line, _ in _selected(log_dir, since, until):
            out.write(line + "\n")
        for record in trailer:
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        return report
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for _, record in _selected(log_dir, since, until):
        writer.writerow(_row(record))
    for record in trailer:
        writer.writerow(_row(record))
    return report


def _selected(log_dir: Path, since: datetime, until: datetime) -> Iterator[tuple[str, dict]]:
    """Lines whose ``ts`` is in the period, in file order; unreadable lines left out."""
    for day, path in day_files(log_dir):
        if day < since.date() or day > until.date():
            continue
        with open_day(path) as handle:
            try:
                for raw in handle:
                    line = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
                    record = _record(line)
                    if record is None:
                        continue
                    moment = _moment(record.get("ts"))
                    if moment is not None and since <= moment <= until:
                        yield line, record
            except (OSError, EOFError):  # a cut-short .gz: verify reports it
                continue


def _trailer(report: Report, since: datetime, until: datetime) -> list[dict[str, Any]]:
    days = [
        {
            "ts": day.day,
            "event": "day_final_hash",
            "file": day.path.name if day.path else None,
            "events": day.events,
            "final_seq": day.final_seq,
            "final_hash": day.final_hash,
            "reason": "unchained" if day.final_hash is None else f"sha256:{day.final_hash}",
        }
        for day in report.days
    ]
    verdict = "intact" if report.intact else f"{len(report.problems)} problem(s)"
    return [
        *days,
        {
            "ts": rfc3339(datetime.now(UTC)),
            "event": "export_verification",
            "reason": verdict,
            "since": rfc3339(since),
            "until": rfc3339(until),
            "intact": report.intact,
            "problems": [str(p) for p in report.problems],
            "notes": [str(n) for n in report.notes],
        },
    ]


def _row(record: dict[str, Any]) -> list[str]:
    row = []
    for column in CSV_COLUMNS[:-1]:
        value = record.get(column)
        if isinstance(value, list):
            value = " ".join(str(v) for v in value)
        row.append(_cell("" if value is None else str(value)))
    rest = {k: v for k, v in record.items() if k not in CSV_COLUMNS}
    row.append(json.dumps(rest, ensure_ascii=False) if rest else "")
    return row


def _cell(text: str) -> str:
    return "'" + text if text[:1] in _FORMULA_STARTS else text


def _record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
