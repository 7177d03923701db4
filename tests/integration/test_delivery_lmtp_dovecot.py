"""The LMTP client against the real Dovecot: one reply per RCPT command, and unix sockets."""

from __future__ import annotations

import smtplib
import stat
import time
from collections.abc import Iterator

import pytest

from gateway.delivery.client import ConnectionPool, Hop
from gateway.spool import Body
from tests.integration.dovecot import PrivateDovecot
from tests.integration.harness import Gateway, Sink

ALICE, BOB = "alice@example.gov.vn", "bob@example.gov.vn"
PASSWORDS = {ALICE: "Alice-pass-1", BOB: "Bob-pass-22"}


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDovecot]:
    with PrivateDovecot(tmp_path_factory.mktemp("dovecot"), PASSWORDS) as server:
        yield server


def subjects(dovecot: PrivateDovecot, address: str, want: set[bytes]) -> list[bytes]:
    """The Subject lines in the mailbox, once every one in ``want`` is there (or 10 s passed)."""
    deadline = time.monotonic() + 10
    while True:
        found = [
            m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]
            for m in dovecot.fetch_messages(address, PASSWORDS[address])
            if b"Subject: " in m
        ]
        if want <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


async def test_duplicate_recipient_then_next_message_on_the_same_connection(
    dovecot: PrivateDovecot,
) -> None:
    """Dovecot answers both RCPT commands for ALICE (and stores one copy); reading only one
    reply used to leave the other to be read as the next message's MAIL reply: that message
    got a 250 and was never stored."""
    pool = ConnectionPool(Hop("127.0.0.1", dovecot.lmtp_port, lmtp=True), "mx.test", 10.0, 2)
    try:
        first = await pool.send(
            "x@other.org", [ALICE, ALICE], Body.from_bytes(b"Subject: dup-1\r\n\r\none\r\n")
        )
        (conn,) = pool._idle
        second = await pool.send(
            "x@other.org", [ALICE], Body.from_bytes(b"Subject: dup-2\r\n\r\ntwo\r\n")
        )
        assert pool._idle == [conn], "the second message went over the same pooled connection"
    finally:
        await pool.close()
    assert first[ALICE].code == second[ALICE].code == 250
    found = subjects(dovecot, ALICE, {b"dup-1", b"dup-2"})
    assert found.count(b"dup-1") == 1, "Dovecot stores a duplicated recipient once"
    assert found.count(b"dup-2") == 1, "the second message is stored, not just answered 250"


def test_gateway_delivers_over_dovecots_unix_lmtp_socket(
    make_gateway, dovecot: PrivateDovecot, sink: Sink
) -> None:
    socket_path = dovecot.lmtp_socket
    assert stat.S_ISSOCK(socket_path.stat().st_mode)
    gateway: Gateway = make_gateway(f"lmtp:unix:{socket_path}", sink.url).start()
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.sendmail("x@other.org", [BOB], b"Subject: over-unix\r\n\r\nvia the socket\r\n")
    assert b"over-unix" in subjects(dovecot, BOB, {b"over-unix"})
    event = gateway.wait_event("delivered")
    assert event["next_hop"] == f"lmtp:unix:{socket_path}"
    assert event["recipients"] == [BOB]


def test_check_config_explains_a_malformed_unix_target(make_gateway, sink: Sink) -> None:
    gateway: Gateway = make_gateway("lmtp+unix:/run/dovecot/lmtp", sink.url)
    result = gateway.cli("check-config", check=False)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "delivery.local" in out and '"lmtp:unix:/run/dovecot/lmtp"' in out
