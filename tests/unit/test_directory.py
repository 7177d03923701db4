"""The directory on a real SQLite file (gateway/directory/mailboxes.py, db.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from gateway.directory import db, passwords
from gateway.directory.mailboxes import (
    Directory,
    DirectoryError,
    DirectoryMissing,
    Mailbox,
    Registration,
    now_text,
    parse_stored,
)

DOMAIN = "most.gov.vn"
PASSWORD = "Mậtkhẩu#2026"
OTHER_PASSWORD = "Khác-Hẳn-2027"


@pytest.fixture(autouse=True)
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real argon2id, with the cheapest parameters: the cost is not what these tests check."""
    monkeypatch.setattr(
        passwords, "_HASHER", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Directory]:
    found = Directory(tmp_path / "directory.sqlite3")
    found.add_unit("CNTT", "Cục Công nghệ thông tin")
    found.add_unit("VP", "Văn phòng")
    yield found
    found.close()


def addr(local: str) -> str:
    return f"{local}@{DOMAIN}"


def personal(
    directory: Directory, local: str, password: str | None = None, **fields: object
) -> Mailbox:
    return directory.add(Registration(addr(local), local.title(), **fields), password)


def group(directory: Directory, local: str) -> Mailbox:
    return directory.add(Registration(addr(local), f"Nhóm {local}", kind="group"), None)


def unit_box(directory: Directory, local: str, unit: str) -> Mailbox:
    return directory.add(Registration(addr(local), f"Hộp thư {unit}", kind="unit", unit=unit), None)


# -- creating -----------------------------------------------------------------------------


def test_add_stores_every_registration_field(directory: Directory) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    form = Registration(
        address="Tran.Thi.An@MOST.gov.vn",
        full_name="Trần Thị Ân",
        kind="personal",
        unit="cntt",
        position="Chuyên viên chính",
        phone="024 3943 7010",
        mobile="0912 345 678",
        unit_address="113 Trần Duy Hưng, Hà Nội",
        backup_mailbox="tran.an@example.org",
        person_id="001190012345",
        rank="director",
        contract_months=36,
    )
    created = directory.add(form, PASSWORD)
    stored = directory.get("tran.thi.an@most.gov.vn")
    assert stored == created
    assert stored.address == "tran.thi.an@most.gov.vn"
    assert stored.full_name == "Trần Thị Ân"
    assert stored.kind == "personal"
    assert stored.unit == "CNTT"  # the unit's own symbol
    assert stored.position == "Chuyên viên chính"
    assert stored.phone == "024 3943 7010"
    assert stored.mobile == "0912 345 678"
    assert stored.unit_address == "113 Trần Duy Hưng, Hà Nội"
    assert stored.backup_mailbox == "tran.an@example.org"
    assert stored.person_id == "001190012345"
    assert stored.rank == "director"
    assert stored.contract_months == 36
    assert stored.state == "active"
    assert stored.must_change is True  # MOST 15.2: the initial password is changed at first login
    assert stored.last_access is None
    assert stored.lock_reason is None
    assert stored.retire_on is None
    created_at = parse_stored(stored.created_at)
    assert before <= created_at <= datetime.now(UTC)
    assert stored.state_changed_at == stored.created_at
    assert stored.password_changed_at == stored.created_at
    assert directory.get("TRAN.THI.AN@most.gov.vn") == stored  # lookups ignore case
    assert stored.as_dict()["person_id"] == "001190012345"


def test_add_defaults_and_the_must_change_flag(directory: Directory) -> None:
    plain = personal(directory, "plain")
    assert plain.kind == "personal" and plain.rank == "staff" and plain.unit is None
    assert plain.must_change is False  # no password, nothing to change
    assert plain.password_changed_at is None
    own = personal(directory, "own", PASSWORD.replace("#", "!"))
    assert own.must_change is True
    chosen = directory.add(Registration(addr("chosen"), "Chosen"), PASSWORD, must_change=False)
    assert chosen.must_change is False
    assert directory.authenticate(addr("chosen"), PASSWORD) is not None


def test_kinds(directory: Directory) -> None:
    assert personal(directory, "dvbe").kind == "personal"
    assert unit_box(directory, "cntt", "CNTT").kind == "unit"
    team = directory.add(Registration(addr("team"), "Nhóm", kind="group"), PASSWORD)
    assert team.kind == "group"
    assert team.must_change is False  # groups have no password: the one given is ignored
    assert directory.authenticate(addr("team"), PASSWORD) is None
    with pytest.raises(DirectoryError, match="kind must be one of personal, unit, group"):
        directory.add(Registration(addr("x"), "X", kind="alias"), None)
    with pytest.raises(DirectoryError, match="rank must be one of staff, director"):
        directory.add(Registration(addr("x"), "X", rank="minister"), None)
    with pytest.raises(DirectoryError, match="full name is empty"):
        directory.add(Registration(addr("x"), "   "), None)
    assert directory.get(addr("x")) is None


