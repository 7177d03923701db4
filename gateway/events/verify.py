"""Checking the event log's hash chains: the library behind ``mailgate logs verify``.

An incident responder must be able to say "these logs are what the gateway wrote" (MIC
Art. 8.2). Each day is checked on its own (every record against its predecessor by
``seq``) and against the day it continues (``prev_day``/``prev_seq``); every finding
names the day file and line. What the chain cannot see alone, the last records of the
newest day being cut off, is why each day's final hash is also printed and anchored off
the box (see :mod:`gateway.events.anchor`).

Findings are *problems* (exit non-zero: edited, deleted, inserted or reordered events,
missing days, broken links) or *notes* (nothing was altered, but say so: torn lines from
a crash, unchained days from before chains or from elsewhere, quiet days).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from gateway.events.chain import GENESIS, Link, iter_links, link_hash
from gateway.events.search import day_files


@dataclass(frozen=True, slots=True)
class Finding:
    day: str
    where: str  # "events-DAY.jsonl line 12", or the day file alone
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


@dataclass(slots=True)
class DayResult:
    day: str
    path: Path | None
    events: int = 0  # chained records
    unchained: int = 0  # records without a chain
    final_seq: int = 0
    final_hash: str | None = None
    problems: int = 0


@dataclass(slots=True)
class Report:
    days: list[DayResult] = field(default_factory=list)
    problems: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        """For ``logs export``: the result in one JSON-able object."""
        return {
            "intact": self.intact,
            "days": [
                {
                    "day": d.day,
                    "file": d.path.name if d.path else None,
                    "events": d.events,
                    "unchained": d.unchained,
                    "final_seq": d.final_seq,
                    "final_hash": d.final_hash,
                }
                for d in self.days
            ],
            "problems": [str(p) for p in self.problems],
            "notes": [str(n) for n in self.notes],
        }


@dataclass(slots=True)
class _Day:
    day: str
    path: Path
    lines: list[Link | tuple[int, bytes]]
    links: list[Link] = field(default_factory=list)
    by_seq: dict[int, list[Link]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.links = [x for x in self.lines if isinstance(x, Link)]
        for link in self.links:
            self.by_seq.setdefault(link.seq, []).append(link)


# (day, day file, result so far) -> (problems, notes): the time-stamp tokens' check.
DayCheck = Callable[[str, Path, DayResult], tuple[list[Finding], list[Finding]]]


def verify(
    log_dir: Path,
    since: date | None = None,
    until: date | None = None,
    extra_check: DayCheck | None = None,
) -> Report:
    """Verify the days from ``since`` to ``until`` (inclusive; None: all).

    ``extra_check`` runs per day once its final hash is known (the time-stamp tokens).
    """
    files = day_files(log_dir)
    oldest = files[0][0] if files else None
    paths = {d.isoformat(): p for d, p in files}
    chosen = [
        (d, p) for d, p in files if (since is None or d >= since) and (until is None or d <= until)
    ]
    report = Report()
    # Six months of days do not fit in memory at once: keep the day being checked and
    # the one its chain continues from (usually the day checked just before).
    loaded: dict[str, _Day] = {}
    shapes: dict[str, tuple[bool, str | None]] = {}  # day -> (chained, its prev_day)

    def load(day: str) -> _Day | None:
        if day not in loaded and day in paths:
            while len(loaded) >= 2:
                del loaded[next(iter(loaded))]
            loaded[day] = _Day(day, paths[day], iter_links(paths[day]))
        return loaded.get(day)

    previous_chained: str | None = None  # the latest checked day that holds a chain
    if chosen and any(d < chosen[0][0] for d, _ in files):
        earlier = [d for d, _ in files if d < chosen[0][0]]
        for d in reversed(earlier):
            record = load(d.isoformat())
            if record is not None and record.links:
                previous_chained = d.isoformat()
                break
    for d, path in chosen:
        day = d.isoformat()
        current = load(day)
        assert current is not None
        result = DayResult(day, path)
        problems: list[Finding] = []
        notes: list[Finding] = []
        entry = _entry(current, previous_chained, oldest, load, problems, notes)
        _check_day(current, entry, result, problems, notes)
        if not current.links and result.unchained and previous_chained is not None:
            problems.append(
                Finding(
                    day,
                    path.name,
                    "unchained although earlier days are chained: its chain fields were"
                    " stripped or the file was replaced",
                )
            )
            notes[:] = [n for n in notes if "unchained" not in n.text]
        if extra_check is not None and result.final_hash is not None:
            more, said = extra_check(day, path, result)
            problems += more
            notes += said
        result.problems = len(problems)
        report.days.append(result)
        report.problems += problems
        report.notes += notes
        if current.links:
            previous_chained = day
        firsts = current.by_seq.get(1)
        shapes[day] = (bool(current.links), firsts[0].prev_day if firsts else None)
    _missing_days(chosen, shapes, report)
    return report


def _entry(
    current: _Day,
    previous_chained: str | None,
    oldest: date | None,
    load: Callable[[str], _Day | None],
    problems: list[Finding],
    notes: list[Finding],
) -> str | None:
    """The chain value the day's seq 1 must follow; None when it cannot be known."""
    name = current.path.name
    firsts = current.by_seq.get(1, [])
    if not current.links:
        return None
    if not firsts:
        return None  # reported as deleted events by _check_day
    first = firsts[0]
    if first.prev_day is None:
        if previous_chained is not None:
            problems.append(
                Finding(
                    current.day,
                    f"{name} line {first.line}",
                    f"starts a new chain although {previous_chained} holds chained events"
                    " (the link to the previous day was removed or rewritten)",
                )
            )
        return GENESIS
    if previous_chained is not None and first.prev_day < previous_chained:
        problems.append(
            Finding(
                current.day,
                f"{name} line {first.line}",
                f"continues from {first.prev_day}, skipping {previous_chained}"
                " (that day was added or rewritten afterwards)",
            )
        )
    source = load(first.prev_day)
    if source is None:
        if oldest is not None and date.fromisoformat(first.prev_day) < oldest:
            notes.append(
                Finding(
                    current.day,
                    name,
                    f"continues from {first.prev_day}, which is no longer kept"
                    " (retention); its first event's link is not checked",
                )
            )
        else:
            problems.append(
                Finding(
                    first.prev_day,
                    f"events-{first.prev_day}.jsonl",
                    f"day missing: {current.day}'s chain continues from it",
                )
            )
        return None
    wanted = source.by_seq.get(first.prev_seq or 0, [])
    if not wanted:
        top = max(source.by_seq, default=0)
        problems.append(
            Finding(
                source.day,
                source.path.name,
                f"events #{top + 1}..#{first.prev_seq} deleted from the end of the day"
                f" ({current.day} continues from #{first.prev_seq})",
            )
        )
        return None
    later = max(source.by_seq) - (first.prev_seq or 0)
    if later > 0:
        notes.append(
            Finding(
                source.day,
                source.path.name,
                f"{later} event(s) after #{first.prev_seq} were written once {current.day}"
                " had begun (a late writer); only the off-box anchors cover them",
            )
        )
    return wanted[0].chain


