"""The login cache against a real ``mailgate serve``: a second login costs no argon2, and
every admin action, run from the CLI in a process of its own, ends a cached login at
once; old hashes are upgraded at the next login; unknown addresses, wrong passwords and
locked mailboxes take the same time to refuse."""

from __future__ import annotations

import base64
import smtplib
import statistics
import threading
import time
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pytest

from gateway.directory.mailboxes import Directory, Registration
from gateway.directory.passwords import Argon2Params
from tests.integration.harness import Gateway, RawClient, Sink, render_toml

USER, PASSWORD = "bich.ngoc@example.gov.vn", "Giay-phep-9x"
NEW_PASSWORD = "Mat-khau-moi-2027"
# Real argon2id, cheap enough for many logins per test.
CHEAP = {"argon2_memory_kib": 1024, "argon2_time_cost": 1, "argon2_parallelism": 1}


def configure(gateway: Gateway, **auth: Any) -> Gateway:
    """[auth] as given, failures not throttled (these tests fail on purpose), and logs
    kept long enough for ``maintenance --now`` in the future to leave today's events."""
    sections = gateway.sections()
    sections["log"]["retention_days"] = 3650
    sections["auth"] = {
        "max_failures_per_address": 1000,
        "max_failures_per_client": 1000,
        **CHEAP,
        **auth,
    }
    gateway.write_config(render_toml(sections))
    return gateway


@pytest.fixture
def gateway(make_gateway, sink: Sink) -> Gateway:
    gateway = configure(make_gateway(sink.url, sink.url))
    gateway.cli("mailbox", "add", USER, "--name", "Lê Bích Ngọc", "--password", PASSWORD)
    return gateway.start()


def login(gateway: Gateway, user: str = USER, password: str = PASSWORD) -> int:
    """The reply code of an smtplib login on a new connection, the way msmtp logs in."""
    with smtplib.SMTP("127.0.0.1", gateway.submission_port, timeout=15) as client:
        client.ehlo("client.test")
        try:
            return client.login(user, password)[0]
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code


def successes(gateway: Gateway, count: int) -> list[str]:
    """The ``cache`` field of the first ``count`` auth_success events."""
    return [e["cache"] for e in gateway.wait_events("auth_success", count)][:count]


def test_second_login_is_served_from_the_cache(gateway: Gateway) -> None:
    assert login(gateway) == 235
    assert login(gateway) == 235
    assert successes(gateway, 2) == ["miss", "hit"]
    show = gateway.cli("mailbox", "show", USER, "--json").stdout
    assert '"last_access": null' not in show
    assert PASSWORD not in gateway.all_logs()


def _passwd(gateway: Gateway) -> None:
    gateway.cli("mailbox", "passwd", USER, "--password", NEW_PASSWORD)


def _lock(gateway: Gateway) -> None:
    gateway.cli("mailbox", "lock", USER, "--reason", "security review")


def _revoke(gateway: Gateway) -> None:
    gateway.cli("mailbox", "revoke", USER)


def _retire(gateway: Gateway) -> None:
    """Staff who left 200 days ago: revoked by the deadlines, no maintenance run."""
    gateway.cli("mailbox", "retire", USER, "--on", str(date.today() - timedelta(days=200)))


def _maintenance(gateway: Gateway) -> None:
    """Seven months on, the inactivity rule locks it (MOST 13.3)."""
    gateway.cli("maintenance", "--now", str(date.today() + timedelta(days=215)))


@pytest.mark.parametrize(
    "action",
    [_passwd, _lock, _revoke, _retire, _maintenance],
    ids=["passwd", "lock", "revoke", "retire", "maintenance"],
)
def test_an_admin_action_from_the_cli_ends_the_cached_login_at_once(
    gateway: Gateway, action: Callable[[Gateway], None]
) -> None:
    assert login(gateway) == 235
    assert login(gateway) == 235
    assert successes(gateway, 2) == ["miss", "hit"]
    action(gateway)
    assert login(gateway) == 535, "the old login must not stand"
    assert len(gateway.events("auth_success")) == 2
    if action is _passwd:
        assert login(gateway, password=NEW_PASSWORD) == 235
        assert successes(gateway, 3)[2] == "miss"


def test_unlock_ends_the_cached_login_and_the_new_password_works(gateway: Gateway) -> None:
    assert login(gateway) == 235
    assert login(gateway) == 235
    gateway.cli("mailbox", "lock", USER, "--reason", "x")
    printed = gateway.cli("mailbox", "unlock", USER).stdout
    new_password = printed.rsplit(": ", 1)[1].strip()
    assert login(gateway) == 535
    assert login(gateway, password=new_password) == 235
    assert successes(gateway, 3) == ["miss", "hit", "miss"]


