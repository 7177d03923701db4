"""Who a logged-in user may send as, remembered until the directory changes
(gateway/directory/standing.py), on a real SQLite file changed by a second connection,
as a ``mailgate`` command in another process would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from gateway.directory import standing
from gateway.directory.mailboxes import Directory, Registration
from gateway.directory.standing import SenderStandings

USER = "nvan@most.gov.vn"
UNIT = "vanphong@most.gov.vn"


@pytest.fixture
def directories(tmp_path: Path) -> Iterator[tuple[Directory, Directory]]:
    """serve's directory, and another opened on the same file (the CLI's)."""
    path = tmp_path / "directory.db"
    # Real argon2id at its cheapest: hashing is not what these tests check.
    served = Directory(path, hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    served.add_unit("VP", "Văn phòng")
    served.add(Registration(USER, "Nguyễn Văn An"), "Mậtkhẩu#2026")
    served.add(Registration(UNIT, "Văn phòng", kind="unit", unit="VP"), None)
    other = Directory(path)
    yield served, other
    other.close()
    served.close()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The users read from the directory (not answered from memory)."""
    seen: list[str] = []
    real = standing.read_standing

    def counted(directory: Directory, user: str, today: object) -> standing.Standing:
        seen.append(user)
        return real(directory, user, today)  # type: ignore[arg-type]

    monkeypatch.setattr(standing, "read_standing", counted)
    return seen


async def test_remembered_while_nothing_changes(
    directories: tuple[Directory, Directory], reads: list[str]
) -> None:
    served, _ = directories
    standings = SenderStandings(served)
    first = await standings.of(USER)
    assert (first.state, first.identities) == ("active", frozenset({USER}))
    for _ in range(5):
        assert await standings.of(USER.upper()) == first
    assert reads == [USER]


async def test_a_lock_by_another_process_applies_to_the_next_message(
    directories: tuple[Directory, Directory], reads: list[str]
) -> None:
    served, other = directories
    standings = SenderStandings(served)
    assert (await standings.of(USER)).state == "active"
    other.set_state(USER, "locked", "MIC 7.1: left the ministry")
    after = await standings.of(USER)
    assert (after.state, after.reason, after.identities) == (
        "locked",
        "MIC 7.1: left the ministry",
        frozenset(),
    )
    assert len(reads) == 2


async def test_a_delegation_by_this_process_applies_at_once(
    directories: tuple[Directory, Directory],
) -> None:
    served, _ = directories
    standings = SenderStandings(served)
    assert (await standings.of(USER)).identities == frozenset({USER})
    served.delegate(UNIT, USER)  # serve's own writer connection
    assert (await standings.of(USER)).identities == frozenset({USER, UNIT})


async def test_unreadable_version_reads_every_time(
    directories: tuple[Directory, Directory], reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    served, _ = directories
    monkeypatch.setattr(served, "data_version", lambda: None)
    standings = SenderStandings(served)
    await standings.of(USER)
    await standings.of(USER)
    assert reads == [USER, USER]