def test_units(directory: Directory) -> None:
    assert directory.units() == {"CNTT": "Cục Công nghệ thông tin", "VP": "Văn phòng"}
    assert directory.unit_symbol_of("cntt") == "CNTT"
    assert directory.unit_symbol_of("Văn phòng") == "VP"
    assert directory.unit_symbol_of("KHCN") is None
    with pytest.raises(DirectoryError, match="unit cntt already exists"):
        directory.add_unit("cntt", "Trùng")
    with pytest.raises(DirectoryError, match="needs a symbol and a name"):
        directory.add_unit("KHCN", " ")
    assert len(directory.units()) == 2


def test_unit_must_exist(directory: Directory) -> None:
    with pytest.raises(DirectoryError) as refused:
        personal(directory, "dvbe", unit="KHCN")
    assert "unknown unit 'KHCN'" in str(refused.value)
    assert "mailgate unit add" in str(refused.value)
    with pytest.raises(DirectoryError, match="a unit mailbox needs --unit"):
        directory.add(Registration(addr("khcn"), "Hộp thư", kind="unit"), None)
    assert directory.list() == []


def test_one_unit_mailbox_per_unit(directory: Directory) -> None:
    unit_box(directory, "cntt", "CNTT")
    with pytest.raises(DirectoryError) as refused:
        unit_box(directory, "cntt2", "cntt")
    assert str(refused.value) == f"unit CNTT already has {addr('cntt')} (one per unit, MOST 12.3)"
    assert directory.get(addr("cntt2")) is None
    unit_box(directory, "vanphong", "VP")  # another unit: fine
    personal(directory, "dvbe", unit="CNTT")  # personal mailboxes of the unit: fine
    directory.set_state(addr("cntt"), "revoked", "đơn vị sáp nhập")
    assert unit_box(directory, "cntt2", "CNTT").state == "active"


def test_one_personal_mailbox_per_person(directory: Directory) -> None:
    personal(directory, "dvbe", person_id="001190012345")
    with pytest.raises(DirectoryError) as refused:
        personal(directory, "dvbe2", person_id="001190012345")
    assert str(refused.value) == (
        f"person 001190012345 already has {addr('dvbe')} (one personal mailbox per person,"
        " MOST 12.3)"
    )
    assert directory.get(addr("dvbe2")) is None
    personal(directory, "other", person_id="001190099999")
    personal(directory, "noid1")  # without a person id there is nothing to compare
    personal(directory, "noid2")
    directory.set_state(addr("dvbe"), "revoked", "nghỉ việc")
    assert personal(directory, "dvbe2", person_id="001190012345").state == "active"
    with pytest.raises(DirectoryError, match="already has dvbe2@"):
        personal(directory, "dvbe3", person_id="001190012345")


def test_contract_term(directory: Directory) -> None:
    with pytest.raises(DirectoryError) as refused:
        personal(directory, "short", contract_months=11)
    assert str(refused.value) == (
        "contract of 11 months: personal mailboxes need at least 12 (MIC 6.3)"
    )
    assert directory.get(addr("short")) is None
    assert personal(directory, "year", contract_months=12).contract_months == 12
    assert personal(directory, "open").contract_months is None
    box = directory.add(
        Registration(addr("cntt"), "Hộp thư", kind="unit", unit="CNTT", contract_months=3), None
    )
    assert box.contract_months == 3
    for months in (0, -12):
        with pytest.raises(DirectoryError, match="positive number of months"):
            personal(directory, f"bad{-months}", contract_months=months)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "dvbe",
        "dvbe@",
        "@most.gov.vn",
        "dvbe@most",
        "d be@most.gov.vn",
        "Đỗ Văn Bê <dvbe@most.gov.vn>",
        "<dvbe@most.gov.vn>",
        ".dvbe@most.gov.vn",
        "dvbe.@most.gov.vn",
        "d..be@most.gov.vn",
        "a@b@most.gov.vn",
        "a,b@most.gov.vn",
        "dvbe@most.gov.vn, x@most.gov.vn",
        pytest.param(
            "dvbe@.most.gov.vn",
        ),
        pytest.param(
            "dvbe@most..gov.vn",
        ),
        pytest.param(
            "dvbe@most.gov.vn.",
        ),
        pytest.param(
            "dvbe@-most.gov.vn",
        ),
    ],
)
def test_malformed_addresses_are_refused(directory: Directory, bad: str) -> None:
    with pytest.raises(DirectoryError) as refused:
        directory.add(Registration(bad, "Đỗ Văn Bê"), None)
    message = str(refused.value)
    assert message == f"address {bad!r} is not a valid LOCALPART@DOMAIN address"
    assert "\n" not in message
    assert directory.list() == []


