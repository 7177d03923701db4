"""``smtp.processes = 2``: a primary and one SMTP helper sharing the listening sockets.

Real processes, found with psutil by parent PID: both serve sessions, SIGHUP reaches
the helper, SIGTERM stops both, a killed helper is replaced and mail keeps flowing.
"""

from __future__ import annotations

import contextlib
import signal
import smtplib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

import psutil
import pytest

from tests.integration.harness import (
    Gateway,
    RawClient,
    Sink,
    free_port,
    make_tls_files,
    render_toml,
    wait_for_port,
)
from tests.integration.test_metrics import scrape, wait_until

CONNECTIONS = 20
MESSAGES_PER_CONNECTION = 3
_SEEN: list[psutil.Process] = []  # every helper a test looked at


@pytest.fixture(autouse=True)
def _no_helper_left_behind() -> Iterator[None]:
    """A test that fails may leave a helper running (that is what some of them check):
    kill it, so it holds no port or data_dir lock for the next test."""
    yield
    while _SEEN:
        helper = _SEEN.pop()
        with contextlib.suppress(psutil.NoSuchProcess):
            helper.kill()


def start_two(
    make_gateway: Callable[..., Gateway], sink: Sink, metrics_port: int | None = None
) -> Gateway:
    """A gateway with smtp.processes = 2, returned once its helper is serving too."""
    gateway = make_gateway(sink.url, sink.url, smtp_extra={"processes": 2})
    if metrics_port is not None:
        sections = gateway.sections()
        sections["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
        gateway.write_config(render_toml(sections))
    gateway.start()
    wait_helpers(gateway, starts=1)
    return gateway


def helpers(gateway: Gateway) -> list[psutil.Process]:
    assert gateway.process is not None
    found = psutil.Process(gateway.process.pid).children()
    _SEEN.extend(found)
    return found


def wait_helpers(gateway: Gateway, starts: int) -> list[psutil.Process]:
    """Wait for ``starts`` helper gateway_start events in all; the helper running now."""
    gateway.wait_events("gateway_start", starts, lambda e: "SMTP helper" in e.get("reason", ""))
    running = helpers(gateway)
    assert len(running) == 1, running
    return running


def held_by_process(gateway: Gateway, port: int) -> dict[int, int]:
    """Established connections on ``port`` held by each serve process, by PID."""
    assert gateway.process is not None
    processes = [psutil.Process(gateway.process.pid), *helpers(gateway)]
    return {
        p.pid: sum(
            1
            for c in p.net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
        )
        for p in processes
    }


def serving_pids(gateway: Gateway, port: int) -> set[int]:
    """The serve processes that hold an established connection on ``port``."""
    return {pid for pid, held in held_by_process(gateway, port).items() if held}


def connections_by_process(gateway: Gateway, port: int) -> list[int]:
    """Established connections on ``port`` per serve process, largest first."""
    return sorted(held_by_process(gateway, port).values(), reverse=True)


def note(number: int) -> bytes:
    return (
        f"From: a@other.org\r\nTo: bob@example.gov.vn\r\nSubject: n{number}\r\n"
        f"Message-ID: <proc-{number}@other.org>\r\n\r\nbody {number}\r\n"
    ).encode()


def test_two_processes_share_the_inbound_listener_and_deliver_each_message_once(
    make_gateway: Callable[..., Gateway], sink: Sink
) -> None:
    gateway = start_two(make_gateway, sink)
    clients = [
        smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=30) for _ in range(CONNECTIONS)
    ]
    try:
        # Every client has its greeting: each connection is accepted and held by a process.
        assert len(serving_pids(gateway, gateway.inbound_port)) == 2, "one process served all"
        for index, client in enumerate(clients):
            for n in range(MESSAGES_PER_CONNECTION):
                number = index * MESSAGES_PER_CONNECTION + n
                client.sendmail("a@other.org", ["bob@example.gov.vn"], note(number))
    finally:
        for client in clients:
            client.quit()
    total = CONNECTIONS * MESSAGES_PER_CONNECTION
    gateway.wait_events("delivered", total)
    ids = sorted(m.data.split(b"Message-ID: <")[1].split(b">")[0] for m in sink.messages)
    assert ids == sorted(f"proc-{n}@other.org".encode() for n in range(total)), "exactly once"
    queue_ids = [e["queue_id"] for e in gateway.events("message_accepted")]
    assert len(queue_ids) == total == len(set(queue_ids))
    assert {len(q) for q in queue_ids} == {27}, "each process's ids carry its PID"


def test_a_burst_of_long_connections_is_spread_evenly(
    make_gateway: Callable[..., Gateway], sink: Sink
) -> None:
    """A kernel hash (SO_REUSEPORT) splits 20 connections 14/6 as readily as 10/10; the
    processes share one socket and a busier one leaves the next connection to the other."""
    gateway = start_two(make_gateway, sink)
    with ThreadPoolExecutor(CONNECTIONS) as pool:
        clients = list(
            pool.map(
                lambda _: smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=30),
                range(CONNECTIONS),
            )
        )
    try:
        split = connections_by_process(gateway, gateway.inbound_port)
        assert sum(split) == CONNECTIONS and split[0] - split[1] <= 2, split
        for number, client in enumerate(clients):  # each process serves its share
            client.sendmail("a@other.org", ["bob@example.gov.vn"], note(number))
    finally:
        for client in clients:
            client.quit()
    gateway.wait_events("delivered", CONNECTIONS)


