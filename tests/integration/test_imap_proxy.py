"""The IMAP proxy end to end: imaplib and raw sockets -> the gateway's proxy -> a private
Dovecot (master user, trusted network), mail delivered through the gateway's SMTP side."""

from __future__ import annotations

import base64
import imaplib
import os
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.directory.mailboxes import Directory, Registration
from tests.integration.dovecot import PrivateDovecot
from tests.integration.harness import Gateway, Sink, free_port, make_tls_files, wait_for_port

AN, CHI = "an@example.gov.vn", "chi@example.gov.vn"
PASSWORDS = {AN: "Kx7-Lop-Vuot-2026", CHI: "Quy-9-Bien-Xa-2026"}
MASTER = "mg-proxy-master"  # must never reach a client
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDovecot]:
    with PrivateDovecot(
        tmp_path_factory.mktemp("dovecot"), PASSWORDS, master_user=MASTER
    ) as server:
        yield server


def proxy_gateway(
    make_gateway: Callable[..., Gateway],
    dovecot: PrivateDovecot,
    sink: Sink,
    *,
    upstream_port: int | None = None,
    smtp_extra: dict[str, object] | None = None,
    **imap: object,
) -> Gateway:
    gateway = make_gateway(
        f"lmtp://127.0.0.1:{dovecot.lmtp_port}", sink.url, mailboxes=(), smtp_extra=smtp_extra or {}
    )
    secret = gateway.workdir / "imap-master"
    secret.write_text(dovecot.master_password + "\n", encoding="utf-8")
    os.chmod(secret, 0o600)
    gateway.imap_port = free_port()
    gateway.add_sections(
        {
            "imap": {
                "listen": f"127.0.0.1:{gateway.imap_port}",
                "upstream": f"127.0.0.1:{upstream_port or dovecot.imap_port}",
                "upstream_master_user": MASTER,
                "upstream_master_password_file": str(secret),
                "require_tls_for_auth": False,
                "check_interval": 0.5,
                **imap,
            }
        }
    )
    directory = Directory.for_data_dir(gateway.workdir / "var")
    try:
        for address, password in PASSWORDS.items():
            directory.add(Registration(address, address.split("@")[0]), password)
    finally:
        directory.close()
    gateway.start()
    # serve binds SMTP first: under load the proxy's port can lag behind (connection refused)
    wait_for_port(gateway.imap_port, process=gateway.process)
    if imap.get("listen_tls"):
        wait_for_port(int(str(imap["listen_tls"]).rsplit(":", 1)[1]), process=gateway.process)
    return gateway


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway], dovecot: PrivateDovecot, sink: Sink) -> Gateway:
    return proxy_gateway(make_gateway, dovecot, sink)


def deliver(gateway: Gateway, to: str, subject: str, body: str = "Nội dung.") -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "x@other.gov.vn", to, subject
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=60) as client:
        client.send_message(message)


