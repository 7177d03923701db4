"""The directory's CLI words (CONTRACT.md) driven as ``python -m gateway.cli`` subprocesses.

No gateway is started: ``Gateway`` only writes a config and a data folder. Set-up that is
not under test goes straight into the directory file (no password: no argon2 cost); every
command under test runs as its own process, as an operator's script would run it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.directory.mailboxes import Directory, Registration
from gateway.directory.passwords import policy_violation
from tests.integration.harness import DOMAIN, Gateway

GENERATED = re.compile(r"^initial password \(must be changed at first login\): (\S+)$")
RESET = re.compile(r"^new password \(must be changed at first login\): (\S+)$")


def addr(local: str) -> str:
    return f"{local}@{DOMAIN}"


@pytest.fixture
def gw(tmp_path: Path) -> Gateway:
    return Gateway(tmp_path, "maildir:var/mail", "smtp://127.0.0.1:9", mailboxes=())


@contextmanager
def opened(gw: Gateway) -> Iterator[Directory]:
    directory = Directory.for_data_dir(gw.workdir / "var")
    try:
        yield directory
    finally:
        directory.close()


def seed(gw: Gateway, *forms: Registration, units: dict[str, str] | None = None) -> None:
    with opened(gw) as directory:
        for symbol, name in (units or {}).items():
            directory.add_unit(symbol, name)
        for form in forms:
            directory.add(form, None)


def run(gw: Gateway, *args: str) -> list[str]:
    result = gw.cli(*args, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.splitlines()


def refused(gw: Gateway, *args: str) -> str:
    """The one-line reason of a refused command (exit 1, ``mailgate: ...`` on stderr)."""
    result = gw.cli(*args, check=False)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mailgate: ")
    return lines[0].removeprefix("mailgate: ")


def show(gw: Gateway, address: str) -> dict[str, Any]:
    (line,) = run(gw, "mailbox", "show", address, "--json")
    return json.loads(line)


def listed(gw: Gateway, *options: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run(gw, "mailbox", "list", "--json", *options)]


def log_text(gw: Gateway) -> str:
    return "".join(p.read_text(encoding="utf-8") for p in sorted(gw.log_dir.glob("events-*")))


def admin_events(gw: Gateway, secrets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every event so far, each from the CLI; no password anywhere in the log."""
    found = gw.events()
    for event in found:
        assert event["actor"] == "cli", event
        assert "password" not in event
    text = log_text(gw)
    for secret in secrets:
        assert secret not in text
    return found


# -- units -------------------------------------------------------------------------------------


def test_unit_add_and_list(gw: Gateway) -> None:
    assert run(gw, "unit", "add", "VP", "--name", "Văn phòng Bộ") == ["unit VP added"]
    assert run(gw, "unit", "add", "CNTT", "--name", "Cục Công nghệ thông tin") == [
        "unit CNTT added"
    ]
    listing = run(gw, "unit", "list")
    assert [line.split(None, 1) for line in listing] == [
        ["CNTT", "Cục Công nghệ thông tin"],
        ["VP", "Văn phòng Bộ"],
    ]
    assert refused(gw, "unit", "add", "cntt", "--name", "Trùng") == "unit cntt already exists"
    events = admin_events(gw)
    assert [(e["event"], e["unit"], e["reason"]) for e in events] == [
        ("unit_added", "VP", "Văn phòng Bộ"),
        ("unit_added", "CNTT", "Cục Công nghệ thông tin"),
    ]


# -- creating mailboxes --------------------------------------------------------------------