def test_a_stopped_helper_does_not_hold_up_new_connections(
    make_gateway: Callable[..., Gateway], sink: Sink
) -> None:
    """A helper that cannot accept (stopped, or too busy) looks idle on the board: the
    primary leaves each connection to it for a moment only, then takes it itself."""
    gateway = start_two(make_gateway, sink)
    [helper] = helpers(gateway)
    helper.suspend()
    clients = []
    try:
        started = time.monotonic()
        for _ in range(10):
            clients.append(smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=10))
        assert time.monotonic() - started < 5
        assert connections_by_process(gateway, gateway.inbound_port) == [10, 0]
        clients[0].sendmail("a@other.org", ["bob@example.gov.vn"], note(0))
    finally:
        helper.resume()
        for client in clients:
            client.quit()


def test_implicit_tls_and_starttls_work_in_every_process(
    make_gateway: Callable[..., Gateway], sink: Sink, tmp_path: Path
) -> None:
    import ssl

    tls = make_tls_files(tmp_path)
    gateway = make_gateway(sink.url, sink.url, smtp_extra={"processes": 2, **tls.smtp_extra()})
    gateway.start()
    wait_helpers(gateway, starts=1)
    port = gateway.implicit_tls_port
    context = ssl.create_default_context(cafile=str(tls.ca))
    clients = []
    try:
        for _ in range(6):
            client = smtplib.SMTP_SSL("127.0.0.1", port, context=context, timeout=30)
            assert client.ehlo()[0] == 250
            clients.append(client)
        assert connections_by_process(gateway, port) == [3, 3]
    finally:
        for client in clients:
            client.quit()
    for number in range(4):
        with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=30) as client:
            client.starttls(context=context)
            client.sendmail("a@other.org", ["bob@example.gov.vn"], note(number))
    gateway.wait_events("delivered", 4)


def test_metrics_sum_every_process(make_gateway: Callable[..., Gateway], sink: Sink) -> None:
    """/metrics is the primary's, but counts the helper's sessions and messages too; a
    helper that dies takes its open sessions off the gauge and leaves its counts."""
    port = free_port()
    gateway = start_two(make_gateway, sink, metrics_port=port)
    wait_for_port(port, process=gateway.process)
    sessions = ("mailgate_sessions_open", (("listener", "inbound"),))
    accepted = ("mailgate_messages_total", (("listener", "inbound"), ("outcome", "accepted")))
    clients = [
        smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=30) for _ in range(CONNECTIONS)
    ]
    try:
        assert len(serving_pids(gateway, gateway.inbound_port)) == 2, "one process served all"
        wait_until(lambda: scrape(port).get(sessions) == CONNECTIONS)
        for number, client in enumerate(clients):
            client.sendmail("a@other.org", ["bob@example.gov.vn"], note(number))
        gateway.wait_events("delivered", CONNECTIONS)
        wait_until(lambda: scrape(port).get(accepted) == CONNECTIONS)
        [helper] = helpers(gateway)
        held = held_by_process(gateway, gateway.inbound_port)[helper.pid]
        assert 0 < held < CONNECTIONS
        helper.kill()
        helper.wait(10)
        wait_until(lambda: scrape(port).get(sessions) == CONNECTIONS - held)
        assert scrape(port)[accepted] == CONNECTIONS, "a dead helper's messages still count"
    finally:
        for client in clients:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()
    wait_until(lambda: scrape(port).get(sessions) == 0)


def attachment(size: int) -> bytes:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "a@other.org", "bob@example.gov.vn", "file"
    mail.set_content("see the file")
    mail.add_attachment(b"x" * size, maintype="application", subtype="octet-stream")
    return mail.as_bytes().replace(b"\n", b"\r\n")


def test_sighup_reaches_the_helper(make_gateway: Callable[..., Gateway], sink: Sink) -> None:
    gateway = start_two(make_gateway, sink)
    body = attachment(4000)
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.sendmail("a@other.org", ["bob@example.gov.vn"], body)
    gateway.add_sections({"filters.attachment_cap": {"max_bytes": 1000}})
    gateway.signal(signal.SIGHUP)
    gateway.wait_events("config_reloaded", 2)  # the primary and the helper
    clients = [smtplib.SMTP("127.0.0.1", gateway.inbound_port) for _ in range(CONNECTIONS)]
    try:
        assert len(serving_pids(gateway, gateway.inbound_port)) == 2, "one process served all"
        for client in clients:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("a@other.org", ["bob@example.gov.vn"], body)
            assert b"[attachment_cap]" in refused.value.smtp_error
    finally:
        for client in clients:
            client.close()


