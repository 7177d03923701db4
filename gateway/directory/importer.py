"""Bulk import of the registration form of MOST Appendix 03 from CSV.

Units send the TTCNTT a list of people to be given mailboxes (MOST 13.2.a, form in
Appendix 03). The whole file is checked first, against the directory and against itself,
and nothing is written unless every row is valid: a half-imported list is worse than none,
because the rerun would then trip over the rows that did get in.

Addresses follow the naming rule (MIC 5.1, 5.3, 5.4) through
:func:`gateway.directory.addresses.suggest`; an address proposed for an earlier row counts
as taken for the later ones, so two people named ``Đỗ Văn Bê`` get ``dvbe`` and a
different form.

The mailboxes are then created in one transaction (``Directory.add_many``): if another
process took an address or registered the same person since the check, nothing is created
and the report says so.
"""

from __future__ import annotations

import csv
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.directory.addresses import fold_vietnamese, suggest, unit_symbol
from gateway.directory.mailboxes import (
    KINDS,
    Directory,
    DirectoryError,
    Registration,
    check_address,
)
from gateway.directory.passwords import generate_password

# Canonical column -> accepted headings, compared after _heading_key(). The Vietnamese
# ones are those of the form in MOST Appendix 03 and their short forms.
COLUMNS: dict[str, tuple[str, ...]] = {
    "full_name": ("full name", "họ và tên", "họ và tên người sử dụng"),
    "unit": ("unit", "đơn vị", "đơn vị công tác", "phòng ban/đơn vị", "phòng ban/đơn vị công tác"),
    "position": ("position", "chức vụ"),
    "phone": ("phone", "điện thoại"),
    "mobile": ("mobile", "di động"),
    "unit_address": ("unit address", "địa chỉ đơn vị"),
    "existing_mailbox": ("existing mailbox", "hộp thư công vụ hiện có"),
    "backup_mailbox": ("backup mailbox", "hộp thư dự phòng", "hộp thư điện tử dự phòng"),
    "kind": ("kind",),
    "rank": ("rank",),
    "person_id": ("person id",),
    "contract_months": ("contract months",),
}
# The form's ordinal column ("TT"): carried by spreadsheets, meaningless here.
IGNORED_COLUMNS = ("tt", "stt", "no", "#")
# Appendix 03 names the domain in this heading ("... có tên miền most.gov.vn hiện đang sử dụng").
_EXISTING_PREFIX = "hộp thư điện tử có tên miền"
_EXISTING_SUFFIX = "hiện đang sử dụng"