def test_mailbox_add_with_a_generated_password(gw: Gateway) -> None:
    seed(gw, units={"CNTT": "Cục Công nghệ thông tin"})
    out = run(
        gw, "mailbox", "add", addr("dvbe"), "--name", "Đỗ Văn Bê", "--unit", "cntt",
        "--position", "Chuyên viên", "--phone", "024 3943 7001", "--mobile", "0912 345 678",
        "--unit-address", "113 Trần Duy Hưng, Hà Nội", "--backup-mailbox", "dvbe@example.org",
        "--person-id", "001090000001", "--contract-months", "36",
    )  # fmt: skip
    assert out[0] == f"created {addr('dvbe')} (personal)"
    assert len(out) == 2
    generated = GENERATED.match(out[1]).group(1)
    assert policy_violation(generated, addr("dvbe")) is None

    chosen = "Mật-khẩu-2026"
    out = run(gw, "mailbox", "add", addr("ntha"), "--name", "Nguyễn Thị Hà",
              "--rank", "director", "--password", chosen)  # fmt: skip
    assert out == [f"created {addr('ntha')} (personal)"]  # nothing to print: the operator chose

    record = show(gw, addr("dvbe"))
    assert record["state"] == "active"
    assert record["kind"] == "personal"
    assert record["unit"] == "CNTT"
    assert record["must_change"] is True
    assert record["full_name"] == "Đỗ Văn Bê"
    assert record["position"] == "Chuyên viên"
    assert record["mobile"] == "0912 345 678"
    assert record["unit_address"] == "113 Trần Duy Hưng, Hà Nội"
    assert record["backup_mailbox"] == "dvbe@example.org"
    assert record["person_id"] == "001090000001"
    assert record["contract_months"] == 36
    assert record["rank"] == "staff"
    assert record["sends_as"] == [addr("dvbe")]

    must_change = run(gw, "mailbox", "list", "--must-change")
    assert len(must_change) == 1
    assert must_change[0].split()[0] == addr("dvbe")
    assert must_change[0].endswith("must-change")
    everyone = listed(gw)
    assert [(r["address"], r["must_change"], r["rank"]) for r in everyone] == [
        (addr("dvbe"), True, "staff"),
        (addr("ntha"), False, "director"),
    ]

    with opened(gw) as directory:  # the printed passwords are the stored ones
        assert directory.authenticate(addr("dvbe"), generated) is not None
    events = admin_events(gw, secrets=(generated, chosen))
    assert [(e["event"], e["user"], e["kind"]) for e in events] == [
        ("mailbox_added", addr("dvbe"), "personal"),
        ("mailbox_added", addr("ntha"), "personal"),
    ]
    assert events[0]["unit"] == "CNTT"


def test_refusals_are_one_line_and_change_nothing(gw: Gateway) -> None:
    seed(gw, units={"CNTT": "Cục Công nghệ thông tin"})
    add = ("mailbox", "add", addr("dvbe"), "--name", "Đỗ Văn Bê")
    assert refused(gw, *add, "--password", "Ab1!x") == (
        "password refused: at least 8 characters (MOST 17.4)"
    )
    assert refused(gw, *add, "--password", "matkhaumoi2026") == (
        "password refused: at least 3 of: upper case, lower case, digit, special character"
        " (MOST 17.4)"
    )
    assert refused(gw, *add, "--unit", "KHCN") == (
        "unknown unit 'KHCN' (add it with: mailgate unit add)"
    )
    assert refused(gw, *add, "--contract-months", "6") == (
        "contract of 6 months: personal mailboxes need at least 12 (MIC 6.3)"
    )
    assert refused(gw, "mailbox", "add", "dvbe", "--name", "Đỗ Văn Bê") == (
        "address 'dvbe' is not a valid LOCALPART@DOMAIN address"
    )
    assert refused(gw, "mailbox", "show", addr("dvbe")) == f"no mailbox {addr('dvbe')}"
    with opened(gw) as directory:
        assert directory.list() == []
    assert not gw.log_dir.exists() or gw.events() == []  # a refusal records no change


def test_mailbox_add_refuses_a_domain_that_is_not_local(gw: Gateway) -> None:
    reason = refused(gw, "mailbox", "add", "team@gmail.com", "--name", "Nhóm", "--kind", "group")
    assert "example.gov.vn" in reason