class Raw:
    """A line-level IMAP client for what imaplib cannot send (literals, SASL-IR, IDLE)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.seen = b""
        self.greeting = self.line()

    def line(self) -> bytes:
        data = self.file.readline()
        if not data:
            raise ConnectionError("closed")
        self.seen += data
        return data.rstrip(b"\r\n")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            lines.append(self.line())
            if lines[-1].startswith(tag + b" "):
                return lines

    def login(self, user: str = AN, tag: bytes = b"a") -> list[bytes]:
        """LOGIN as ``user``; the lines up to its tagged reply."""
        self.send(tag + b" LOGIN " + user.encode() + b" " + PASSWORDS[user].encode() + b"\r\n")
        return self.until(tag)

    def close(self) -> None:
        self.sock.close()


def login(gateway: Gateway, user: str = AN) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", gateway.imap_port, timeout=10)
    client.login(user, PASSWORDS[user])
    return client


def test_login_select_fetch_through_the_proxy(gateway: Gateway, dovecot: PrivateDovecot) -> None:
    deliver(gateway, AN, "Giấy mời họp")
    with login(gateway) as client:
        assert "IMAP4REV1" in client.capabilities  # the store's list, sent with LOGIN's OK
        typ, data = client.select("INBOX")
        assert typ == "OK" and int(data[0]) >= 1
        typ, parts = client.fetch(data[0], "(BODY.PEEK[])")
        assert typ == "OK" and b"Subject: =?utf-8?b?" in parts[0][1]
        client.logout()
    success = gateway.wait_event("auth_success", lambda e: e.get("listener") == "imap")
    assert success["user"] == AN and success["mechanism"] == "LOGIN"
    end = gateway.wait_event(
        "session_end", lambda e: e.get("listener") == "imap" and e.get("user") == AN
    )
    assert end["bytes_to_client"] > 500 and end["bytes_from_client"] > 20
    directory = Directory.for_data_dir(gateway.workdir / "var")
    try:
        assert directory.require(AN).last_access is not None  # MOST 13.3 counts IMAP too
    finally:
        directory.close()
    log = (dovecot.workdir / "dovecot.log").read_text(errors="replace")
    # ID was believed (trusted network): Dovecot logs the proxy's session id as its own.
    assert f"session=<{success['session']}>" in log


def test_nothing_the_client_sees_names_the_master_user(gateway: Gateway) -> None:
    raw = Raw(gateway.imap_port)
    raw.send(b"a ID NIL\r\nb LOGIN an@example.gov.vn " + PASSWORDS[AN].encode() + b"\r\n")
    raw.until(b"b")
    raw.send(b"c CAPABILITY\r\nd NAMESPACE\r\ne LOGOUT\r\n")
    raw.until(b"e")
    raw.close()
    assert b"OK" in raw.seen and MASTER.encode() not in raw.seen


def test_wrong_password_unknown_user_and_lock(gateway: Gateway) -> None:
    for user in (AN, "nobody@example.gov.vn"):
        client = imaplib.IMAP4("127.0.0.1", gateway.imap_port, timeout=10)
        with pytest.raises(imaplib.IMAP4.error, match=r"AUTHORIZATIONFAILED.*\[auth\]"):
            client.login(user, "Wrong-Password-1")
        client.shutdown()
    failure = gateway.wait_event("auth_failure", lambda e: e.get("listener") == "imap")
    assert failure["reason"] == "invalid credentials"
    gateway.cli("mailbox", "lock", AN, "--reason", "lộ mật khẩu")
    client = imaplib.IMAP4("127.0.0.1", gateway.imap_port, timeout=10)
    with pytest.raises(imaplib.IMAP4.error, match="Mailbox locked, contact the operator"):
        client.login(AN, PASSWORDS[AN])
    client.shutdown()
    text = (gateway.workdir / "serve.log").read_text(errors="replace")
    assert PASSWORDS[AN] not in text and "Wrong-Password-1" not in text
    assert all(PASSWORDS[AN] not in str(e) for e in gateway.events())


def test_literals_and_sasl_ir_and_continuations(gateway: Gateway) -> None:
    password = PASSWORDS[AN].encode()
    raw = Raw(gateway.imap_port)  # synchronising literal: the proxy asks for it with "+"
    raw.send(b"a LOGIN {17}\r\n")
    assert raw.line().startswith(b"+")
    raw.send(b"an@example.gov.vn {" + str(len(password)).encode() + b"+}\r\n" + password + b"\r\n")
    assert raw.until(b"a")[-1].startswith(b"a OK")
    raw.close()
    token = base64.b64encode(b"\0chi@example.gov.vn\0" + PASSWORDS[CHI].encode())
    raw = Raw(gateway.imap_port)  # SASL-IR
    raw.send(b"a AUTHENTICATE PLAIN " + token + b"\r\n")
    assert raw.until(b"a")[-1].startswith(b"a OK")
    raw.close()
    client = imaplib.IMAP4("127.0.0.1", gateway.imap_port, timeout=10)  # continuation
    typ, _ = client.authenticate(
        "PLAIN", lambda _: b"\0" + CHI.encode() + b"\0" + PASSWORDS[CHI].encode()
    )
    assert typ == "OK"
    client.logout()
    raw = Raw(gateway.imap_port)  # an oversized literal before login: BAD and closed
    raw.send(b"a LOGIN {999999}\r\n")
    assert raw.line().startswith(b"* BAD")
    with pytest.raises(ConnectionError):
        raw.line()


def test_idle_sees_new_mail(gateway: Gateway) -> None:
    raw = Raw(gateway.imap_port)
    raw.login()
    raw.send(b"b SELECT INBOX\r\n")
    raw.until(b"b")
    raw.send(b"c IDLE\r\n")
    assert raw.line().startswith(b"+")
    deliver(gateway, AN, "Thông báo mới")
    raw.sock.settimeout(15)
    while not raw.line().endswith(b"EXISTS"):
        pass
    raw.send(b"DONE\r\n")
    assert raw.until(b"c")[-1].startswith(b"c OK")
    raw.close()


def test_locking_a_mailbox_ends_its_open_session(gateway: Gateway) -> None:
    client = login(gateway)
    client.select("INBOX")
    gateway.cli("mailbox", "lock", AN, "--reason", "nghỉ việc")
    deadline = time.monotonic() + 5
    with pytest.raises((imaplib.IMAP4.abort, OSError, imaplib.IMAP4.error)):
        while time.monotonic() < deadline:
            client.noop()
            time.sleep(0.2)
    assert time.monotonic() < deadline, "the session outlived the lock"
    end = gateway.wait_event("session_end", lambda e: e.get("user") == AN)
    assert "locked" in end["reason"] and "nghỉ việc" in end["reason"]


def test_login_before_tls_is_refused_and_starttls_and_imaps_work(
    make_gateway: Callable[..., Gateway], dovecot: PrivateDovecot, sink: Sink, tmp_path: Path
) -> None:
    files = make_tls_files(tmp_path)
    imaps = free_port()
    gateway = proxy_gateway(
        make_gateway, dovecot, sink, smtp_extra={"tls_cert": str(files.cert),
        "tls_key": str(files.key)}, require_tls_for_auth=True, listen_tls=f"127.0.0.1:{imaps}",
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(files.ca))
    context.check_hostname = False
    client = imaplib.IMAP4("127.0.0.1", gateway.imap_port, timeout=10)
    assert {"STARTTLS", "LOGINDISABLED"} <= set(client.capabilities)
    with pytest.raises(imaplib.IMAP4.error, match=r"PRIVACYREQUIRED"):
        client.login(AN, PASSWORDS[AN])
    client.starttls(context)
    assert "LOGINDISABLED" not in client.capabilities and "AUTH=PLAIN" in client.capabilities
    assert client.login(AN, PASSWORDS[AN])[0] == "OK"
    client.logout()
    with imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=context, timeout=10) as secure:
        assert secure.login(CHI, PASSWORDS[CHI])[0] == "OK"
        secure.logout()
    listeners = {e["listener"] for e in gateway.events("auth_success")}
    assert listeners == {"imap", "imaps"}
    raw = Raw(gateway.imap_port)  # plain text pipelined behind STARTTLS is an injection
    raw.send(b"a STARTTLS\r\nb LOGIN an@example.gov.vn x\r\n")
    assert raw.line().startswith(b"a BAD")


def test_upstream_down_is_unavailable_within_seconds(
    make_gateway: Callable[..., Gateway], dovecot: PrivateDovecot, sink: Sink
) -> None:
    gateway = proxy_gateway(make_gateway, dovecot, sink, upstream_port=free_port())
    client = imaplib.IMAP4("127.0.0.1", gateway.imap_port, timeout=10)
    started = time.monotonic()
    with pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE"):
        client.login(AN, PASSWORDS[AN])
    assert time.monotonic() - started < 6
    client.shutdown()
    event = gateway.wait_event("upstream_unavailable")
    assert event["user"] == AN and "[imap]" in event["reason"]


def test_an_endless_line_gets_bad_and_others_are_served(gateway: Gateway) -> None:
    bad = Raw(gateway.imap_port)
    other = login(gateway)
    bad.send(b"a LOGIN " + b"x" * 100_000)
    assert bad.line().startswith(b"* BAD")
    with pytest.raises(ConnectionError):
        bad.line()
    assert other.noop()[0] == "OK"
    other.logout()
    raw = Raw(gateway.imap_port)
    raw.send(b'a LOGIN "unterminated\r\n')
    assert raw.line().startswith(b"* BAD Malformed")


def test_a_10_mb_fetch_arrives_intact(gateway: Gateway, dovecot: PrivateDovecot) -> None:
    payload = os.urandom(10 * MIB)
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "x@other.gov.vn", CHI, "Bản đồ"
    message.set_content("Kèm theo.")
    message.add_attachment(
        payload, maintype="application", subtype="octet-stream", filename="a.bin"
    )
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=120) as smtp:
        smtp.send_message(message)
    direct = dovecot.fetch_messages(CHI, PASSWORDS[CHI])[-1]
    with login(gateway, CHI) as client:
        _, data = client.select("INBOX", readonly=True)
        _, parts = client.fetch(data[0], "(BODY.PEEK[])")
        client.logout()
    assert parts[0][1] == direct and len(direct) > 13 * MIB


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_client_that_stops_reading_is_not_buffered_in_memory(gateway: Gateway) -> None:
    """Back-pressure: the store is held back, the proxy keeps about a buffer's worth."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "x@other.gov.vn", AN, "Lớn"
    message.set_content("Kèm theo.")
    message.add_attachment(
        os.urandom(12 * MIB), maintype="application", subtype="octet-stream", filename="b.bin"
    )
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=120) as smtp:
        smtp.send_message(message)
    raw = Raw(gateway.imap_port)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    raw.login()
    raw.send(b"b SELECT INBOX\r\n")
    exists = next(line for line in raw.until(b"b") if line.endswith(b"EXISTS"))
    assert gateway.process is not None
    before = rss_kib(gateway.process.pid)
    raw.send(b"c FETCH " + exists.split()[1] + b" (BODY.PEEK[])\r\n")
    time.sleep(1.5)  # not reading: the proxy must stop reading the store too
    grown = rss_kib(gateway.process.pid) - before
    assert grown < 6 * 1024, f"serve grew by {grown} KiB for a client that reads nothing"
    received = 0
    raw.sock.settimeout(30)
    while received < 16 * MIB:  # and everything still arrives once the client reads
        chunk = raw.sock.recv(1 << 20)
        assert chunk
        received += len(chunk)
        if chunk.rstrip().endswith(b"c OK Fetch completed."):
            break
    assert received > 16 * MIB
    raw.close()


def test_a_password_that_must_change_gets_an_alert_or_a_refusal(
    make_gateway: Callable[..., Gateway], dovecot: PrivateDovecot, sink: Sink
) -> None:
    for refuse in (False, True):
        gateway = proxy_gateway(make_gateway, dovecot, sink, refuse_must_change=refuse)
        directory = Directory.for_data_dir(gateway.workdir / "var")
        try:
            directory.set_password(CHI, PASSWORDS[CHI], must_change=True)
        finally:
            directory.close()
        raw = Raw(gateway.imap_port)
        lines = raw.login(CHI)
        raw.close()
        if refuse:
            assert lines[-1].startswith(b"a NO [EXPIRED]") and b"MOST 15.2" in lines[-1]
            refused = gateway.wait_event("login_refused")
            assert "[imap.refuse_must_change]" in refused["reason"]
        else:
            assert any(line.startswith(b"* OK [ALERT]") for line in lines)
            assert lines[-1].startswith(b"a OK")
        gateway.stop()