def test_sigterm_stops_the_helper_and_a_killed_helper_is_replaced(
    make_gateway: Callable[..., Gateway], sink: Sink
) -> None:
    gateway = start_two(make_gateway, sink)
    # Edited without a SIGHUP: the replacement must still be one of two processes.
    gateway.write_config(gateway.config_path.read_text().replace("processes = 2", "processes = 1"))
    [first] = helpers(gateway)
    first.kill()
    first.wait(10)
    [second] = wait_helpers(gateway, starts=2)
    assert second.pid != first.pid
    event = gateway.wait_event("internal_error")
    assert event["reason"] == (
        f"SMTP helper PID {first.pid} exited (killed by SIGKILL); starting another in 1 s"
    )
    for n in range(CONNECTIONS):  # both processes still take mail
        with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
            client.sendmail("a@other.org", ["bob@example.gov.vn"], note(n))
    sink.wait_messages(CONNECTIONS)
    queue_ids = [e["queue_id"] for e in gateway.events("message_accepted")]
    assert {len(q) for q in queue_ids} == {27}, "both processes tag their queue ids"

    assert gateway.stop() == 0
    second.wait(10)  # raises TimeoutExpired if it outlived the primary
    assert not second.is_running()
    assert len(gateway.events("gateway_stop")) == 2


def test_a_helper_never_outlives_a_killed_primary_and_keeps_the_data_dir_locked(
    make_gateway: Callable[..., Gateway], sink: Sink
) -> None:
    """SIGKILL forwards nothing: PR_SET_PDEATHSIG gives the helper its SIGTERM. While it
    finishes a transaction, a new serve must not start (its spool recovery would delete
    the helper's message in progress): the helper holds the inherited lock."""
    gateway = start_two(make_gateway, sink)
    [helper] = helpers(gateway)
    clients = [RawClient(gateway.inbound_port) for _ in range(CONNECTIONS)]
    try:
        for client in clients:  # each in a transaction: the shutdown grace waits for it
            assert client.command("EHLO client.test").startswith("250")
            assert client.command("MAIL FROM:<a@other.org>").startswith("250")
        assert helper.pid in serving_pids(gateway, gateway.inbound_port)
        assert gateway.process is not None
        gateway.process.kill()
        gateway.process.wait()
        # The helper still holds the shared listening sockets...
        second = gateway.cli("serve", check=False)
        assert second.returncode == 2 and "already in use" in second.stdout
        # ... and on other ports, the data_dir lock.
        sections = gateway.sections()
        sections["smtp"].update(
            inbound_listen=f"127.0.0.1:{free_port()}", submission_listen=f"127.0.0.1:{free_port()}"
        )
        gateway.write_config(render_toml(sections))
        second = gateway.cli("serve", check=False)
        assert second.returncode == 2 and "is in use by mailgate PID" in second.stdout
    finally:
        for client in clients:
            client.close()
    helper.wait(40)  # raises TimeoutExpired if it keeps serving
    assert not helper.is_running()


def test_a_reload_while_a_helper_starts_does_not_kill_it(
    make_gateway: Callable[..., Gateway], sink: Sink
) -> None:
    """SIGHUP's default action is to exit: a helper ignores it until its loop handles it."""
    gateway = start_two(make_gateway, sink)
    [first] = helpers(gateway)
    first.kill()
    deadline = time.monotonic() + 15
    while len(gateway.events("gateway_start")) < 3 and time.monotonic() < deadline:
        gateway.signal(signal.SIGHUP)  # lands on the new helper at every stage of its start
        time.sleep(0.02)
    wait_helpers(gateway, starts=2)
    reasons = [e["reason"] for e in gateway.events("internal_error")]
    assert reasons == [
        f"SMTP helper PID {first.pid} exited (killed by SIGKILL); starting another in 1 s"
    ]


def test_a_helper_that_cannot_start_is_retried_ever_more_slowly(
    make_gateway: Callable[..., Gateway], sink: Sink
) -> None:
    """A config file broken since the start (no SIGHUP yet) must not mean an event a
    second; once it is fixed, the slot fills again."""
    gateway = start_two(make_gateway, sink)
    good = gateway.config_path.read_text()
    gateway.write_config(good + "\n[smtp\n")
    [first] = helpers(gateway)
    first.kill()
    failures = gateway.wait_events("internal_error", 3)
    delays = [e["reason"].rsplit("starting another in ", 1)[1] for e in failures[:3]]
    assert delays == ["1 s", "2 s", "4 s"]
    assert "exited (exit code 2)" in failures[1]["reason"], "refused the broken config"
    gateway.write_config(good)
    wait_helpers(gateway, starts=2)


@pytest.mark.parametrize("value", [0, 17, "two"])
def test_check_config_and_serve_refuse_a_bad_processes_value(
    make_gateway: Callable[..., Gateway], sink: Sink, value: object
) -> None:
    gateway = make_gateway(sink.url, sink.url, smtp_extra={"processes": value})
    checked = gateway.cli("check-config", "--skip-bind", check=False)
    assert checked.returncode == 1
    assert f"smtp.processes: expected an integer from 1 to 16, got {value!r}" in checked.stdout
    served = gateway.cli("serve", check=False)
    assert served.returncode == 2 and "smtp.processes" in served.stdout