def test_malformed_backup_mailbox_is_refused(directory: Directory) -> None:
    with pytest.raises(DirectoryError, match=r"^backup mailbox 'nope' is not a valid"):
        personal(directory, "dvbe", backup_mailbox="nope")
    assert directory.list() == []


def test_a_taken_address_is_refused(directory: Directory) -> None:
    personal(directory, "dvbe")
    with pytest.raises(DirectoryError, match=f"^{addr('dvbe')} is taken or reserved$"):
        directory.add(Registration("DVBE@most.gov.vn", "Another Bê"), None)
    assert [m.full_name for m in directory.list()] == ["Dvbe"]


def test_revoked_address_stays_reserved(directory: Directory) -> None:
    assert directory.is_unavailable(addr("dvbe")) is False
    personal(directory, "dvbe")
    directory.set_state(addr("dvbe"), "revoked", "nghỉ hưu")
    assert directory.is_unavailable(addr("dvbe")) is True
    assert directory.is_unavailable("DVBE@MOST.GOV.VN") is True
    with pytest.raises(DirectoryError, match="is taken or reserved"):
        personal(directory, "dvbe")
    assert directory.require(addr("dvbe")).state == "revoked"


def test_accepts_mail(directory: Directory) -> None:
    """MIC 7.1: a locked mailbox still receives mail; revoked and unknown ones do not."""
    for local, state in [
        ("active", "active"),
        ("locked", "locked"),
        ("sendlocked", "send-locked"),
        ("revoked", "revoked"),
    ]:
        personal(directory, local)
        if state != "active":
            directory.set_state(addr(local), state, "test")
    assert directory.accepts_mail(addr("nobody")) is False
    assert directory.accepts_mail(addr("active")) is True
    assert directory.accepts_mail(addr("locked")) is True
    assert directory.accepts_mail(addr("sendlocked")) is True
    assert directory.accepts_mail(addr("revoked")) is False


def test_set_state_rejects_an_unknown_state_or_mailbox(directory: Directory) -> None:
    personal(directory, "dvbe")
    with pytest.raises(DirectoryError, match="state must be one of"):
        directory.set_state(addr("dvbe"), "frozen", "x")
    with pytest.raises(DirectoryError, match=f"^no mailbox {addr('ghost')}$"):
        directory.set_state(addr("ghost"), "locked", "x")
    moment = datetime(2026, 5, 1, 8, 30, tzinfo=UTC)
    locked = directory.set_state(addr("dvbe"), "locked", "virus", moment)
    assert (locked.state, locked.lock_reason) == ("locked", "virus")
    assert locked.state_changed_at == "2026-05-01T08:30:00Z"
    active = directory.set_state(addr("dvbe"), "active", "ignored")
    assert (active.state, active.lock_reason) == ("active", None)


# -- authentication -----------------------------------------------------------------------


def test_authenticate(directory: Directory) -> None:
    personal(directory, "dvbe", PASSWORD)
    assert directory.get(addr("dvbe")).last_access is None
    assert directory.authenticate(addr("dvbe"), "wrong password") is None
    assert directory.get(addr("dvbe")).last_access is None  # a failure is no access
    before = datetime.now(UTC).replace(microsecond=0)
    mailbox = directory.authenticate(addr("dvbe"), PASSWORD)
    assert mailbox is not None and mailbox.address == addr("dvbe")
    assert mailbox.last_access is not None
    assert before <= parse_stored(mailbox.last_access) <= datetime.now(UTC)
    assert directory.get(addr("dvbe")).last_access == mailbox.last_access
    assert directory.authenticate(" DVBE@most.gov.vn ", PASSWORD) is not None
    assert directory.authenticate(addr("nobody"), PASSWORD) is None
    assert directory.authenticate(addr("dvbe"), "") is None


