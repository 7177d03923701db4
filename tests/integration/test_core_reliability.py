"""The core's promises under stress, against a real gateway process: nothing that got a
250 is lost or doubled when uploads are long, next hops are slow, clients leave,
the gateway is told to stop, or a reload goes wrong."""

from __future__ import annotations

import contextlib
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.integration.harness import REPO, Gateway, RawClient, Sink, free_port, wait_for_port
from tests.integration.test_smtp_protocol import MESSAGE


def wait_until(condition, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not met within {timeout}s")


def send_in_background(port: int, recipients: list[str]) -> tuple[threading.Thread, dict]:
    """sendmail on a thread; the result dict gets the refusals or the exception."""
    result: dict = {}

    def run() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                result["refused"] = client.sendmail("a@other.org", recipients, MESSAGE)
        except Exception as exc:  # reported to the test, which asserts on it
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


# -- idle time is idle time only ------------------------------------------------------------


def test_a_steady_upload_longer_than_idle_timeout_is_not_cut(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(sink.url, sink.url, smtp_extra={"idle_timeout": 1}).start()
    client = RawClient(gateway.inbound_port)
    client.envelope()
    client.send(b"Subject: slow upload\r\n\r\n")
    for _ in range(12):  # 2.4 s of upload, never 1 s without a byte
        client.send(b"a line of a long upload\r\n")
        time.sleep(0.2)
    client.send(b".\r\n")
    assert client.reply().startswith("250 2.0.0")
    client.close()
    (received,) = sink.wait_messages(1)
    assert received.data.count(b"a line of a long upload") == 12


def test_a_next_hop_slower_than_idle_timeout_is_waited_for(make_gateway, sink: Sink) -> None:
    sink.handler.data_delay = 2.5
    gateway = make_gateway(sink.url, sink.url, smtp_extra={"idle_timeout": 1}).start()
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=30) as client:
        assert client.sendmail("a@other.org", ["bob@example.gov.vn"], MESSAGE) == {}
        assert client.noop()[0] == 250  # the session is still alive after the relay
    assert len(sink.messages) == 1


def test_a_silent_client_is_still_cut_by_idle_timeout(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(sink.url, sink.url, smtp_extra={"idle_timeout": 1}).start()
    client = RawClient(gateway.inbound_port)
    client.envelope()
    client.send(b"Subject: stalled\r\n")  # then nothing
    started = time.monotonic()
    with contextlib.suppress(ConnectionError, OSError):
        client.reply()
    assert time.monotonic() - started < 5
    event = gateway.wait_event("protocol_error", lambda e: "idle" in e["reason"])
    assert "[smtp.idle_timeout]" in event["reason"]
    assert sink.messages == []


# -- the relay outlives its client ------------------------------------------------------------


def test_client_leaving_during_relay_loses_nothing_and_is_recorded(
    make_gateway, sink: Sink
) -> None:
    sink.handler.data_delay = 1.5
    gateway = make_gateway(sink.url, sink.url).start()
    client = RawClient(gateway.inbound_port)
    client.envelope()
    client.send(MESSAGE + b".\r\n")
    assert sink.handler.data_started.wait(10)
    client.close()  # gone before the gateway could answer
    accepted = gateway.wait_event("message_accepted")
    gone = gateway.wait_event("client_gone")
    assert gone["queue_id"] == accepted["queue_id"] and gone["code"] == 250
    assert len(sink.messages) == 1
    assert gateway.events("relay_cancelled") == []


def test_sigterm_mid_relay_finishes_the_relay_before_stopping(make_gateway, sink: Sink) -> None:
    sink.handler.data_delay = 2.0
    gateway = make_gateway(sink.url, sink.url).start()
    thread, result = send_in_background(gateway.inbound_port, ["bob@example.gov.vn"])
    assert sink.handler.data_started.wait(10)
    gateway.signal(signal.SIGTERM)
    thread.join(30)
    assert result == {"refused": {}}, "the sender must get its 250"
    assert gateway.stop() == 0
    assert len(sink.messages) == 1
    names = [e["event"] for e in gateway.events()]
    assert names.index("message_accepted") < names.index("gateway_stop")


def test_sigterm_lets_a_queue_attempt_under_way_finish(make_gateway, sink: Sink) -> None:
    """The queue worker was cancelled at once on SIGTERM: an attempt cut after the next
    hop took the message (state not yet saved) would send it again after a restart."""
    sink.handler.rcpt_replies["bob@example.gov.vn"] = "451 4.3.0 not now"
    gateway = make_gateway(sink.url, sink.url).start()
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        # carol gets it now, bob's copy is spooled: the client gets 250
        client.sendmail("a@other.org", ["bob@example.gov.vn", "carol@example.gov.vn"], MESSAGE)
    assert len(gateway.queued_entries()) == 1
    sink.handler.data_started.clear()
    sink.handler.data_delay = 2.0
    sink.handler.rcpt_replies.clear()
    assert sink.handler.data_started.wait(15), "the queue's retry reached DATA"
    gateway.signal(signal.SIGTERM)
    assert gateway.stop() == 0
    assert [m.recipients for m in sink.messages] == [
        ["carol@example.gov.vn"],
        ["bob@example.gov.vn"],
    ]
    assert gateway.queued_entries() == [], "the attempt finished and its entry is gone"


def test_sigterm_closes_idle_sessions_at_once(gateway: Gateway) -> None:
    """A client keeping an idle connection open held the shutdown for the whole 30 s."""
    client = RawClient(gateway.inbound_port)
    assert client.command("EHLO client.test").startswith("250")
    started = time.monotonic()
    gateway.signal(signal.SIGTERM)
    assert client.reply().startswith("421 4.3.2")
    client.close()
    assert gateway.stop() == 0
    assert time.monotonic() - started < 10


# -- duplicate recipients -------------------------------------------------------------------


def test_a_recipient_named_twice_gets_one_copy(gateway: Gateway, sink: Sink) -> None:
    client = RawClient(gateway.inbound_port)
    client.command("EHLO client.test")
    assert client.command("MAIL FROM:<a@other.org>").startswith("250")
    for rcpt in ("bob@example.gov.vn", "bob@EXAMPLE.gov.vn", "BOB@example.gov.vn"):
        assert client.command(f"RCPT TO:<{rcpt}>").startswith("250")
    assert client.command("DATA").startswith("354")
    client.send(MESSAGE + b".\r\n")
    assert client.reply().startswith("250")
    client.close()
    (received,) = sink.wait_messages(1)
    assert received.recipients == ["bob@example.gov.vn"]
    assert gateway.wait_event("message_accepted")["recipients"] == ["bob@example.gov.vn"]


# -- reloads --------------------------------------------------------------------------------


def test_a_sighup_as_soon_as_the_ports_answer_reloads_instead_of_killing(
    make_gateway: Callable[..., Gateway], sink: Sink
) -> None:
    """SIGHUP's default action is to exit: the handlers are in place before any port
    answers (a reload sent right after start killed the gateway now and then)."""
    for _ in range(5):
        gateway = make_gateway(sink.url, sink.url).start()  # returns once the ports answer
        gateway.signal(signal.SIGHUP)
        gateway.wait_event("config_reloaded")
        assert gateway.process is not None and gateway.process.poll() is None
        assert gateway.stop() == 0


def test_sighup_with_a_value_python_chokes_on_keeps_serving(gateway: Gateway, sink: Sink) -> None:
    """A NUL byte in a path made Python raise ValueError in the reload task, which took
    the whole TaskGroup, and so the gateway, down."""
    good = gateway.config_path.read_text()
    gateway.config_path.write_text(good.replace('dir = "var/log"', 'dir = "var/lo\\u0000g"'))
    gateway.signal(signal.SIGHUP)
    rejected = gateway.wait_event("config_rejected")
    assert "log.dir" in rejected["reason"]
    assert gateway.process is not None and gateway.process.poll() is None
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.sendmail("a@other.org", ["bob@example.gov.vn"], MESSAGE)
    assert len(sink.wait_messages(1)) == 1


def _tls_pair(workdir: Path, name: str) -> tuple[Path, Path, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", common_name=name)
    cert_path, key_path = workdir / f"{name}.pem", workdir / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(cert_path)
    cert.private_key_pem.write_to_path(key_path)
    return cert_path, key_path, name


def _served_common_name(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    subject = x509.load_der_x509_certificate(der).subject
    return str(subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_certificate_rotation_reaches_the_implicit_tls_listener(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(sink.url, sink.url)
    cert, key, _ = _tls_pair(gateway.workdir, "first.test")
    tls_port = free_port()
    gateway.smtp_extra.update(
        {
            "tls_cert": str(cert),
            "tls_key": str(key),
            "submission_tls_listen": f"127.0.0.1:{tls_port}",
        }
    )
    gateway.write_config()
    gateway.start()
    wait_for_port(tls_port)
    assert _served_common_name(tls_port) == "first.test"
    new_cert, new_key, _ = _tls_pair(gateway.workdir, "second.test")
    shutil.copy(new_cert, cert)  # rotated in place, as certbot does
    shutil.copy(new_key, key)
    gateway.signal(signal.SIGHUP)
    gateway.wait_event("config_reloaded")
    assert _served_common_name(tls_port) == "second.test"


# -- connection limits per listener -----------------------------------------------------------


def test_a_flood_on_inbound_leaves_room_for_submission(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(
        sink.url,
        sink.url,
        smtp_extra={"max_connections": 4, "max_connections_per_listener": 2},
    ).start()
    flood = [RawClient(gateway.inbound_port) for _ in range(2)]
    with socket.create_connection(("127.0.0.1", gateway.inbound_port), timeout=5) as third:
        refusal = third.recv(1024).decode()
    assert refusal.startswith("421 4.7.0") and "[smtp.max_connections_per_listener]" in refusal
    mail_client = RawClient(gateway.submission_port)
    assert mail_client.greeting.startswith("220")
    mail_client.close()
    for client in flood:
        client.close()
    event = gateway.wait_event("connection_refused")
    assert event["listener"] == "inbound" and "max_connections_per_listener" in event["reason"]


# -- the shipped default config, end to end ---------------------------------------------------


def test_serve_on_the_shipped_default_config(tmp_path: Path) -> None:
    """What README's first command does: init, add a mailbox, serve, mail arrives in var/."""
    config_dir = tmp_path / "config"
    shutil.copytree(REPO / "config", config_dir, ignore=shutil.ignore_patterns("tls", "var"))
    config = config_dir / "gateway.toml"
    mailgate = [str(REPO / ".venv" / "bin" / "mailgate"), "-c", str(config)]
    shipped = tomllib.loads(config.read_text())
    inbound = shipped["smtp"]["inbound_listen"]
    host, port = inbound.rsplit(":", 1)
    subprocess.run([*mailgate, "init"], check=True, capture_output=True, timeout=60)
    subprocess.run(
        [*mailgate, "mailbox", "add", "nvan@example.gov.vn", "--name", "Nguyễn Văn An"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen([*mailgate, "serve"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(int(port), process=process)
        with smtplib.SMTP(host, int(port)) as client:
            client.sendmail("x@other.org", ["nvan@example.gov.vn"], MESSAGE)
        maildir = config_dir / shipped["gateway"]["data_dir"] / "mail"
        new = maildir / "example.gov.vn" / "nvan" / "new"
        wait_until(lambda: new.exists() and any(new.iterdir()), what="delivery to Maildir")
        (stored,) = list(new.iterdir())
        assert stored.read_bytes().endswith(MESSAGE)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0
        log.close()
    assert b"Traceback" not in (tmp_path / "serve.log").read_bytes()
