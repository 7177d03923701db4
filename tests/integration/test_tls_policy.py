"""The TLS policy of both TLS listeners (TLS 1.2+ with AEAD only, refusals with an alert
and an event), and implicit-TLS connections counted from their first byte."""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import subprocess
import time
import warnings
from pathlib import Path

import pytest

from gateway.smtp import replies
from tests.integration.harness import Gateway, Sink, TLSFiles, make_tls_files

HOSTNAME = "mx.example.gov.vn"
AEAD_TLS12 = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
CBC_ONLY = "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:AES128-SHA"


@pytest.fixture
def tls(tmp_path: Path) -> TLSFiles:
    return make_tls_files(tmp_path, HOSTNAME)


def tls_gateway(make_gateway, sink: Sink, tls: TLSFiles, **smtp: object) -> Gateway:
    return make_gateway(sink.url, sink.url, smtp_extra={**tls.smtp_extra(), **smtp}).start()


def client_context(tls: TLSFiles, kind: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(tls.ca)
    if kind == "aead12":
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(AEAD_TLS12)
    elif kind == "cbc12":
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(CBC_ONLY)
    elif kind == "tls11":
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS 1.1 only so
        with warnings.catch_warnings():  # deprecated: that is the point of the test
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
    else:
        raise ValueError(kind)
    return context


def read_reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or data.split(b"\r\n")[-2][3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closes or resets ``sock`` without a byte (socket.timeout
    propagates: the server kept it open)."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def handshake(gateway: Gateway, context: ssl.SSLContext, implicit: bool) -> ssl.SSLSocket:
    """A TLS session on the implicit-TLS port, or on submission after STARTTLS."""
    port = gateway.implicit_tls_port if implicit else gateway.submission_port
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        if not implicit:
            assert read_reply(raw).startswith(b"220")
            raw.sendall(b"EHLO client.test\r\n")
            assert b"STARTTLS" in read_reply(raw)
            raw.sendall(b"STARTTLS\r\n")
            assert read_reply(raw).startswith(b"220")
        return context.wrap_socket(raw, server_hostname=HOSTNAME)
    except BaseException:
        raw.close()
        raise


@pytest.mark.parametrize("implicit", [True, False], ids=["submissions", "starttls"])
def test_tls12_aead_accepted_cbc_and_tls11_refused(
    make_gateway, sink: Sink, tls: TLSFiles, implicit: bool
) -> None:
    gateway = tls_gateway(make_gateway, sink, tls)
    listener = "submissions" if implicit else "submission"

    with handshake(gateway, client_context(tls, "aead12"), implicit) as good:
        assert good.version() == "TLSv1.2"
        cipher = good.cipher()[0]
        assert "GCM" in cipher or "CHACHA20" in cipher, cipher
        if implicit:
            assert read_reply(good).startswith(b"220")
        good.sendall(b"EHLO client.test\r\n")
        assert b"AUTH" in read_reply(good)

    with pytest.raises(ssl.SSLError) as cbc:
        handshake(gateway, client_context(tls, "cbc12"), implicit).close()
    gateway.wait_events("tls_failed", 1, lambda e: e["listener"] == listener)

    with pytest.raises(ssl.SSLError) as old:
        handshake(gateway, client_context(tls, "tls11"), implicit).close()
    # Told why by an alert (handshake failure, protocol version), not a reset or an EOF.
    assert "alert handshake failure" in str(cbc.value), repr(cbc.value)
    assert "alert protocol version" in str(old.value), repr(old.value)
    failures = gateway.wait_events("tls_failed", 2, lambda e: e["listener"] == listener)

    for event in failures:
        assert event["client"] == "127.0.0.1"
        assert event["reason"], event
    assert "Traceback" not in gateway.serve_log()
    # The listener still serves.
    with handshake(gateway, client_context(tls, "aead12"), implicit) as again:
        assert again.version() == "TLSv1.2"


def test_openssl_s_client_tls11_gets_a_protocol_alert(
    make_gateway, sink: Sink, tls: TLSFiles
) -> None:
    gateway = tls_gateway(make_gateway, sink, tls)
    result = subprocess.run(
        [
            "openssl", "s_client", "-connect", f"127.0.0.1:{gateway.implicit_tls_port}",
            "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", "-CAfile", str(tls.ca),
        ],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15,
    )  # fmt: skip
    assert result.returncode != 0
    assert "alert protocol version" in result.stderr, result.stderr
    event = gateway.wait_event("tls_failed")
    assert event["client"] == "127.0.0.1" and event["listener"] == "submissions"
    assert "Traceback" not in gateway.serve_log()


def test_implicit_tls_connections_count_before_the_handshake(
    make_gateway, sink: Sink, tls: TLSFiles
) -> None:
    gateway = tls_gateway(make_gateway, sink, tls, max_connections_per_client=3)
    port = gateway.implicit_tls_port
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        fourth = socket.create_connection(("127.0.0.1", port), timeout=5)
        started = time.monotonic()
        with fourth:
            assert closed_by_server(fourth)
        assert time.monotonic() - started < 3, "refused at once, not at the handshake timeout"
        refused = gateway.wait_event("connection_refused")
        assert "smtp.max_connections_per_client" in refused["reason"]
        assert refused["listener"] == "submissions" and refused["client"] == "127.0.0.1"

        # The limit counts a client on every listener: the plain port refuses it too.
        with socket.create_connection(("127.0.0.1", gateway.inbound_port), timeout=5) as plain:
            assert read_reply(plain).startswith(b"421 4.7.0 ")

        silent.pop().close()
        gateway.wait_event("tls_failed", lambda e: e["listener"] == "submissions")
        with smtplib.SMTP_SSL(
            "127.0.0.1", port, context=client_context(tls, "aead12"), timeout=10
        ) as client:
            assert client.noop()[0] == 250
    finally:
        for sock in silent:
            sock.close()
    assert "Traceback" not in gateway.serve_log()


def test_silent_client_is_cut_at_the_handshake_bound(
    make_gateway, sink: Sink, tls: TLSFiles
) -> None:
    gateway = tls_gateway(make_gateway, sink, tls)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gateway.implicit_tls_port), timeout=14) as quiet:
        assert closed_by_server(quiet)
    elapsed = time.monotonic() - started
    assert 5 < elapsed < 12.5, f"closed after {elapsed:.1f}s; the handshake bound is 10 s"
    event = gateway.wait_event("tls_failed", timeout=3)
    assert event["client"] == "127.0.0.1" and event["listener"] == "submissions"
    assert event["reason"]
    assert "Traceback" not in gateway.serve_log()