def _check_day(
    day: _Day, entry: str | None, result: DayResult, problems: list[Finding], notes: list[Finding]
) -> None:
    name = day.path.name
    unchained = [x for x in day.lines if not isinstance(x, Link)]
    records = [(n, raw) for n, raw in unchained if n > 0 and raw.strip()]
    result.events = len(day.links)
    result.unchained = sum(1 for _, raw in records if _is_record(raw))
    if any(n == -1 for n, _ in unchained):
        last = max((x.line for x in day.links), default=0)
        problems.append(
            Finding(day.day, name, f"compressed file cut short after line {last}: events lost")
        )
    if not day.links:
        if records:
            notes.append(
                Finding(
                    day.day,
                    name,
                    f"unchained: {len(records)} line(s) without a hash chain (imported or"
                    " written before chains); they cannot be verified",
                )
            )
        return
    verified: dict[int, bool] = {}
    for link in day.links:
        verified[link.line] = _follows(link, day, entry)
    # Reordering: a seq lower than the one before it in the file.
    for before, after in zip(day.links, day.links[1:], strict=False):
        if after.seq < before.seq:
            problems.append(
                Finding(
                    day.day,
                    f"{name} lines {before.line}-{after.line}",
                    f"events out of order (#{before.seq} before #{after.seq}): swapped or moved",
                )
            )
    # Deletions: holes in the seq numbers.
    seqs = sorted(day.by_seq)
    expected = 1
    for seq in seqs:
        if seq > expected:
            after_line = day.by_seq[seq][0].line
            span = f"#{expected}" if seq - 1 == expected else f"#{expected}..#{seq - 1}"
            problems.append(
                Finding(
                    day.day,
                    f"{name} before line {after_line}",
                    f"event(s) {span} deleted",
                )
            )
        expected = seq + 1
    # Edits and insertions: a record whose hash does not follow its predecessor.
    for link in day.links:
        if verified[link.line]:
            continue
        where = f"{name} line {link.line}"
        twins = day.by_seq[link.seq]
        if len(twins) > 1 and any(verified[t.line] for t in twins):
            problems.append(Finding(day.day, where, f"inserted (a second #{link.seq})"))
        elif link.seq == 1 and entry is None:
            continue  # its link could not be known; already said why
        elif link.seq > 1 and link.seq - 1 not in day.by_seq:
            notes.append(
                Finding(day.day, where, f"#{link.seq} not checked: #{link.seq - 1} is gone")
            )
        else:
            problems.append(
                Finding(
                    day.day,
                    where,
                    f"edited: event #{link.seq} does not match its hash (this line, or the"
                    " one before it in the chain, was changed)",
                )
            )
    # Lines without a chain inside a chained day.
    following = {x.line - 1: verified[x.line] for x in day.links}
    last_line = max(x.line for x in day.links)
    for number, raw in records:
        where = f"{name} line {number}"
        if _is_record(raw):
            problems.append(Finding(day.day, where, "inserted: a record without a hash chain"))
        elif following.get(number, number > last_line):
            notes.append(
                Finding(day.day, where, "torn line (a crash cut this write); the chain goes on")
            )
        else:
            problems.append(Finding(day.day, where, "unreadable line: edited"))
    top = day.by_seq[seqs[-1]][0]
    result.final_seq, result.final_hash = top.seq, top.chain