def test_a_hash_with_older_parameters_is_upgraded_at_the_next_login(
    make_gateway, sink: Sink
) -> None:
    gateway = configure(make_gateway(sink.url, sink.url))
    gateway.cli("mailbox", "add", USER, "--name", "Lê Bích Ngọc", "--password", PASSWORD)
    before = stored_hash(gateway)
    assert "m=1024,t=1,p=1" in before
    configure(gateway, argon2_memory_kib=2048, argon2_time_cost=2).start()
    assert login(gateway) == 235
    event = gateway.wait_event("password_rehashed")
    assert event["user"] == USER and "m=2048" in event["reason"]
    after = stored_hash(gateway)
    assert "m=2048,t=2,p=1" in after
    gateway.stop()
    gateway.start()  # a cold cache: the upgraded hash verifies the same password
    assert login(gateway) == 235
    assert len(gateway.events("password_rehashed")) == 1
    assert PASSWORD not in gateway.all_logs()


def stored_hash(gateway: Gateway) -> str:
    directory = Directory.for_data_dir(gateway.workdir / "var")
    try:
        record = directory.login_record(USER)
        assert record is not None and record[1] is not None
        return record[1]
    finally:
        directory.close()


def test_64_parallel_cold_logins_all_succeed_on_a_pool_of_2(make_gateway, sink: Sink) -> None:
    many = {"max_connections_per_client": 100}  # 64 at once from one address
    gateway = configure(make_gateway(sink.url, sink.url, smtp_extra=many), hash_workers=2)
    users = [f"user{n}@example.gov.vn" for n in range(64)]
    passwords = {user: f"Mat-Khau-{n}-Rieng" for n, user in enumerate(users)}
    hasher = Argon2Params(**{k.removeprefix("argon2_"): v for k, v in CHEAP.items()}).hasher()
    directory = Directory.for_data_dir(gateway.workdir / "var", hasher)
    try:
        directory.add_many(
            [(Registration(u, f"User {n}"), passwords[u]) for n, u in enumerate(users)]
        )
    finally:
        directory.close()
    gateway.start()
    start = threading.Barrier(len(users))
    codes: dict[str, int] = {}

    def one(user: str) -> None:
        start.wait(timeout=30)
        try:
            codes[user] = login(gateway, user, passwords[user])
        except (OSError, smtplib.SMTPException) as exc:
            codes[user] = -1
            raise AssertionError(f"{user}: {exc!r}") from exc

    threads = [threading.Thread(target=one, args=(u,)) for u in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert codes == dict.fromkeys(users, 235)
    assert successes(gateway, 64) == ["miss"] * 64


# -- timing ---------------------------------------------------------------------------


def auth_plain_seconds(gateway: Gateway, user: str, password: str) -> float:
    """Wall time of one AUTH PLAIN exchange on a fresh connection (after EHLO)."""
    client = RawClient(gateway.submission_port)
    try:
        assert client.command("EHLO client.test").startswith("250")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        began = time.perf_counter()
        reply = client.command(f"AUTH PLAIN {token}")
        elapsed = time.perf_counter() - began
        assert reply.startswith("535 "), reply
        return elapsed
    finally:
        client.close()


def test_unknown_wrong_and_locked_take_the_same_time_to_refuse(make_gateway, sink: Sink) -> None:
    """Medians of interleaved attempts, with an argon2 cost (~20-40 ms) well above the
    loopback round trip: skipping the dummy verification, or answering a locked mailbox
    before verifying, would make a category several times faster."""
    gateway = configure(
        make_gateway(sink.url, sink.url),
        argon2_memory_kib=32768, argon2_time_cost=1, argon2_parallelism=1,
    )  # fmt: skip
    locked = "khoa@example.gov.vn"
    for user in (USER, locked):
        gateway.cli("mailbox", "add", user, "--name", "Người Dùng", "--password", PASSWORD)
    gateway.cli("mailbox", "lock", locked, "--reason", "test")
    gateway.start()
    assert login(gateway) == 235  # the right password is now cached: wrong ones still verify
    cases = {
        "unknown": ("khong-co@example.gov.vn", PASSWORD),
        "wrong password": (USER, "Sai-mat-khau-1"),
        "locked, wrong password": (locked, "Sai-mat-khau-1"),
        "locked, right password": (locked, PASSWORD),
    }
    for user, password in cases.values():  # warm up: the dummy hash, connections, pages
        auth_plain_seconds(gateway, user, password)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(9):
        for name, (user, password) in cases.items():
            samples[name].append(auth_plain_seconds(gateway, user, password))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    reference = medians["wrong password"]
    shown = {name: f"{value * 1000:.1f} ms" for name, value in medians.items()}
    assert reference > 0.005, f"argon2 must dominate the measurement: {shown}"
    for name, value in medians.items():
        assert 0.6 < value / reference < 1.67, f"{name} is distinguishable: {shown}"
    assert PASSWORD not in gateway.all_logs()


def test_a_refused_login_is_never_remembered(gateway: Gateway) -> None:
    for _ in range(2):
        assert login(gateway, password="Sai-mat-khau-1") == 535
    assert login(gateway) == 235
    assert successes(gateway, 1) == ["miss"]