@pytest.mark.parametrize(
    ("state", "allowed"),
    [("active", True), ("send-locked", True), ("locked", False), ("revoked", False)],
)
def test_authenticate_by_state(directory: Directory, state: str, allowed: bool) -> None:
    """MIC 7.1: locked and revoked cannot log in; send-locked can (it only cannot send)."""
    personal(directory, "dvbe", PASSWORD)
    if state != "active":
        directory.set_state(addr("dvbe"), state, "test")
    mailbox = directory.authenticate(addr("dvbe"), PASSWORD)
    assert (mailbox is not None) is allowed
    assert (directory.get(addr("dvbe")).last_access is not None) is allowed


def test_authenticate_timing_does_not_reveal_unknown_users(
    directory: Directory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.undo()  # the real hasher: the point is its cost
    personal(directory, "dvbe", PASSWORD)

    def cost(login: str) -> float:
        start = time.perf_counter()
        assert directory.authenticate(login, "wrong password") is None
        return time.perf_counter() - start

    known = cost(addr("dvbe"))
    unknown = cost(addr("nobody"))
    assert unknown > known / 4


def test_login_refusal(directory: Directory) -> None:
    for local in ("active", "sendlocked", "locked", "revoked", "bare"):
        personal(directory, local)
    directory.set_state(addr("sendlocked"), "send-locked", "nghỉ việc")
    directory.set_state(addr("locked"), "locked", "lộ mật khẩu")
    directory.set_state(addr("revoked"), "revoked", "không truy cập 12 tháng")
    directory.set_state(addr("bare"), "locked", "")
    assert directory.login_refusal(addr("active")) is None
    assert directory.login_refusal(addr("sendlocked")) is None
    assert directory.login_refusal(addr("nobody")) is None
    assert directory.login_refusal(addr("locked")) == "mailbox locked: lộ mật khẩu"
    assert directory.login_refusal(addr("revoked")) == "mailbox revoked: không truy cập 12 tháng"
    assert directory.login_refusal(addr("bare")) == "mailbox locked: no reason recorded"


def test_set_password(directory: Directory) -> None:
    personal(directory, "dvbe", PASSWORD)
    first = directory.get(addr("dvbe"))
    with pytest.raises(DirectoryError, match=r"^password refused: at least 8 characters"):
        directory.set_password(addr("dvbe"), "Ab1!", must_change=False)
    with pytest.raises(DirectoryError, match=r"^password refused: must not be or contain the acc"):
        directory.set_password(addr("dvbe"), "Dvbe-2026!", must_change=False)
    with pytest.raises(DirectoryError, match=r"^password refused: at least 3 of"):
        directory.set_password(addr("dvbe"), "matkhaumoi", must_change=False)
    assert directory.get(addr("dvbe")) == first  # nothing changed
    assert directory.authenticate(addr("dvbe"), PASSWORD) is not None

    directory.set_password(addr("dvbe"), OTHER_PASSWORD, must_change=False)
    changed = directory.get(addr("dvbe"))
    assert changed.must_change is False
    assert changed.password_changed_at is not None
    assert directory.authenticate(addr("dvbe"), PASSWORD) is None
    assert directory.authenticate(addr("dvbe"), OTHER_PASSWORD) is not None

    directory.set_password(addr("dvbe"), PASSWORD, must_change=True)  # an operator reset
    assert directory.get(addr("dvbe")).must_change is True

    group(directory, "team")
    with pytest.raises(DirectoryError, match="groups have no password"):
        directory.set_password(addr("team"), PASSWORD, must_change=False)
    with pytest.raises(DirectoryError, match=r"^no mailbox"):
        directory.set_password(addr("nobody"), PASSWORD, must_change=False)


def test_unlock(directory: Directory) -> None:
    """MIC 7.3: reactivate, reset the password, "must change"; counts as an access."""
    directory.add(Registration(addr("dvbe"), "Đỗ Văn Bê"), PASSWORD, must_change=False)
    directory.record_access(addr("dvbe"), datetime(2025, 1, 1, tzinfo=UTC))
    directory.set_state(addr("dvbe"), "locked", "no access since 2025-01-01")

    with pytest.raises(DirectoryError, match="password refused"):
        directory.unlock(addr("dvbe"), "weak")
    assert directory.get(addr("dvbe")).state == "locked"

    before = datetime.now(UTC).replace(microsecond=0)
    mailbox = directory.unlock(addr("dvbe"), OTHER_PASSWORD)
    assert mailbox.state == "active"
    assert mailbox.lock_reason is None
    assert mailbox.must_change is True
    assert parse_stored(mailbox.last_access) >= before
    assert directory.authenticate(addr("dvbe"), PASSWORD) is None
    assert directory.authenticate(addr("dvbe"), OTHER_PASSWORD) is not None

    group(directory, "team")
    directory.set_state(addr("team"), "locked", "spam")
    assert directory.unlock(addr("team"), OTHER_PASSWORD).state == "active"

    directory.set_state(addr("dvbe"), "revoked", "nghỉ việc")
    with pytest.raises(DirectoryError, match="revocation is final"):
        directory.unlock(addr("dvbe"), OTHER_PASSWORD)
    assert directory.get(addr("dvbe")).state == "revoked"


def test_record_access_at_a_chosen_moment(directory: Directory) -> None:
    personal(directory, "dvbe")
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    directory.record_access(addr("dvbe"), moment)
    assert directory.get(addr("dvbe")).last_access == "2026-01-02T03:04:05Z"
    # an aware moment in another zone is stored in UTC
    hanoi = datetime(2026, 1, 2, 7, 0, tzinfo=timezone(timedelta(hours=7)))
    directory.record_access("DVBE@most.gov.vn", hanoi)
    assert directory.get(addr("dvbe")).last_access == "2026-01-02T00:00:00Z"


def test_set_retirement(directory: Directory) -> None:
    personal(directory, "dvbe")
    assert directory.set_retirement(addr("dvbe"), "2026-06-30").retire_on == "2026-06-30"
    for bad in ("30/06/2026", "2026-13-01", "soon"):
        with pytest.raises(DirectoryError, match="is not YYYY-MM-DD"):
            directory.set_retirement(addr("dvbe"), bad)
    assert directory.get(addr("dvbe")).retire_on == "2026-06-30"


def test_set_retirement_stores_only_dates_the_lifecycle_can_read(directory: Directory) -> None:
    personal(directory, "dvbe")
    try:
        stored = directory.set_retirement(addr("dvbe"), "2026-6-5").retire_on
    except DirectoryError:
        return
    assert stored == "2026-06-05"


# -- delegation -----------------------------------------------------------------------------


def test_delegation(directory: Directory) -> None:
    unit_box(directory, "cntt", "CNTT")
    personal(directory, "head", unit="CNTT")
    personal(directory, "deputy", unit="CNTT")
    assert directory.delegate_of(addr("cntt")) is None
    assert directory.sender_identities(addr("head")) == {addr("head")}

    assert directory.delegate(addr("cntt"), addr("head")) is None
    assert directory.delegate_of(addr("cntt")) == addr("head")
    assert directory.sender_identities(addr("head")) == {addr("head"), addr("cntt")}
    assert directory.sender_identities("HEAD@most.gov.vn") == {addr("head"), addr("cntt")}
    assert directory.sender_identities(addr("deputy")) == {addr("deputy")}

    # a change of head hands the mailbox over (MIC 12.3): the previous delegate is returned
    assert directory.delegate(addr("cntt"), addr("deputy")) == addr("head")
    assert directory.sender_identities(addr("head")) == {addr("head")}
    assert directory.sender_identities(addr("deputy")) == {addr("deputy"), addr("cntt")}

    assert directory.undelegate(addr("cntt")) == addr("deputy")
    assert directory.delegate_of(addr("cntt")) is None
    assert directory.sender_identities(addr("deputy")) == {addr("deputy")}
    assert directory.undelegate(addr("cntt")) is None


def test_delegation_refusals(directory: Directory) -> None:
    unit_box(directory, "cntt", "CNTT")
    unit_box(directory, "vp", "VP")
    personal(directory, "head")
    personal(directory, "gone")
    group(directory, "team")
    directory.set_state(addr("gone"), "revoked", "nghỉ việc")
    for person in ("team", "gone", "vp"):
        with pytest.raises(DirectoryError, match="is not an active personal mailbox"):
            directory.delegate(addr("cntt"), addr(person))
    with pytest.raises(DirectoryError, match=f"^{addr('head')} is not a unit mailbox$"):
        directory.delegate(addr("head"), addr("head"))
    with pytest.raises(DirectoryError, match=r"^no mailbox"):
        directory.delegate(addr("cntt"), addr("nobody"))
    with pytest.raises(DirectoryError, match=r"^no mailbox"):
        directory.delegate(addr("nounit"), addr("head"))
    assert directory.delegate_of(addr("cntt")) is None


@pytest.mark.parametrize(
    "state",
    [pytest.param(state) for state in ("send-locked", "locked", "revoked")],
)
def test_a_unit_mailbox_that_may_not_send_is_no_sender_identity(
    directory: Directory, state: str
) -> None:
    unit_box(directory, "cntt", "CNTT")
    personal(directory, "head")
    directory.delegate(addr("cntt"), addr("head"))
    directory.set_state(addr("cntt"), state, "lộ mật khẩu")
    assert addr("cntt") not in directory.sender_identities(addr("head"))


# -- groups ---------------------------------------------------------------------------------


def test_add_member_to_a_non_group_is_refused(directory: Directory) -> None:
    personal(directory, "dvbe")
    personal(directory, "other")
    with pytest.raises(DirectoryError, match=f"^{addr('dvbe')} is not a group$"):
        directory.add_member(addr("dvbe"), addr("other"))
    group(directory, "team")
    with pytest.raises(DirectoryError, match=r"^no mailbox"):
        directory.add_member(addr("team"), addr("nobody"))
    with pytest.raises(DirectoryError, match=r"^no mailbox"):
        directory.add_member(addr("nogroup"), addr("dvbe"))
    directory.add_member(addr("team"), addr("dvbe"))
    with pytest.raises(DirectoryError, match="is already in"):
        directory.add_member("TEAM@most.gov.vn", "Dvbe@most.gov.vn")
    assert directory.members(addr("team")) == [addr("dvbe")]


@pytest.mark.parametrize(
    ("edges", "closing"),
    [
        ([], ("a", "a")),
        ([("a", "b")], ("b", "a")),
        ([("a", "b"), ("b", "c")], ("c", "a")),
        ([("a", "b"), ("b", "c"), ("c", "d")], ("d", "b")),
    ],
)
def test_group_cycles_are_refused(
    directory: Directory, edges: list[tuple[str, str]], closing: tuple[str, str]
) -> None:
    for name in "abcd":
        group(directory, name)
    for owner, member in edges:
        directory.add_member(addr(owner), addr(member))
    with pytest.raises(DirectoryError, match="would make a cycle of groups"):
        directory.add_member(addr(closing[0]), addr(closing[1]))
    assert addr(closing[1]) not in directory.members(addr(closing[0]))


def test_a_diamond_is_not_a_cycle(directory: Directory) -> None:
    for name in ("top", "left", "right", "bottom"):
        group(directory, name)
    directory.add_member(addr("top"), addr("left"))
    directory.add_member(addr("top"), addr("right"))
    directory.add_member(addr("left"), addr("bottom"))
    directory.add_member(addr("right"), addr("bottom"))
    assert directory.members(addr("top")) == [addr("left"), addr("right")]


def test_expand_group(directory: Directory) -> None:
    for local in ("an", "binh", "chi", "dung", "gone"):
        personal(directory, local)
    unit_box(directory, "cntt", "CNTT")
    directory.set_state(addr("gone"), "revoked", "nghỉ việc")
    directory.set_state(addr("dung"), "locked", "virus")  # locked still receives (MIC 7.1)
    for name in ("all", "leaders", "tech", "empty"):
        group(directory, name)
    directory.add_member(addr("leaders"), addr("an"))
    directory.add_member(addr("leaders"), addr("binh"))
    directory.add_member(addr("tech"), addr("binh"))  # in two nested groups
    directory.add_member(addr("tech"), addr("chi"))
    directory.add_member(addr("tech"), addr("gone"))
    directory.add_member(addr("tech"), addr("empty"))
    directory.add_member(addr("all"), addr("leaders"))
    directory.add_member(addr("all"), addr("tech"))
    directory.add_member(addr("all"), addr("an"))  # also directly
    directory.add_member(addr("all"), addr("dung"))
    directory.add_member(addr("all"), addr("cntt"))

    expanded = directory.expand_group(addr("all"))
    assert expanded == sorted([addr("an"), addr("binh"), addr("chi"), addr("dung"), addr("cntt")])
    assert len(expanded) == len(set(expanded))
    assert directory.expand_group(addr("tech")) == [addr("binh"), addr("chi")]
    assert directory.expand_group(addr("empty")) == []
    assert directory.members(addr("all")) == sorted(
        [addr("leaders"), addr("tech"), addr("an"), addr("dung"), addr("cntt")]
    )


def test_remove_member(directory: Directory) -> None:
    personal(directory, "an")
    personal(directory, "binh")
    group(directory, "team")
    directory.add_member(addr("team"), addr("an"))
    directory.add_member(addr("team"), addr("binh"))
    with pytest.raises(DirectoryError, match=f"^{addr('chi')} is not a member of {addr('team')}$"):
        directory.remove_member(addr("team"), addr("chi"))
    directory.remove_member(addr("team"), addr("an"))
    assert directory.members(addr("team")) == [addr("binh")]
    assert directory.expand_group(addr("team")) == [addr("binh")]
    with pytest.raises(DirectoryError, match="is not a member"):
        directory.remove_member(addr("team"), addr("an"))


# -- listing --------------------------------------------------------------------------------


def test_list_filters(directory: Directory) -> None:
    personal(directory, "an", PASSWORD, unit="CNTT")
    personal(directory, "binh", unit="CNTT")
    personal(directory, "chi", PASSWORD, unit="VP")
    personal(directory, "dung")
    directory.set_state(addr("binh"), "locked", "virus")
    directory.set_state(addr("chi"), "locked", "spam")

    def names(found: list[Mailbox]) -> list[str]:
        return [m.address.split("@")[0] for m in found]

    assert names(directory.list()) == ["an", "binh", "chi", "dung"]
    assert names(directory.list(unit="CNTT")) == ["an", "binh"]
    assert names(directory.list(unit="cntt")) == ["an", "binh"]
    assert names(directory.list(unit="KHCN")) == []
    assert names(directory.list(state="locked")) == ["binh", "chi"]
    assert names(directory.list(state="active")) == ["an", "dung"]
    assert names(directory.list(must_change=True)) == ["an", "chi"]
    assert names(directory.list(unit="VP", state="locked", must_change=True)) == ["chi"]
    assert names(directory.list(unit="CNTT", state="locked", must_change=True)) == []
    with pytest.raises(DirectoryError, match="state must be one of"):
        directory.list(state="frozen")


# -- schema and concurrency -----------------------------------------------------------------


def test_schema_version_and_idempotent_migrations(tmp_path: Path) -> None:
    path = tmp_path / "directory.sqlite3"
    first = Directory(path)
    first.add_unit("CNTT", "Cục Công nghệ thông tin")
    personal(first, "dvbe", unit="CNTT")
    second = Directory(path)  # migrations run again at open: nothing to do
    try:
        assert second.require(addr("dvbe")).unit == "CNTT"
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA user_version").fetchone()[0] == len(db.MIGRATIONS)
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.migrate(second._writer) == len(db.MIGRATIONS)
        personal(second, "other")
        assert [m.address for m in first.list()] == [addr("dvbe"), addr("other")]
    finally:
        first.close()
        second.close()
    third = Directory.for_data_dir(tmp_path)
    try:
        assert third.path == path
        assert len(third.list()) == 2
    finally:
        third.close()


def test_a_version_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "directory.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.executescript(db.MIGRATIONS[0])
        raw.execute(
            "INSERT INTO mailboxes (address, full_name, created_at) VALUES (?, ?, ?)",
            (addr("old"), "Người Cũ", "2025-01-01T00:00:00Z"),
        )
        raw.execute("PRAGMA user_version = 1")
    raw.close()
    directory = Directory(path)
    try:
        old = directory.require(addr("old"))
        assert (old.full_name, old.kind, old.state, old.rank) == (
            "Người Cũ",
            "personal",
            "active",
            "staff",
        )
        assert old.unit is None and old.retire_on is None
        directory.add_unit("CNTT", "Cục Công nghệ thông tin")
        assert personal(directory, "new", unit="CNTT").unit == "CNTT"
    finally:
        directory.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(db.MIGRATIONS)
    raw.close()


def test_two_directories_on_one_file_under_load(tmp_path: Path) -> None:
    """serve and the CLI open the same file: a writer must never starve a reader."""
    path = tmp_path / "directory.sqlite3"
    writer, reader = Directory(path), Directory(path)
    errors: list[BaseException] = []
    done = threading.Event()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        personal(writer, "dvbe")
        personal(writer, "other")

        first_read = threading.Event()

        def write() -> None:
            try:
                first_read.wait(timeout=10)  # make sure the two overlap
                for n in range(200):
                    writer.record_access(addr("dvbe"), start + timedelta(minutes=n))
                    if n % 50 == 0:
                        writer.set_state(addr("other"), "locked" if n % 100 else "active", "x")
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        reads = 0

        def read() -> None:
            nonlocal reads
            try:
                while not done.is_set():
                    assert reader.get(addr("dvbe")) is not None
                    assert len(reader.list()) == 2
                    assert reader.accepts_mail(addr("other"))
                    if reads % 10 == 0:  # and a second writer now and then
                        reader.record_access(addr("other"), start)
                    reads += 1
                    first_read.set()
            except BaseException as exc:
                errors.append(exc)
            finally:
                first_read.set()

        threads = [threading.Thread(target=write), threading.Thread(target=read)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        assert reads > 0
        last = now_text(start + timedelta(minutes=199))
        assert reader.get(addr("dvbe")).last_access == last
        # the reader can write right after the writer stopped
        reader.record_access(addr("other"), start)
        assert writer.get(addr("other")).last_access == now_text(start)
    finally:
        writer.close()
        reader.close()


class StatementWatch:
    """Wraps ``sqlite3.connect`` so a test can wait until a thread *starts* a statement."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started: list[tuple[int, str]] = []
        self.changed = threading.Condition()
        real = sqlite3.connect

        def connect(*args: object, **kwargs: object) -> sqlite3.Connection:
            conn = real(*args, **kwargs)
            conn.set_trace_callback(self._seen)
            return conn

        monkeypatch.setattr(sqlite3, "connect", connect)

    def _seen(self, statement: str) -> None:
        with self.changed:
            self.started.append((threading.get_ident(), statement))
            self.changed.notify_all()

    def wait(self, thread: threading.Thread, statement: str, timeout: float = 10) -> None:
        with self.changed:
            assert self.changed.wait_for(
                lambda: (thread.ident, statement) in self.started, timeout
            ), f"{thread.name} never ran {statement}"


def test_lookups_do_not_wait_for_a_write_stuck_behind_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLI (or any other connection) holding the write lock makes the gateway's own write
    wait on the busy timeout; RCPT lookups must still answer at once meanwhile."""
    watch = StatementWatch(monkeypatch)
    path = tmp_path / "directory.sqlite3"
    directory = Directory(path)
    personal(directory, "dvbe")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock, held
    other.execute("UPDATE mailboxes SET phone = '1' WHERE address = ?", (addr("dvbe"),))
    stuck = threading.Thread(target=directory.record_access, args=(addr("dvbe"),), name="stuck")
    stuck.start()
    pool = ThreadPoolExecutor(4)
    try:
        watch.wait(stuck, "BEGIN IMMEDIATE")  # it is now waiting for ``other``
        lookups = [
            pool.submit(directory.accepts_mail, addr("dvbe")),
            pool.submit(directory.get, addr("dvbe")),
            pool.submit(directory.accepts_mail, addr("nobody")),
        ]
        accepted, found, unknown = (lookup.result(timeout=5) for lookup in lookups)
        assert accepted and found is not None and not unknown
        assert found.phone is None, "uncommitted writes are not seen"
        assert stuck.is_alive(), "the write is still waiting for the lock"
    finally:
        other.execute("COMMIT")
        stuck.join(timeout=30)
        pool.shutdown()
        other.close()
    try:
        assert not stuck.is_alive()
        mailbox = directory.require(addr("dvbe"))
        assert mailbox.phone == "1" and mailbox.last_access is not None
    finally:
        directory.close()


def test_readers_on_many_threads_see_each_commit_at_once(directory: Directory) -> None:
    """Each thread reads through its own connection; none keeps a stale snapshot."""
    personal(directory, "dvbe")
    barrier = threading.Barrier(8)

    def lookups(number: int) -> int:
        barrier.wait(timeout=10)  # all eight readers open and query at the same time
        found = 0
        for _ in range(100):
            found += directory.accepts_mail(addr("dvbe"))
            found += directory.accepts_mail(addr(f"none{number}"))
        return found

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lookups, range(8))) == [100] * 8
        # the same pool threads, their connections already open, see a change at once
        directory.set_state(addr("dvbe"), "revoked", "left")
        barrier.reset()
        assert list(pool.map(lookups, range(8))) == [0] * 8


def test_open_existing_never_creates_the_database(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    with pytest.raises(DirectoryMissing) as missing:
        Directory.open_existing(tmp_path / "typo", config)
    database = (tmp_path / "typo" / "directory.sqlite3").resolve()
    assert str(missing.value) == (
        f"no directory database at {database} (is gateway.data_dir right?);"
        f" to create an empty one run `mailgate init -c {config}`"
    )
    assert not (tmp_path / "typo").exists()
    Directory.for_data_dir(tmp_path).close()  # init and mailbox add may create it
    opened = Directory.open_existing(tmp_path)
    try:
        assert opened.list() == []
    finally:
        opened.close()


def test_open_existing_names_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "directory.sqlite3").write_bytes(b"not sqlite at all, long enough" * 10)
    with pytest.raises(DirectoryError, match=r"cannot open the directory database .*: file is not"):
        Directory.open_existing(tmp_path)


def test_close_checkpoints_the_wal(tmp_path: Path) -> None:
    """The writer closes last, so the WAL is folded back and removed (readers cannot)."""
    directory = Directory(tmp_path / "directory.sqlite3")
    personal(directory, "dvbe")
    assert directory.get(addr("dvbe")) is not None  # a reader connection is open too
    directory.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["directory.sqlite3"]