def _follows(link: Link, day: _Day, entry: str | None) -> bool:
    if link.seq == 1:
        return entry is not None and link_hash(entry, link.body) == link.chain
    return any(
        link_hash(prev.chain, link.body) == link.chain for prev in day.by_seq.get(link.seq - 1, [])
    )


def _is_record(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def _missing_days(
    chosen: list[tuple[date, Path]], shapes: dict[str, tuple[bool, str | None]], report: Report
) -> None:
    """Days without a file between the first and last checked day: a problem when the
    chain passes through them (reported in _entry), a quiet day when it skips them."""
    if len(chosen) < 2:
        return
    have = {d for d, _ in chosen}
    day = chosen[0][0]
    reported = {p.day for p in report.problems}
    while day < chosen[-1][0]:
        day += timedelta(days=1)
        text = day.isoformat()
        if day in have or text in reported:
            continue
        chained, prev_day = next((shapes[d.isoformat()] for d, _ in chosen if d > day))
        if not chained:
            report.notes.append(
                Finding(text, f"events-{text}.jsonl", "no file; the next day is unchained")
            )
        elif prev_day is not None and prev_day < text:
            report.notes.append(
                Finding(text, f"events-{text}.jsonl", "no events that day (the chain skips it)")
            )
        else:
            report.problems.append(
                Finding(
                    text,
                    f"events-{text}.jsonl",
                    "day missing (no file, and no chain vouches for a quiet day)",
                )
            )
