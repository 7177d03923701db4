"""auth.py: one authenticator, its throttle counting attempts in flight, what is logged."""

from __future__ import annotations

import asyncio
import unicodedata
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from gateway import auth as auth_module
from gateway.auth import Authenticator, loggable_user
from gateway.auth_throttle import LoginThrottle
from gateway.config import AuthSection
from gateway.directory.lifecycle import apply_lifecycle
from gateway.directory.mailboxes import Directory, Registration, parse_stored
from gateway.directory.passwords import Argon2Params
from gateway.smtp import replies

USER, PASSWORD = "an@example.gov.vn", "Dung-Mat-Khau-2026"
# Real argon2id at its cheapest: these tests count verifications, they do not time them.
CHEAP = AuthSection(argon2_memory_kib=8, argon2_time_cost=1, argon2_parallelism=1)


@pytest.fixture
def directory(tmp_path: Path):
    directory = Directory.for_data_dir(tmp_path, CHEAP.argon2().hasher())
    directory.add(Registration(USER, "Nguyễn Văn An"), PASSWORD)
    yield directory
    directory.close()


def authenticator(
    directory: Directory, per_address: int = 3, settings: AuthSection = CHEAP
) -> Authenticator:
    return Authenticator(directory, LoginThrottle(per_address, 100, 900), settings)


async def test_parallel_guesses_get_no_more_tries_than_the_limit(directory: Directory) -> None:
    """Six connections guessing at once: before, each passed the throttle check while the
    others were still hashing, so all six got a guess in."""
    auth = authenticator(directory, per_address=2)
    results = await asyncio.gather(*(auth.login(USER, f"wrong-{n}", "192.0.2.9") for n in range(6)))
    codes = sorted(r.reply.code for r in results if r.reply is not None)
    assert codes.count(replies.AUTH_FAILED.code) == 2
    assert codes.count(replies.AUTH_THROTTLED.code) == 4
    auth.close()


async def test_locked_owner_is_told_and_a_wrong_password_is_not(directory: Directory) -> None:
    directory.set_state(USER, "locked", "inactive 6 months")
    auth = authenticator(directory)
    right = await auth.login(USER, PASSWORD, "192.0.2.9")
    assert right.mailbox is None and right.reply is not None
    assert right.reply.text.startswith(replies.AUTH_MAILBOX_LOCKED.text)
    assert "locked" in right.reason
    wrong = await auth.login(USER, "not-it", "192.0.2.9")
    assert wrong.reply is not None
    assert wrong.reply.text.startswith(replies.AUTH_FAILED.text)
    auth.close()


async def test_success_records_the_access(directory: Directory) -> None:
    auth = authenticator(directory)
    result = await auth.login(f"  {USER.upper()} ", PASSWORD, "192.0.2.9")
    assert result.mailbox is not None and result.reply is None
    mailbox = directory.get(USER)
    assert mailbox is not None and mailbox.last_access is not None
    auth.close()


