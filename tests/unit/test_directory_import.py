"""importer.py: the MOST Appendix 03 form from CSV, all rows or none (MIC 5.3/5.4 names)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.directory.addresses import candidates
from gateway.directory.importer import (
    STATUS_CREATED,
    STATUS_NOT_CREATED,
    STATUS_WOULD_CREATE,
    import_csv,
)
from gateway.directory.mailboxes import Directory, DirectoryError, Registration

DATA = Path(__file__).resolve().parent.parent / "data"
DOMAIN = "most.gov.vn"


@pytest.fixture
def directory(tmp_path: Path):
    d = Directory(tmp_path / "d.sqlite3")
    d.add_unit("CNTT", "Trung tâm Công nghệ thông tin")
    d.add_unit("VP", "Văn phòng Bộ")
    d.add_unit("TCCB", "Vụ Tổ chức cán bộ")
    yield d
    d.close()


def write(tmp_path: Path, text: str, name: str = "form.csv", bom: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def by_row(report) -> dict[int, object]:
    return {r.row: r for r in report.rows}


def test_import_creates_every_row_with_naming_rule_and_passwords(directory: Directory) -> None:
    report = import_csv(directory, DATA / "registrations.csv", DOMAIN)

    assert report.ok, report.errors
    rows = by_row(report)
    assert [r.row for r in report.rows] == list(range(2, 10))
    assert all(r.status == STATUS_CREATED for r in report.rows)
    # Two people named Đỗ Văn Bê: the first gets the plain form, the second the next
    # candidate of MIC 5.4 (a reordering, or dvbe.<unit>).
    assert rows[2].address == "dvbe@most.gov.vn"
    second = rows[3].address
    expected = next(c for c in candidates("Đỗ Văn Bê", "VP") if c != "dvbe")
    assert second == f"{expected}@{DOMAIN}"
    assert rows[4].address == "nttha@most.gov.vn"
    assert rows[5].address == "tqtuan@most.gov.vn"
    assert rows[6].address == "anhlt@most.gov.vn"  # existing mailbox kept as is
    assert rows[7].address == "pddong@most.gov.vn"
    assert rows[8].address == "cntt@most.gov.vn"  # unit mailbox: the unit symbol (MIC 5.1)
    assert rows[9].address == "hvon@most.gov.vn"

    bê = directory.require("dvbe@most.gov.vn")
    assert (bê.full_name, bê.unit, bê.mobile, bê.backup_mailbox, bê.contract_months) == (
        "Đỗ Văn Bê",
        "CNTT",
        "0912 345 678",
        "dvbe.nha@gmail.com",
        36,
    )
    assert directory.require(second).unit == "VP"  # given by the unit's name
    assert directory.require("nttha@most.gov.vn").unit == "CNTT"
    assert directory.require("nttha@most.gov.vn").rank == "director"
    assert directory.require("tqtuan@most.gov.vn").rank == "director"  # case-insensitive
    assert directory.require("anhlt@most.gov.vn").unit == "CNTT"
    assert directory.require("cntt@most.gov.vn").kind == "unit"
    assert directory.require("hvon@most.gov.vn").unit is None

    # One generated password per mailbox, returned once, valid, "must change" set.
    assert set(report.passwords) == set(report.created) == {r.address for r in report.rows}
    for address, password in report.passwords.items():
        assert directory.require(address).must_change
        assert directory.authenticate(address, password) is not None
    # Passwords are printed by format() but never appear in repr() (which may get logged).
    assert report.passwords["dvbe@most.gov.vn"] in report.format()
    assert report.passwords["dvbe@most.gov.vn"] not in repr(report)
    assert report.passwords["dvbe@most.gov.vn"] not in report.format(show_passwords=False)


def test_vietnamese_headings_bom_and_multiline_cell(directory: Directory) -> None:
    report = import_csv(directory, DATA / "registrations_vi.csv", DOMAIN)

    assert report.ok, report.errors
    # The quoted address spans two lines of the file but is one spreadsheet row.
    assert [r.row for r in report.rows] == [2, 3, 4]
    first, second, third = report.rows
    assert first.address == "dvbe@most.gov.vn"
    assert second.address not in (None, "dvbe@most.gov.vn")
    assert (
        second.address
        == f"{next(c for c in candidates('Đỗ Văn Bê', 'CNTT') if c != 'dvbe')}@{DOMAIN}"
    )
    assert third.address == "lanvt@most.gov.vn"
    mailbox = directory.require("dvbe@most.gov.vn")
    assert mailbox.unit_address == "Tầng 5,\n113 Trần Duy Hưng, Hà Nội"
    assert mailbox.position == "Chuyên viên"
    assert mailbox.backup_mailbox == "dvbe.nha@gmail.com"
    assert directory.require("lanvt@most.gov.vn").unit == "VP"


def test_suggestions_skip_addresses_already_in_the_directory(directory: Directory) -> None:
    directory.add(Registration("dvbe@most.gov.vn", "Đỗ Văn Bê", unit="TCCB"), None)
    path = write(directory.path.parent, "Họ và tên,Đơn vị\nĐỗ Văn Bê,CNTT\n")

    report = import_csv(directory, path, DOMAIN)

    assert report.ok, report.errors
    assert report.rows[0].address not in (None, "dvbe@most.gov.vn")


def test_an_existing_mailbox_later_in_the_file_is_not_proposed_earlier(
    directory: Directory,
) -> None:
    path = write(
        directory.path.parent,
        "full_name,unit,existing_mailbox\nĐỗ Văn Bê,CNTT,\nĐỗ Văn Bê,VP,dvbe@most.gov.vn\n",
    )

    report = import_csv(directory, path, DOMAIN)

    assert report.ok, report.errors
    assert report.rows[0].address != "dvbe@most.gov.vn"
    assert report.rows[1].address == "dvbe@most.gov.vn"


def test_any_invalid_row_changes_nothing_and_every_bad_row_is_reported(
    directory: Directory,
) -> None:
    report = import_csv(directory, DATA / "registrations_invalid.csv", DOMAIN)

    assert not report.ok
    assert directory.list() == []
    assert report.created == [] and report.passwords == {}
    bad = {int(e.split(":", 1)[0].removeprefix("row ")): e for e in report.errors}
    assert sorted(bad) == [3, 4, 5, 6, 8, 9]
    assert "unknown unit 'KHTC'" in bad[3]
    assert "backup mailbox 'mai@@gmail.com'" in bad[4]
    assert "contract of 6 months" in bad[5] and "MIC 6.3" in bad[5]
    assert "same person as row 2" in bad[6]  # same person_id
    assert "same person as row 7" in bad[8]  # same folded name, unit and mobile
    assert "not on most.gov.vn" in bad[9]
    rows = by_row(report)
    assert rows[2].status == rows[7].status == rows[10].status == STATUS_NOT_CREATED
    assert rows[3].status.startswith("error: unknown unit")
    assert rows[2].address == "dvbe@most.gov.vn"  # what it would have been
    assert "6 error(s); nothing changed" in report.format()


def test_a_row_clashing_with_the_directory_rejects_the_file(directory: Directory) -> None:
    directory.add(
        Registration("old@most.gov.vn", "Đỗ Văn Bê", unit="CNTT", person_id="001090000001"),
        None,
    )

    report = import_csv(directory, DATA / "registrations.csv", DOMAIN)

    assert report.errors == (
        "row 2: person 001090000001 already has old@most.gov.vn"
        " (one personal mailbox per person, MOST 12.3)",
    )
    assert [m.address for m in directory.list()] == ["old@most.gov.vn"]


def test_dry_run_writes_nothing(directory: Directory) -> None:
    report = import_csv(directory, DATA / "registrations.csv", DOMAIN, dry_run=True)

    assert report.ok and report.dry_run
    assert directory.list() == []
    assert {r.status for r in report.rows} == {STATUS_WOULD_CREATE}
    assert report.passwords == {} and report.created == []
    assert by_row(report)[2].address == "dvbe@most.gov.vn"
    assert "dry run: 8 mailbox(es) would be created" in report.format()
    # The real run proposes the same addresses.
    real = import_csv(directory, DATA / "registrations.csv", DOMAIN)
    assert [r.address for r in real.rows] == [r.address for r in report.rows]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("full_name,unit,colour\n", "unknown column 'colour'"),
        ("unit,mobile\n", "no full_name"),
        ("full_name,Họ và tên\n", "given twice"),
    ],
)
def test_bad_header_is_reported_as_row_1(
    directory: Directory, tmp_path: Path, header: str, reason: str
) -> None:
    report = import_csv(directory, write(tmp_path, header + "Đỗ Văn Bê,CNTT\n"), DOMAIN)

    assert len(report.errors) == 1
    assert report.errors[0].startswith("row 1: ") and reason in report.errors[0]
    assert directory.list() == []


def test_not_utf8_and_missing_file_are_reported(directory: Directory, tmp_path: Path) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes("full_name\nĐỗ Văn Bê\n".encode("utf-16"))
    assert "not UTF-8" in import_csv(directory, latin, DOMAIN).errors[0]
    assert not import_csv(directory, tmp_path / "missing.csv", DOMAIN).ok
    assert not import_csv(directory, write(tmp_path, ""), DOMAIN).ok


def test_row_level_checks(directory: Directory, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "full_name,unit,kind,contract_months,existing_mailbox\n"
        ",CNTT,,,\n"  # 2: no name
        "Lê Văn A,CNTT,,twelve,\n"  # 3: not a number
        "Nhóm CNTT,CNTT,group,,\n"  # 4: a group needs its address
        "Trung tâm,CNTT,unit,,\n"  # 5: fine
        "Trung tâm 2,CNTT,unit,,\n"  # 6: second unit mailbox of CNTT
        "Lê Văn B,CNTT,robot,,\n"  # 7: unknown kind
        "Lê Văn C,CNTT,,,not-an-address\n"  # 8
        "Lê Văn D,CNTT,,,x@most.gov.vn,extra\n"  # 9: extra cell
        "Lê Văn E,CNTT,,,x@most.gov.vn\n",  # 10: address also on row 9
        bom=True,
    )

    report = import_csv(directory, path, DOMAIN)

    bad = {int(e.split(":", 1)[0].removeprefix("row ")): e for e in report.errors}
    assert sorted(bad) == [2, 3, 4, 6, 7, 8, 9, 10]
    assert "full name is empty" in bad[2]
    assert "'twelve' is not a whole number" in bad[3]
    assert "group's address" in bad[4]
    assert "already has a unit mailbox on row 5" in bad[6]
    assert "kind must be one of" in bad[7]
    assert "'not-an-address'" in bad[8]
    assert "more cells than the header" in bad[9]
    assert "also on row 9" in bad[10]
    assert directory.list() == []


def test_blank_rows_are_skipped_but_keep_numbering(directory: Directory, tmp_path: Path) -> None:
    path = write(tmp_path, "full_name,unit\nĐỗ Văn Bê,CNTT\n\n,,\nLê Văn Tám,NOPE\n")

    report = import_csv(directory, path, DOMAIN)

    assert report.errors == ("row 5: unknown unit 'NOPE' (add it with: mailgate unit add)",)


def test_bad_domain_is_refused(directory: Directory) -> None:
    with pytest.raises(DirectoryError):
        import_csv(directory, DATA / "registrations.csv", "not a domain")


def test_race_after_the_check_creates_nothing(
    directory: Directory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process takes a planned address between the check and the write: the one
    transaction fails whole, so the file can simply be imported again."""
    original = directory.add_many

    def racing_add_many(items, must_change=True):
        third = items[2][0]
        original([(Registration(third.address, "Người khác"), None)])
        return original(items, must_change=must_change)

    monkeypatch.setattr(directory, "add_many", racing_add_many)

    report = import_csv(directory, DATA / "registrations.csv", DOMAIN)

    assert not report.ok
    assert {r.status for r in report.rows} == {STATUS_NOT_CREATED}
    assert report.created == []
    assert "changed since the check" in report.errors[0]
    assert len(directory.list()) == 1, "only the other process's mailbox exists"
