"""The 6-monthly report of who uses official mailboxes, by unit (MIC 14.6).

Every registered unit gets a row, even one without mailboxes (a unit that uses none is
itself worth reporting), then a "(no unit)" row if some mailboxes belong to no unit, then
the totals. Revoked mailboxes are counted in their own column: they are no longer used,
but their addresses stay reserved (MIC 5.4), so the operator still accounts for them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from gateway.directory.mailboxes import KINDS, STATES, Directory

NO_UNIT = "(no unit)"
TOTAL = "(total)"
UNKNOWN_UNIT = "(unit not registered)"


@dataclass(frozen=True, slots=True)
class UnitRow:
    """Counts for one unit. ``scope`` is "unit", "no-unit" or "total"; ``symbol`` is
    None for the last two. ``by_kind``/``by_state`` have every kind/state, zeros included,
    so JSON consumers see the same keys on every row."""

    scope: str
    symbol: str | None
    name: str
    by_kind: dict[str, int]
    by_state: dict[str, int]
    total: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(scope: str, symbol: str | None, name: str, kinds: Counter, states: Counter) -> UnitRow:
    return UnitRow(
        scope=scope,
        symbol=symbol,
        name=name,
        by_kind={kind: kinds[kind] for kind in KINDS},
        by_state={state: states[state] for state in STATES},
        total=sum(kinds.values()),
    )


def units_report(directory: Directory) -> list[UnitRow]:
    """One row per unit (by symbol), "(no unit)" if needed, then the totals."""
    units = directory.units()
    by_folded = {symbol.casefold(): symbol for symbol in units}
    kinds: dict[str | None, Counter] = {symbol: Counter() for symbol in units}
    states: dict[str | None, Counter] = {symbol: Counter() for symbol in units}
    for mailbox in directory.list():
        # Unit symbols compare case-insensitively in the database (COLLATE NOCASE).
        key = by_folded.get(mailbox.unit.casefold(), mailbox.unit) if mailbox.unit else None
        kinds.setdefault(key, Counter())[mailbox.kind] += 1
        states.setdefault(key, Counter())[mailbox.state] += 1

    rows = [
        _row("unit", symbol, units.get(symbol, UNKNOWN_UNIT), kinds[symbol], states[symbol])
        for symbol in sorted((s for s in kinds if s is not None), key=str.casefold)
    ]
    if None in kinds:
        rows.append(_row("no-unit", None, NO_UNIT, kinds[None], states[None]))
    rows.append(_row("total", None, TOTAL, sum(kinds.values(), Counter()),
                     sum(states.values(), Counter())))  # fmt: skip
    return rows


def format_units_report(rows: list[UnitRow]) -> str:
    """A plain aligned table: unit, name, counts by kind, by state, total."""
    header = ["unit", "name", *KINDS, *STATES, "total"]
    table = [header]
    for row in rows:
        table.append(
            [
                row.symbol or "",
                row.name,
                *(str(row.by_kind.get(k, 0)) for k in KINDS),
                *(str(row.by_state.get(s, 0)) for s in STATES),
                str(row.total),
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = []
    for line in table:
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