async def test_access_is_written_at_most_once_an_hour(
    directory: Directory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logins an hour apart or less write nothing: a write per login would be a write
    transaction each and would empty the directory caches keyed on its data version. A
    recorded access in the future (the clock stepped back) is written again."""
    writes: list[str] = []
    real = directory.record_access
    monkeypatch.setattr(
        directory, "record_access", lambda a, m=None: (writes.append(a), real(a, m))
    )
    auth = authenticator(directory)
    await auth.login(USER, PASSWORD, "192.0.2.9")
    await auth.login(USER, PASSWORD, "192.0.2.9")
    assert len(writes) == 1
    real(USER, datetime.now(UTC) - timedelta(minutes=61))
    await auth.login(USER, PASSWORD, "192.0.2.9")
    assert len(writes) == 2
    real(USER, datetime.now(UTC) + timedelta(hours=1))
    await auth.login(USER, PASSWORD, "192.0.2.9")
    assert len(writes) == 3
    mailbox = directory.get(USER)
    assert mailbox is not None and mailbox.last_access is not None
    assert parse_stored(mailbox.last_access) <= datetime.now(UTC)
    auth.close()


async def test_a_password_in_the_user_field_is_not_logged(directory: Directory) -> None:
    auth = authenticator(directory)
    result = await auth.login("Sup3r$ecret!Pass", "x", "192.0.2.9")
    assert result.user is None
    unknown = await auth.login("nobody@example.gov.vn", "x", "192.0.2.9")
    assert unknown.user == "nobody@example.gov.vn"  # an address: fine to record
    auth.close()


def test_loggable_user() -> None:
    assert loggable_user("an@example.gov.vn", known=False) == "an@example.gov.vn"
    assert loggable_user("hunter2", known=False) is None
    assert loggable_user("an", known=True) == "an"


async def test_six_months_without_access_locks_at_login_before_maintenance(
    directory: Directory,
) -> None:
    """MOST 13.3 decides at the login itself, not at the next maintenance run."""
    directory.record_access(USER, datetime.now(UTC) - timedelta(days=200))
    auth = authenticator(directory)
    result = await auth.login(USER, PASSWORD, "192.0.2.9")
    assert result.mailbox is None and result.reply is not None
    assert result.reply.text.startswith(replies.AUTH_MAILBOX_LOCKED.text)
    assert "no access since" in result.reason
    auth.close()


# -- the cache of verified logins -----------------------------------------------------


class Verifications:
    """Counts argon2 verifications (and the most ever running at once)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import threading

        self.count = 0
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()
        real = auth_module.check_password

        def counted(*args: object) -> tuple[bool, bool]:
            with self._lock:
                self.count += 1
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                return real(*args)  # type: ignore[arg-type]
            finally:
                with self._lock:
                    self.running -= 1

        monkeypatch.setattr(auth_module, "check_password", counted)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> Verifications:
    return Verifications(monkeypatch)


class Events(list):
    def __call__(self, event: str, **fields: object) -> None:
        self.append((event, fields))


async def test_second_login_is_a_cache_hit_that_still_records_access_and_event(
    directory: Directory, hashes: Verifications
) -> None:
    auth = authenticator(directory)
    events = Events()
    first = await auth.login(USER, PASSWORD, "192.0.2.9", events, success_code=235)
    assert first.mailbox is not None and not first.cached
    assert hashes.count == 1
    directory.record_access(USER, datetime.now(UTC) - timedelta(days=3))
    second = await auth.login(USER, PASSWORD, "192.0.2.10", events, success_code=235)
    assert second.mailbox is not None and second.cached
    assert hashes.count == 1, "a hit runs no argon2"
    mailbox = directory.get(USER)
    assert mailbox is not None and mailbox.last_access is not None
    assert parse_stored(mailbox.last_access) > datetime.now(UTC) - timedelta(minutes=5)
    assert [(e, f["cache"], f["code"]) for e, f in events] == [
        ("auth_success", "miss", 235),
        ("auth_success", "hit", 235),
    ]
    auth.close()


async def test_a_wrong_password_is_never_a_hit_and_costs_a_verification(
    directory: Directory, hashes: Verifications
) -> None:
    auth = authenticator(directory)
    assert (await auth.login(USER, PASSWORD, "192.0.2.9")).mailbox is not None
    wrong = await auth.login(USER, "Sai-Mat-Khau-1", "192.0.2.9")
    assert wrong.mailbox is None and wrong.reply is not None
    assert wrong.reply.text.startswith(replies.AUTH_FAILED.text)
    assert hashes.count == 2
    assert (await auth.login(USER, PASSWORD, "192.0.2.9")).cached, "the entry stays"
    auth.close()


async def test_failures_are_not_remembered_and_unknown_addresses_cost_a_verification(
    directory: Directory, hashes: Verifications
) -> None:
    auth = authenticator(directory, per_address=100)
    for _ in range(2):
        assert (await auth.login(USER, "Sai-Mat-Khau-1", "192.0.2.9")).mailbox is None
        assert (await auth.login("ghost@example.gov.vn", PASSWORD, "192.0.2.9")).mailbox is None
    assert hashes.count == 4
    assert len(auth.cache) == 0
    auth.close()


async def test_a_hit_still_goes_through_the_throttle(directory: Directory) -> None:
    auth = authenticator(directory, per_address=2)
    assert (await auth.login(USER, PASSWORD, "192.0.2.9")).mailbox is not None
    for n in range(2):
        await auth.login(USER, f"Sai-Mat-Khau-{n}", "192.0.2.9")
    throttled = await auth.login(USER, PASSWORD, "192.0.2.9")
    assert throttled.reply is not None and throttled.reply.code == replies.AUTH_THROTTLED.code
    auth.close()


def _change_password(other: Directory) -> None:
    other.set_password(USER, "Mat-Khau-Moi-2027", must_change=False)


def _lock(other: Directory) -> None:
    other.set_state(USER, "locked", "by the operator")


def _revoke(other: Directory) -> None:
    other.set_state(USER, "revoked", "left")


def _retire_long_ago(other: Directory) -> None:
    """Staff who left 200 days ago: revoked by the deadlines, before any maintenance run."""
    other.set_retirement(USER, (date.today() - timedelta(days=200)).isoformat())


def _inactive_before_maintenance(other: Directory) -> None:
    """Only the deadline passes (last access is not part of the entry's version)."""
    other.record_access(USER, datetime.now(UTC) - timedelta(days=200))


def _maintenance_after_inactivity(other: Directory) -> None:
    other.record_access(USER, datetime.now(UTC) - timedelta(days=200))
    apply_lifecycle(other, date.today(), lambda *a, **k: None)


@pytest.mark.parametrize(
    "change",
    [
        _change_password,
        _lock,
        _revoke,
        _retire_long_ago,
        _inactive_before_maintenance,
        _maintenance_after_inactivity,
    ],
    ids=["passwd", "lock", "revoke", "retire", "deadline", "maintenance"],
)
async def test_a_change_made_by_another_process_ends_the_cached_login(
    directory: Directory, hashes: Verifications, change, tmp_path: Path
) -> None:
    """The CLI and maintenance run in processes of their own: no message reaches serve,
    the fresh read of the row on the next login is what counts."""
    auth = authenticator(directory)
    assert (await auth.login(USER, PASSWORD, "192.0.2.9")).mailbox is not None
    assert (await auth.login(USER, PASSWORD, "192.0.2.9")).cached
    other = Directory.for_data_dir(tmp_path, CHEAP.argon2().hasher())  # "the CLI"
    try:
        change(other)
    finally:
        other.close()
    after = await auth.login(USER, PASSWORD, "192.0.2.9")
    assert after.mailbox is None and not after.cached
    assert hashes.count == 2, "refused after a full verification, not from the cache"
    auth.close()


async def test_unlock_resets_the_password_and_ends_the_cached_login(
    directory: Directory, hashes: Verifications, tmp_path: Path
) -> None:
    auth = authenticator(directory)
    assert (await auth.login(USER, PASSWORD, "192.0.2.9")).mailbox is not None
    other = Directory.for_data_dir(tmp_path, CHEAP.argon2().hasher())
    other.set_state(USER, "locked", "x")
    other.unlock(USER, "Mo-Khoa-Moi-2027")
    other.close()
    assert (await auth.login(USER, PASSWORD, "192.0.2.9")).mailbox is None
    fresh = await auth.login(USER, "Mo-Khoa-Moi-2027", "192.0.2.9")
    assert fresh.mailbox is not None and not fresh.cached
    auth.close()


async def test_entries_expire_after_the_ttl(directory: Directory) -> None:
    now = [1000.0]
    auth = authenticator(directory, settings=AuthSection(**{**_cheap(), "cache_ttl_seconds": 60}))
    auth.cache._clock = lambda: now[0]
    await auth.login(USER, PASSWORD, "192.0.2.9")
    now[0] += 59
    assert (await auth.login(USER, PASSWORD, "192.0.2.9")).cached
    now[0] += 2
    assert not (await auth.login(USER, PASSWORD, "192.0.2.9")).cached
    auth.close()


async def test_cache_size_zero_remembers_nothing(
    directory: Directory, hashes: Verifications
) -> None:
    auth = authenticator(directory, settings=AuthSection(**{**_cheap(), "cache_size": 0}))
    for _ in range(3):
        assert not (await auth.login(USER, PASSWORD, "192.0.2.9")).cached
    assert hashes.count == 3
    auth.close()


def test_cache_keeps_a_keyed_hash_not_the_password() -> None:
    from gateway.auth_cache import VerifiedLogins

    first, second = VerifiedLogins(), VerifiedLogins()
    for cache in (first, second):
        cache.remember(USER, PASSWORD, b"v")
    proofs = [cache._entries[USER].proof for cache in (first, second)]
    assert proofs[0] != proofs[1], "the key is random per process"
    for proof in proofs:
        assert PASSWORD.encode() not in proof and len(proof) == 32
    assert first.proves(USER, PASSWORD, b"v") and not first.proves(USER, PASSWORD + "x", b"v")
    assert not first.proves(USER, PASSWORD, b"other version")
    assert USER not in first._entries, "an outdated entry is dropped"
    # NFC: the same password typed decomposed proves the same login.
    first.remember(USER, "Mật-khẩu-2026", b"v")
    assert first.proves(USER, unicodedata.normalize("NFD", "Mật-khẩu-2026"), b"v")


def test_cache_drops_the_least_recently_used_past_its_size() -> None:
    from gateway.auth_cache import VerifiedLogins

    cache = VerifiedLogins(size=2)
    cache.remember("a@x.vn", PASSWORD, b"v")
    cache.remember("b@x.vn", PASSWORD, b"v")
    assert cache.proves("a@x.vn", PASSWORD, b"v")
    cache.remember("c@x.vn", PASSWORD, b"v")
    assert len(cache) == 2 and cache.proves("a@x.vn", PASSWORD, b"v")
    assert not cache.proves("b@x.vn", PASSWORD, b"v")


def _cheap() -> dict[str, int]:
    return {"argon2_memory_kib": 8, "argon2_time_cost": 1, "argon2_parallelism": 1}


# -- argon2: parameters, upgrades, the bounded pool -------------------------------------


async def test_a_hash_with_older_parameters_is_upgraded_at_the_next_login(
    directory: Directory,
) -> None:
    stored_before = directory.login_record(USER)[1]  # type: ignore[index]
    assert "m=8,t=1,p=1" in stored_before
    newer = AuthSection(argon2_memory_kib=16, argon2_time_cost=2, argon2_parallelism=1)
    auth = authenticator(directory, settings=newer)
    events = Events()
    result = await auth.login(USER, PASSWORD, "192.0.2.9", events)
    assert result.mailbox is not None
    stored_after = directory.login_record(USER)[1]  # type: ignore[index]
    assert "m=16,t=2,p=1" in stored_after and stored_after != stored_before
    assert [e for e, _ in events] == ["password_rehashed", "auth_success"]
    assert PASSWORD not in str(events)
    mailbox = directory.get(USER)
    assert mailbox is not None and mailbox.password_changed_at is not None
    again = await auth.login(USER, PASSWORD, "192.0.2.9", events)
    assert again.cached, "the entry was remembered with the upgraded hash"
    auth.close()
    fresh = authenticator(directory, settings=newer)
    assert (await fresh.login(USER, PASSWORD, "192.0.2.9")).mailbox is not None
    fresh.close()


async def test_64_parallel_cold_logins_never_run_more_hashes_than_the_pool(
    tmp_path: Path, hashes: Verifications
) -> None:
    directory = Directory.for_data_dir(tmp_path, CHEAP.argon2().hasher())
    users = [f"user{n}@example.gov.vn" for n in range(64)]
    directory.add_many([(Registration(u, f"User {n}"), PASSWORD) for n, u in enumerate(users)])
    settings = AuthSection(**{**_cheap(), "hash_workers": 2})
    auth = authenticator(directory, settings=settings)
    results = await asyncio.gather(*(auth.login(u, PASSWORD, f"192.0.2.{n}") for n, u in
                                     enumerate(users)))  # fmt: skip
    assert all(r.mailbox is not None for r in results)
    assert hashes.count == 64
    assert hashes.most <= 2
    assert auth._hashing._max_workers == 2
    auth.close()
    directory.close()


def test_hash_workers_default_to_the_number_of_cores() -> None:
    import os

    from gateway.auth import hash_workers

    assert hash_workers(AuthSection()) == len(os.sched_getaffinity(0))
    assert hash_workers(AuthSection(hash_workers=3)) == 3


def test_argon2_defaults_meet_owasp_and_rfc9106() -> None:
    from gateway.directory.passwords import meets_owasp, meets_rfc9106

    assert AuthSection().argon2() == Argon2Params(65536, 3, 4)
    assert meets_owasp(Argon2Params()) and meets_rfc9106(Argon2Params())
    assert meets_owasp(Argon2Params(19456, 2, 1)) and not meets_rfc9106(Argon2Params(19456, 2, 1))
    assert meets_owasp(Argon2Params(47104, 1, 1))
    assert not meets_owasp(Argon2Params(16384, 2, 1))


def test_argon2_threads_yield_the_cpu_to_the_event_loop(directory: Directory) -> None:
    """A storm of cold logins must not slow the mail down: the pool runs at a lower
    priority (niceness is per thread on Linux, and argon2's lane threads inherit it)."""
    import os
    import threading

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    auth = authenticator(directory)
    mine = niceness()
    assert auth._hashing.submit(niceness).result() == min(mine + auth_module.HASH_NICENESS, 19)
    assert niceness() == mine, "the event loop's thread keeps its priority"
    auth.close()