def test_plain_port_names_the_per_client_limit(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(sink.url, sink.url, smtp_extra={"max_connections_per_client": 3})
    gateway.start()
    held = [socket.create_connection(("127.0.0.1", gateway.inbound_port), timeout=5)]
    try:
        for _ in range(2):
            held.append(socket.create_connection(("127.0.0.1", gateway.inbound_port), timeout=5))
        for sock in held:
            assert read_reply(sock).startswith(b"220")
        with socket.create_connection(("127.0.0.1", gateway.inbound_port), timeout=5) as extra:
            reply = read_reply(extra).decode().rstrip("\r\n")
            assert extra.recv(1024) == b"", "then the connection is closed"
    finally:
        for sock in held:
            sock.close()
    assert reply == str(replies.TOO_MANY_CONNECTIONS.with_rule("smtp.max_connections_per_client"))
    assert reply.startswith("421 4.7.0 ")
    event = gateway.wait_event("connection_refused")
    assert event["listener"] == "inbound" and "smtp.max_connections_per_client" in event["reason"]


def close_in_the_handshakes_last_segment(port: int, ca: Path) -> None:
    """Finish the TLS handshake and send close_notify in the same segment: the session's
    coroutine is cancelled before it starts (a TLS health probe does this)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=HOSTNAME)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    raw.sendall(outgoing.read())
                data = raw.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                incoming.write(data)
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.unwrap()
        raw.sendall(outgoing.read())  # the client's Finished and close_notify together
        closed_by_server(raw)


def test_connections_closed_at_once_give_their_slots_back(
    make_gateway, sink: Sink, tls: TLSFiles
) -> None:
    """The review found each such connection kept its slot for ever: three of them locked
    the client out of every listener until a restart."""
    gateway = tls_gateway(make_gateway, sink, tls, max_connections_per_client=3)
    for _ in range(3):
        close_in_the_handshakes_last_segment(gateway.implicit_tls_port, tls.ca)
    deadline = time.monotonic() + 10
    greeting = b""
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", gateway.inbound_port), timeout=5) as plain:
            greeting = read_reply(plain)
        if greeting.startswith(b"220"):
            break
        time.sleep(0.1)
    assert greeting.startswith(b"220"), greeting
    assert "Traceback" not in gateway.serve_log()