STATUS_CREATED = "created"
STATUS_WOULD_CREATE = "would create"
STATUS_NOT_CREATED = "not created"


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One data row's outcome. ``row`` is the spreadsheet row number (header = 1)."""

    row: int
    full_name: str
    address: str | None
    status: str
    # The initial password, to be printed once and handed over; kept out of repr() so a
    # stray log line of the report cannot leak it.
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What ``import_csv`` did or would do; ``errors`` are "row N: reason" lines."""

    path: str
    domain: str
    dry_run: bool
    rows: tuple[ImportRow, ...]
    errors: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def created(self) -> list[str]:
        """Addresses actually created (non-empty even when not ``ok`` after a race)."""
        return [r.address for r in self.rows if r.status == STATUS_CREATED and r.address]

    @property
    def passwords(self) -> dict[str, str]:
        """Initial passwords by address, for the caller to show once (never to log)."""
        return {r.address: r.password for r in self.rows if r.address and r.password}

    def format(self, show_passwords: bool = True) -> str:
        """A plain table for the operator, the errors, and one summary line."""
        header = ["row", "full name", "address", "status"]
        show_passwords = show_passwords and bool(self.passwords)
        if show_passwords:
            header.append("initial password")
        table = [header]
        for r in self.rows:
            status = "error (below)" if r.status.startswith("error") else r.status
            line = [str(r.row), r.full_name, r.address or "-", status]
            if show_passwords:
                line.append(r.password or "")
            table.append(line)
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
               for line in table]  # fmt: skip
        out.extend(self.errors)
        if self.created:
            out.append(
                f"{len(self.created)} mailbox(es) created; the initial passwords are shown"
                " only now and must be changed at first login (MOST 15.2)"
            )
        elif self.errors:
            out.append(f"{len(self.errors)} error(s); nothing changed")
        elif self.dry_run:
            out.append(f"dry run: {len(self.rows)} mailbox(es) would be created")
        else:
            out.append("no rows to import")
        return "\n".join(out)


@dataclass(slots=True)
class _Draft:
    row: int
    values: dict[str, str]
    problems: list[str] = field(default_factory=list)
    unit: str | None = None
    address: str | None = None
    form: Registration | None = None


def import_csv(
    directory: Directory, path: Path, domain: str, *, dry_run: bool = False
) -> ImportReport:
    """Create a mailbox for every row of ``path``, all rows valid or none created.

    Each mailbox gets a generated initial password with "must change" set (MOST 15.2,
    17.4). ``domain`` is the official domain the addresses are made in.
    """
    domain = domain.strip().lower()
    try:
        check_address(f"postmaster@{domain}", "domain")
    except DirectoryError:
        raise DirectoryError(f"domain {domain!r} is not a domain name") from None

    def report(rows: list[ImportRow], errors: list[str]) -> ImportReport:
        return ImportReport(str(path), domain, dry_run, tuple(rows), tuple(errors))

    try:
        drafts = _read(path)
    except _FileProblem as exc:
        return report([], [str(exc)])

    _plan(directory, drafts, domain)

    errors = [f"row {d.row}: {'; '.join(d.problems)}" for d in drafts if d.problems]
    if errors or dry_run:
        rows = [
            ImportRow(
                d.row,
                d.values.get("full_name", ""),
                d.address,
                f"error: {'; '.join(d.problems)}"
                if d.problems
                else (STATUS_NOT_CREATED if errors else STATUS_WOULD_CREATE),
            )
            for d in drafts
        ]
        return report(rows, errors)

    passwords: list[str | None] = []
    for d in drafts:
        assert d.form is not None and d.address is not None
        passwords.append(None if d.form.kind == "group" else generate_password(d.address))
    try:
        directory.add_many(
            [(d.form, pw) for d, pw in zip(drafts, passwords, strict=True) if d.form],
            must_change=True,
        )
    except DirectoryError as exc:  # a concurrent change since the check: see module doc
        rows = [
            ImportRow(d.row, d.values.get("full_name", ""), d.address, STATUS_NOT_CREATED)
            for d in drafts
        ]
        return report(rows, [f"changed since the check: {exc}"])
    rows = [
        ImportRow(d.row, d.form.full_name, d.address, STATUS_CREATED, pw)
        for d, pw in zip(drafts, passwords, strict=True)
        if d.form
    ]
    return report(rows, [])


class _FileProblem(Exception):
    """The file as a whole cannot be imported (encoding, header)."""


def _heading_key(heading: str) -> str:
    """Headings compared case- and spacing-insensitively, "(nếu có)" / "(if any)" dropped."""
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFC", heading).casefold())
    text = text.replace("_", " ").replace("-", " ").strip()
    if text.endswith(")") and "(" in text:
        text = text[: text.rindex("(")]
    text = " ".join(text.split())
    return text.replace(" /", "/").replace("/ ", "/")


_HEADINGS = {_heading_key(h): column for column, names in COLUMNS.items() for h in names}


def _column_of(heading: str) -> str | None:
    key = _heading_key(heading)
    if key.startswith(_EXISTING_PREFIX) and key.endswith(_EXISTING_SUFFIX):
        return "existing_mailbox"
    return _HEADINGS.get(key)


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(spreadsheet row number, cells); a quoted cell spanning lines is still one row."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            for number, cells in enumerate(csv.reader(handle), start=1):
                yield number, [unicodedata.normalize("NFC", c).strip() for c in cells]
    except UnicodeDecodeError as exc:
        raise _FileProblem(
            f"{path}: not UTF-8 text at byte {exc.start} (save the form as CSV UTF-8; MIC 13.1)"
        ) from None
    except csv.Error as exc:
        raise _FileProblem(f"{path}: not a CSV file: {exc}") from None
    except OSError as exc:
        raise _FileProblem(f"{path}: {exc.strerror or exc}") from None


def _read(path: Path) -> list[_Draft]:
    """Header mapped to canonical columns; one draft per non-blank data row."""
    records = _records(path)
    first = next(records, None)
    if first is None:
        raise _FileProblem(f"{path}: empty file (row 1 must be the header)")
    columns: list[str | None] = []
    problems: list[str] = []
    for heading in first[1]:
        column = _column_of(heading)
        if column is None and _heading_key(heading) not in IGNORED_COLUMNS and heading:
            problems.append(f"unknown column {heading!r}")
        elif column is not None and column in columns:
            problems.append(f"column {heading!r} given twice")
        columns.append(column)
    if "full_name" not in columns:
        problems.append("no full_name / 'Họ và tên' column")
    if problems:
        accepted = ", ".join(COLUMNS)
        raise _FileProblem(f"row 1: {'; '.join(problems)} (columns: {accepted})")

    drafts = []
    for number, cells in records:
        if not any(cells):
            continue  # a blank spreadsheet row
        draft = _Draft(number, {})
        for column, cell in zip(columns, cells, strict=False):
            if column is not None and cell:
                draft.values[column] = cell
        if any(cells[len(columns) :]):
            draft.problems.append("more cells than the header has columns")
        drafts.append(draft)
    return drafts


def _plan(directory: Directory, drafts: list[_Draft], domain: str) -> None:
    """Resolve units, choose addresses, find in-file duplicates, validate every row."""
    explicit: dict[str, int] = {}  # addresses written in the file -> first row
    for d in drafts:
        given = d.values.get("existing_mailbox")
        if not given:
            continue
        try:
            address = check_address(given, "existing mailbox")
        except DirectoryError as exc:
            d.problems.append(str(exc))
            continue
        if address.rpartition("@")[2] != domain:
            d.problems.append(f"existing mailbox {address} is not on {domain} (MOST 12.2)")
        elif address in explicit:
            d.problems.append(f"existing mailbox {address} is also on row {explicit[address]}")
        else:
            explicit[address] = d.row
            d.address = address

    proposed: set[str] = set(explicit)

    def unavailable(address: str) -> bool:
        return address.lower() in proposed or directory.is_unavailable(address)

    persons: dict[tuple[str, ...], int] = {}
    unit_mailboxes: dict[str, int] = {}
    for d in drafts:
        values = d.values
        name = values.get("full_name", "")
        if not name:
            d.problems.append("full name is empty")
        kind = values.get("kind", "personal").lower()
        if values.get("unit"):
            d.unit = directory.unit_symbol_of(values["unit"])
            if d.unit is None:
                d.problems.append(
                    f"unknown unit {values['unit']!r} (add it with: mailgate unit add)"
                )
        contract: int | None = None
        if values.get("contract_months"):
            try:
                contract = int(values["contract_months"])
            except ValueError:
                d.problems.append(
                    f"contract_months {values['contract_months']!r} is not a whole number"
                )

        if kind == "personal" and name:
            key = _person_key(name, d.unit, values.get("person_id"), values.get("mobile"))
            if key is not None and key in persons:
                d.problems.append(
                    f"same person as row {persons[key]} (one personal mailbox per person,"
                    " MOST 12.3)"
                )
            elif key is not None:
                persons[key] = d.row
        if kind == "unit" and d.unit is not None:
            if d.unit in unit_mailboxes:
                d.problems.append(
                    f"unit {d.unit} already has a unit mailbox on row {unit_mailboxes[d.unit]}"
                    " (one per unit, MOST 12.3)"
                )
            else:
                unit_mailboxes[d.unit] = d.row

        if d.address is None and not d.problems:
            d.address = _propose(name, kind, d.unit, domain, unavailable, d.problems)
            if d.address is not None:
                proposed.add(d.address)
        if d.problems or d.address is None:
            continue
        form = Registration(
            address=d.address,
            full_name=name,
            kind=kind,
            unit=d.unit,
            position=values.get("position"),
            phone=values.get("phone"),
            mobile=values.get("mobile"),
            unit_address=values.get("unit_address"),
            backup_mailbox=values.get("backup_mailbox"),
            person_id=values.get("person_id"),
            rank=values.get("rank", "staff").lower(),
            contract_months=contract,
        )
        try:
            d.form = directory.validate(form, password=None)
        except DirectoryError as exc:
            d.problems.append(str(exc))


def _propose(
    name: str,
    kind: str,
    unit: str | None,
    domain: str,
    unavailable: Callable[[str], bool],
    problems: list[str],
) -> str | None:
    """The address the naming rule gives: unit symbol (MIC 5.1) or personal (5.3, 5.4).

    Kinds it cannot name are left to validate(), except a group, whose address must be
    written in the file (no naming rule covers groups)."""
    try:
        if kind == "personal":
            return f"{suggest(name, domain, unavailable, unit=unit)}@{domain}"
        if kind == "unit" and unit is not None:
            return f"{unit_symbol(unit)}@{domain}"
    except ValueError as exc:
        problems.append(str(exc))
        return None
    if kind == "group":
        problems.append("a group's address must be given in existing_mailbox")
    elif kind == "unit":
        problems.append("a unit mailbox needs a unit")
    else:
        problems.append(f"kind must be one of {', '.join(KINDS)}")
    return None


def _person_key(
    name: str, unit: str | None, person_id: str | None, mobile: str | None
) -> tuple[str, ...] | None:
    """Who a row is, for MOST 12.3 inside one file: the person id, or else (name folded
    without diacritics, unit, mobile digits) when a mobile is given; None if neither."""
    if person_id:
        return ("id", person_id.strip().casefold())
    if not mobile:
        return None
    digits = "".join(c for c in mobile if c.isdigit())
    if mobile.strip().startswith("+84"):
        digits = "0" + digits[2:]
    folded = " ".join(fold_vietnamese(name).casefold().split())
    return ("name", folded, (unit or "").casefold(), digits)