def test_passwd(gw: Gateway) -> None:
    seed(gw, Registration(addr("dvbe"), "Đỗ Văn Bê"))
    assert refused(gw, "mailbox", "passwd", addr("dvbe"), "--password", "short1!") == (
        "password refused: at least 8 characters (MOST 17.4)"
    )
    own = "Riêng-Tư-2026"
    assert run(gw, "mailbox", "passwd", addr("dvbe"), "--password", own) == [
        f"password of {addr('dvbe')} changed"
    ]
    with opened(gw) as directory:
        assert directory.get(addr("dvbe")).must_change is False
    reset = "Đặt-Lại-2026"
    run(gw, "mailbox", "passwd", addr("dvbe"), "--password", reset, "--reset")
    with opened(gw) as directory:
        assert directory.get(addr("dvbe")).must_change is True
        assert directory.authenticate(addr("dvbe"), reset) is not None
    events = admin_events(gw, secrets=(own, reset))
    assert [(e["event"], e["user"], e.get("reason")) for e in events] == [
        ("password_changed", addr("dvbe"), None),
        ("password_changed", addr("dvbe"), "reset"),
    ]


# -- show and list -----------------------------------------------------------------------------


def test_show_and_list_json(gw: Gateway) -> None:
    seed(
        gw,
        Registration(addr("an"), "Lê Văn An", unit="CNTT"),
        Registration(addr("binh"), "Phạm Thị Bình", unit="VP"),
        Registration(addr("cntt"), "Hộp thư Cục CNTT", kind="unit", unit="CNTT"),
        Registration(addr("team"), "Nhóm dự án", kind="group"),
        units={"CNTT": "Cục Công nghệ thông tin", "VP": "Văn phòng Bộ"},
    )
    with opened(gw) as directory:
        directory.record_access(addr("an"), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
        directory.add_member(addr("team"), addr("an"))
        directory.add_member(addr("team"), addr("cntt"))
    assert run(gw, "mailbox", "lock", addr("binh"), "--reason", "lộ mật khẩu") == [
        f"{addr('binh')} locked: lộ mật khẩu"
    ]

    an = show(gw, addr("an"))
    assert (an["state"], an["kind"], an["unit"]) == ("active", "personal", "CNTT")
    assert an["last_access"] == "2026-01-02T03:04:05Z"
    assert an["lock_reason"] is None
    binh = show(gw, addr("binh"))
    assert (binh["state"], binh["lock_reason"]) == ("locked", "lộ mật khẩu")
    team = show(gw, addr("team"))
    assert team["kind"] == "group"
    assert team["members"] == [addr("an"), addr("cntt")]
    assert team["expanded"] == [addr("an"), addr("cntt")]
    text = run(gw, "mailbox", "show", addr("cntt"))
    fields = dict(line.split(None, 1) for line in text if len(line.split(None, 1)) == 2)
    assert fields["kind"] == "unit" and fields["state"] == "active" and fields["unit"] == "CNTT"

    rows = {r["address"]: r for r in listed(gw)}
    assert sorted(rows) == [addr("an"), addr("binh"), addr("cntt"), addr("team")]
    for row in rows.values():
        assert {"state", "kind", "unit", "last_access", "lock_reason", "must_change"} <= set(row)
    assert rows[addr("an")]["last_access"] == "2026-01-02T03:04:05Z"
    assert rows[addr("binh")]["lock_reason"] == "lộ mật khẩu"
    assert rows[addr("cntt")]["last_access"] is None
    assert [r["address"] for r in listed(gw, "--unit", "cntt")] == [addr("an"), addr("cntt")]
    assert [r["address"] for r in listed(gw, "--unit", "VP", "--state", "locked")] == [addr("binh")]
    assert len(admin_events(gw, secrets=())) == 1  # the lock


def test_show_json_always_has_last_access(gw: Gateway) -> None:
    seed(gw, Registration(addr("dvbe"), "Đỗ Văn Bê"))
    record = show(gw, addr("dvbe"))
    assert record["last_access"] is None


# -- states ------------------------------------------------------------------------------------


def test_lock_send_only_unlock_revoke(gw: Gateway) -> None:
    seed(gw, Registration(addr("dvbe"), "Đỗ Văn Bê"))
    assert run(gw, "mailbox", "lock", addr("dvbe"), "--reason", "nghi nhiễm virus") == [
        f"{addr('dvbe')} locked: nghi nhiễm virus"
    ]
    with opened(gw) as directory:
        mailbox = directory.get(addr("dvbe"))
        assert (mailbox.state, mailbox.lock_reason) == ("locked", "nghi nhiễm virus")
        assert directory.accepts_mail(addr("dvbe"))  # MIC 7.1: still receives
    assert run(gw, "mailbox", "lock", addr("dvbe"), "--send-only", "--reason", "gửi thư rác") == [
        f"{addr('dvbe')} send-locked: gửi thư rác"
    ]

    out = run(gw, "mailbox", "unlock", addr("dvbe"))
    assert out[0] == f"{addr('dvbe')} active"
    new_password = RESET.match(out[1]).group(1)
    assert policy_violation(new_password, addr("dvbe")) is None
    record = show(gw, addr("dvbe"))
    assert record["state"] == "active"
    assert record["must_change"] is True
    assert record["lock_reason"] is None
    assert record["last_access"]  # unlocking counts as an access
    with opened(gw) as directory:
        assert directory.authenticate(addr("dvbe"), new_password) is not None

    assert run(gw, "mailbox", "revoke", addr("dvbe")) == [
        f"{addr('dvbe')} revoked (the address stays reserved)"
    ]
    with opened(gw) as directory:
        assert directory.get(addr("dvbe")).state == "revoked"
        assert not directory.accepts_mail(addr("dvbe"))
    assert refused(gw, "mailbox", "unlock", addr("dvbe")) == (
        f"{addr('dvbe')} is revoked; revocation is final"
    )
    assert refused(gw, "mailbox", "lock", addr("dvbe"), "--reason", "x") == (
        f"{addr('dvbe')} is revoked; revocation is final"
    )
    assert refused(gw, "mailbox", "add", addr("dvbe"), "--name", "Đỗ Văn Bê", "--kind",
                   "group") == f"{addr('dvbe')} is taken or reserved"  # fmt: skip

    searched = [
        json.loads(line) for line in run(gw, "logs", "search", "--event", "mailbox_state", "--json")
    ]
    assert [(e["old_state"], e["state"], e["reason"]) for e in searched] == [
        ("active", "locked", "nghi nhiễm virus"),
        ("locked", "send-locked", "gửi thư rác"),
        ("send-locked", "active", "unlocked after verification; password reset, must change"
         " (MIC 7.3)"),
        ("active", "revoked", "revoked by operator"),
    ]  # fmt: skip
    assert {e["user"] for e in searched} == {addr("dvbe")}
    assert len(admin_events(gw, secrets=(new_password,))) == 4


def test_retire_records_the_departure(gw: Gateway) -> None:
    seed(gw, Registration(addr("gd"), "Giám Đốc", rank="director"))
    assert run(gw, "mailbox", "retire", addr("gd"), "--on", "2026-06-30") == [
        f"{addr('gd')} leaves on 2026-06-30 (rank director); maintenance applies it"
    ]
    assert show(gw, addr("gd"))["retire_on"] == "2026-06-30"
    assert refused(gw, "mailbox", "retire", addr("gd"), "--on", "30/06/2026") == (
        "date '30/06/2026' is not YYYY-MM-DD"
    )
    events = admin_events(gw)
    assert [(e["event"], e["user"], e["retire_on"], e["rank"]) for e in events] == [
        ("mailbox_retirement", addr("gd"), "2026-06-30", "director")
    ]


def test_maintenance_with_nothing_due(gw: Gateway) -> None:
    seed(gw, Registration(addr("dvbe"), "Đỗ Văn Bê"))
    assert run(gw, "maintenance") == [
        "lifecycle: 0 change(s); log retention: removed 0 day file(s), compressed 0",
        "log index: 1 day(s) indexed, 0 up to date, 0 removed",  # today's file
    ]
    assert [e["event"] for e in admin_events(gw)] == ["log_purged"]


def test_maintenance_applies_the_deadlines(gw: Gateway) -> None:
    today = datetime.now(UTC).date()
    seed(
        gw,
        Registration(addr("nv"), "Nhân Viên", rank="staff"),
        Registration(addr("gd"), "Giám Đốc", rank="director"),
        Registration(addr("cu"), "Người Cũ"),
        Registration(addr("moi"), "Người Mới"),
    )
    with opened(gw) as directory:
        directory.record_access(addr("cu"), datetime.combine(today, time()) - timedelta(days=190))
    run(gw, "mailbox", "retire", addr("nv"), "--on", (today - timedelta(days=200)).isoformat())
    run(gw, "mailbox", "retire", addr("gd"), "--on", (today - timedelta(days=40)).isoformat())

    out = run(gw, "maintenance", "--now", today.isoformat())
    changes = sorted(line for line in out if "->" in line)
    assert [line.split(" (")[0] for line in changes] == [
        f"{addr('cu')}: active -> locked",
        f"{addr('gd')}: active -> send-locked",
        f"{addr('nv')}: active -> revoked",
    ]
    assert out[-2].startswith("lifecycle: 3 change(s)") and out[-1].startswith("log index: ")
    with opened(gw) as directory:
        states = {m.address: m.state for m in directory.list()}
    assert states == {
        addr("cu"): "locked",
        addr("gd"): "send-locked",
        addr("nv"): "revoked",
        addr("moi"): "active",
    }
    searched = [
        json.loads(line) for line in run(gw, "logs", "search", "--event", "mailbox_state", "--json")
    ]
    by_user = {e["user"]: e for e in searched}
    assert set(by_user) == {addr("cu"), addr("gd"), addr("nv")}
    assert all(e["actor"] == "maintenance" for e in searched)
    assert "MOST 13.3" in by_user[addr("cu")]["reason"]
    assert "MIC 6.4.c" in by_user[addr("nv")]["reason"]
    assert by_user[addr("gd")]["state"] == "send-locked"

    again = run(gw, "maintenance", "--now", today.isoformat())
    assert again[-2].startswith("lifecycle: 0 change(s)")
    assert len(gw.events("mailbox_state")) == 3


# -- groups and delegation ---------------------------------------------------------------------


def test_group_membership(gw: Gateway) -> None:
    seed(
        gw,
        Registration(addr("an"), "Lê Văn An"),
        Registration(addr("binh"), "Phạm Thị Bình"),
        Registration(addr("all"), "Toàn Bộ", kind="group"),
        Registration(addr("team"), "Nhóm", kind="group"),
    )
    assert run(gw, "group", "add-member", addr("team"), addr("an")) == [
        f"{addr('an')} added to {addr('team')}"
    ]
    run(gw, "group", "add-member", addr("all"), addr("team"))
    assert refused(gw, "group", "add-member", addr("team"), addr("all")) == (
        f"adding {addr('all')} to {addr('team')} would make a cycle of groups"
    )
    assert refused(gw, "group", "add-member", addr("team"), addr("team")).endswith(
        "would make a cycle of groups"
    )
    assert refused(gw, "group", "add-member", addr("an"), addr("binh")) == (
        f"{addr('an')} is not a group"
    )
    record = show(gw, addr("all"))
    assert (record["members"], record["expanded"]) == ([addr("team")], [addr("an")])
    assert refused(gw, "group", "remove-member", addr("team"), addr("binh")) == (
        f"{addr('binh')} is not a member of {addr('team')}"
    )
    assert run(gw, "group", "remove-member", addr("team"), addr("an")) == [
        f"{addr('an')} removed from {addr('team')}"
    ]
    with opened(gw) as directory:
        assert directory.expand_group(addr("all")) == []
    events = admin_events(gw)
    assert [(e["event"], e["user"], e["member"]) for e in events] == [
        ("group_member_added", addr("team"), addr("an")),
        ("group_member_added", addr("all"), addr("team")),
        ("group_member_removed", addr("team"), addr("an")),
    ]


def test_delegation(gw: Gateway) -> None:
    seed(
        gw,
        Registration(addr("cntt"), "Hộp thư Cục CNTT", kind="unit", unit="CNTT"),
        Registration(addr("an"), "Lê Văn An", unit="CNTT"),
        Registration(addr("binh"), "Phạm Thị Bình", unit="CNTT"),
        Registration(addr("team"), "Nhóm", kind="group"),
        units={"CNTT": "Cục Công nghệ thông tin"},
    )
    assert run(gw, "mailbox", "delegate", addr("cntt"), addr("an")) == [
        f"{addr('an')} may now send as {addr('cntt')}"
    ]
    assert show(gw, addr("an"))["sends_as"] == sorted([addr("an"), addr("cntt")])
    run(gw, "mailbox", "delegate", addr("cntt"), addr("binh"))  # a new head takes over
    assert refused(gw, "mailbox", "delegate", addr("cntt"), addr("team")) == (
        f"{addr('team')} is not an active personal mailbox"
    )
    with opened(gw) as directory:
        assert directory.delegate_of(addr("cntt")) == addr("binh")
        assert directory.sender_identities(addr("an")) == {addr("an")}
    assert run(gw, "mailbox", "undelegate", addr("cntt")) == [f"{addr('cntt')} has no delegate"]
    assert show(gw, addr("cntt"))["delegate"] is None
    events = admin_events(gw)
    assert [(e["event"], e["user"], e.get("delegate"), e.get("previous_delegate"))
            for e in events] == [
        ("delegation_changed", addr("cntt"), addr("an"), None),
        ("delegation_changed", addr("cntt"), addr("binh"), addr("an")),
        ("delegation_changed", addr("cntt"), None, addr("binh")),
    ]  # fmt: skip


# -- addresses ---------------------------------------------------------------------------------


def test_address_suggest(gw: Gateway) -> None:
    """MIC 5.3/5.4: the plain form first, another form once it is taken."""
    seed(gw, units={"CNTT": "Cục Công nghệ thông tin"})
    assert run(gw, "address", "suggest", "Đỗ Văn Bê") == [addr("dvbe")]
    seed(gw, Registration(addr("dvbe"), "Đỗ Văn Bê"))
    (second,) = run(gw, "address", "suggest", "Đỗ Văn Bê", "--unit", "CNTT")
    local, at, domain = second.partition("@")
    assert (at, domain) == ("@", DOMAIN)
    assert local != "dvbe"
    assert re.fullmatch(r"[a-z0-9]+(\.[a-z0-9]+)*", local)
    with opened(gw) as directory:
        assert not directory.is_unavailable(second)
    assert refused(gw, "address", "suggest", "Đỗ Văn Bê", "--unit", "KHCN") == (
        "unknown unit 'KHCN' (add it with: mailgate unit add)"
    )


# -- bulk import and the unit report -------------------------------------------------------------

IMPORT_CSV = (
    "full_name,unit,position,mobile,person_id,contract_months\n"
    "Đỗ Văn Bê,CNTT,Chuyên viên,0912 345 678,001090000001,36\n"
    "Đỗ Văn Bê,VP,Văn thư,0987 654 321,001090000002,\n"
)


def test_directory_import(gw: Gateway, tmp_path: Path) -> None:
    seed(gw, units={"CNTT": "Cục Công nghệ thông tin", "VP": "Văn phòng Bộ"})
    good = tmp_path / "forms.csv"
    good.write_text(IMPORT_CSV, encoding="utf-8")
    bad = tmp_path / "bad.csv"
    bad.write_text(IMPORT_CSV + "Trần Văn Tám,KHCN,,,,6\n", encoding="utf-8")

    result = gw.cli("directory", "import", str(bad), check=False)
    assert result.returncode == 1
    (reason,) = result.stderr.splitlines()
    assert reason.startswith(f"mailgate: {bad}: ")
    assert reason.endswith("nothing changed")
    assert "row 4" in result.stdout and "KHCN" in result.stdout
    dry = run(gw, "directory", "import", str(good), "--dry-run")
    assert dry[-1] == "dry run: 2 mailbox(es) would be created"
    with opened(gw) as directory:
        assert directory.list() == []
    assert not gw.log_dir.exists() or gw.events() == []

    out = run(gw, "directory", "import", str(good))
    with opened(gw) as directory:
        by_unit = {m.unit: m for m in directory.list()}
    assert sorted(by_unit) == ["CNTT", "VP"]
    assert by_unit["CNTT"].address == addr("dvbe")  # the first registrant gets the plain form
    assert by_unit["VP"].address not in (addr("dvbe"), None)
    assert by_unit["VP"].person_id == "001090000002"
    assert all(m.must_change for m in by_unit.values())
    # the table shows each initial password once, in the last column of the mailbox's row
    shown = {}
    for line in out:
        cells = line.split()
        for mailbox in by_unit.values():
            if mailbox.address in cells:
                shown[mailbox.address] = cells[-1]
    assert set(shown) == {m.address for m in by_unit.values()}
    for address, password in shown.items():
        assert policy_violation(password, address) is None
    (event,) = admin_events(gw, secrets=tuple(shown.values()))
    assert event["event"] == "directory_imported"
    assert sorted(event["users"]) == sorted(shown)


def test_report_units(gw: Gateway) -> None:
    seed(
        gw,
        Registration(addr("an"), "Lê Văn An", unit="CNTT"),
        Registration(addr("binh"), "Phạm Thị Bình", unit="CNTT"),
        Registration(addr("cntt"), "Hộp thư", kind="unit", unit="CNTT"),
        Registration(addr("khac"), "Người Khác"),
        units={"CNTT": "Cục Công nghệ thông tin", "VP": "Văn phòng Bộ"},
    )
    with opened(gw) as directory:
        directory.set_state(addr("binh"), "revoked", "nghỉ việc")
    rows = [json.loads(line) for line in run(gw, "report", "units", "--json")]
    by_scope = {(r["scope"], r["symbol"]): r for r in rows}
    cntt = by_scope[("unit", "CNTT")]
    assert cntt["total"] == 3
    assert cntt["by_kind"]["personal"] == 2 and cntt["by_kind"]["unit"] == 1
    assert cntt["by_state"]["revoked"] == 1 and cntt["by_state"]["active"] == 2
    assert by_scope[("unit", "VP")]["total"] == 0  # a unit without mailboxes is reported
    assert by_scope[("no-unit", None)]["total"] == 1
    assert rows[-1]["scope"] == "total" and rows[-1]["total"] == 4


# -- a missing directory database ----------------------------------------------------------


def test_only_the_creating_commands_create_a_missing_directory(gw: Gateway) -> None:
    """A wrong -c or data_dir must not show an empty directory as if it were the real one."""
    database = gw.workdir / "var" / "directory.sqlite3"
    database.unlink()
    for command in (
        ("mailbox", "list"),
        ("mailbox", "show", addr("dvbe")),
        ("unit", "list"),
        ("address", "suggest", "Đỗ Văn Bê"),
        ("report", "units"),
    ):
        reason = refused(gw, *command)
        assert reason == (
            f"no directory database at {database.resolve()} (is gateway.data_dir right?);"
            f" to create an empty one run `mailgate init -c {gw.config_path}`"
        ), command
        assert not database.exists(), command
    maintenance = gw.cli("maintenance", check=False)
    assert maintenance.returncode == 1 and "no directory database" in maintenance.stderr
    assert not database.exists()
    run(gw, "mailbox", "add", addr("dvbe"), "--name", "Đỗ Văn Bê", "--password", "Mậtkhẩu#2026")
    assert database.exists()
    assert [m["address"] for m in listed(gw)] == [addr("dvbe")]


def test_unit_add_and_import_may_start_a_directory(gw: Gateway, tmp_path: Path) -> None:
    database = gw.workdir / "var" / "directory.sqlite3"
    database.unlink()
    run(gw, "unit", "add", "VP", "--name", "Văn phòng")
    assert database.exists()
    database.unlink()
    csv = tmp_path / "forms.csv"
    csv.write_text("full_name\nĐỗ Văn Bê\n", encoding="utf-8")
    result = gw.cli("directory", "import", str(csv), "--dry-run", check=False)
    assert "no directory database" not in result.stderr
    assert database.exists()
