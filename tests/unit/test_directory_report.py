"""report.py: mailboxes by unit, kind and state, the 6-monthly report of MIC 14.6."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.directory.importer import import_csv
from gateway.directory.mailboxes import KINDS, STATES, Directory, Registration
from gateway.directory.report import format_units_report, units_report

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture
def directory(tmp_path: Path):
    d = Directory(tmp_path / "d.sqlite3")
    d.add_unit("CNTT", "Trung tâm Công nghệ thông tin")
    d.add_unit("VP", "Văn phòng Bộ")
    d.add_unit("TCCB", "Vụ Tổ chức cán bộ")
    d.add_unit("KHTC", "Vụ Kế hoạch - Tài chính")
    yield d
    d.close()


def counts(rows) -> dict[str | None, tuple[dict[str, int], dict[str, int], int]]:
    return {(r.symbol or r.name): (r.by_kind, r.by_state, r.total) for r in rows}


def kinds(personal: int = 0, unit: int = 0, group: int = 0) -> dict[str, int]:
    return {"personal": personal, "unit": unit, "group": group}


def states(
    active: int = 0, send_locked: int = 0, locked: int = 0, revoked: int = 0
) -> dict[str, int]:
    return {"active": active, "send-locked": send_locked, "locked": locked, "revoked": revoked}


def test_empty_directory_lists_every_unit_and_zero_totals(directory: Directory) -> None:
    rows = units_report(directory)

    assert [(r.scope, r.symbol) for r in rows] == [
        ("unit", "CNTT"),
        ("unit", "KHTC"),
        ("unit", "TCCB"),
        ("unit", "VP"),
        ("total", None),
    ]
    assert all(r.total == 0 and set(r.by_kind) == set(KINDS) for r in rows)
    assert all(set(r.by_state) == set(STATES) for r in rows)


def test_counts_after_import_and_state_changes(directory: Directory) -> None:
    assert import_csv(directory, DATA / "registrations.csv", "most.gov.vn").ok
    directory.add(Registration("lanhdao@most.gov.vn", "Lãnh đạo Bộ", kind="group"), None)

    got = counts(units_report(directory))
    assert got["CNTT"] == (kinds(personal=3, unit=1), states(active=4), 4)
    assert got["VP"] == (kinds(personal=2), states(active=2), 2)
    assert got["TCCB"] == (kinds(personal=1), states(active=1), 1)
    assert got["KHTC"] == (kinds(), states(), 0)  # a unit without mailboxes still shows
    assert got["(no unit)"] == (kinds(personal=1, group=1), states(active=2), 2)
    assert got["(total)"] == (kinds(personal=7, unit=1, group=1), states(active=9), 9)

    directory.set_state("dvbe@most.gov.vn", "locked", "6 months inactive (MIC 7.2.a)")
    directory.set_state("nttha@most.gov.vn", "send-locked", "retired (MIC 6.4.c)")
    directory.set_state("pddong@most.gov.vn", "revoked", "left (MIC 6.4.c)")
    directory.set_state("hvon@most.gov.vn", "locked", "spam (MIC 7.2)")

    got = counts(units_report(directory))
    assert got["CNTT"] == (kinds(personal=3, unit=1), states(2, 1, 1, 0), 4)
    assert got["VP"] == (kinds(personal=2), states(active=1, revoked=1), 2)
    assert got["(no unit)"] == (kinds(personal=1, group=1), states(active=1, locked=1), 2)
    assert got["(total)"] == (kinds(7, 1, 1), states(5, 1, 2, 1), 9)


def test_rows_are_json_friendly(directory: Directory) -> None:
    directory.add(Registration("dvbe@most.gov.vn", "Đỗ Văn Bê", unit="cntt"), None)

    dumped = [
        json.loads(json.dumps(r.as_dict(), ensure_ascii=False)) for r in units_report(directory)
    ]

    cntt = dumped[0]
    assert cntt == {
        "scope": "unit",
        "symbol": "CNTT",
        "name": "Trung tâm Công nghệ thông tin",
        "by_kind": kinds(personal=1),
        "by_state": states(active=1),
        "total": 1,
    }
    assert dumped[-1]["scope"] == "total" and dumped[-1]["total"] == 1


def test_format_is_an_aligned_table(directory: Directory) -> None:
    assert import_csv(directory, DATA / "registrations.csv", "most.gov.vn").ok
    directory.set_state("pddong@most.gov.vn", "revoked", "left")

    text = format_units_report(units_report(directory))

    lines = text.splitlines()
    assert lines[0].split() == ["unit", "name", *KINDS, *STATES, "total"]
    assert len(lines) == 1 + 4 + 2  # header, 4 units, (no unit), (total)
    vp = next(line for line in lines if line.startswith("VP "))
    assert "Văn phòng Bộ" in vp and vp.split()[-6:] == ["0", "1", "0", "0", "1", "2"]
    assert lines[-1].split()[0] == "(total)" and lines[-1].split()[-1] == "8"
    # Numbers are right-aligned, so every line ends in the same column.
    assert len({len(line) for line in lines}) == 1
