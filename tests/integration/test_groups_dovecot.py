"""Group mailboxes end to end: real clients -> the gateway -> LMTP -> a private Dovecot,
each member's copies read back over IMAP, refusals at RCPT, bounces per member."""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import time
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage

import pytest

from gateway.directory.mailboxes import Directory, Registration
from gateway.smtp import replies
from tests.integration.dovecot import PrivateDovecot
from tests.integration.harness import Gateway, Sink

D = "example.gov.vn"
ALL, TEAM, BOARD, EMPTY, OPS = (f"{n}@{D}" for n in ("all", "team", "board", "empty", "ops"))
AN, BINH, CHI, DUNG, EM = (f"{n}@{D}" for n in ("an", "binh", "chi", "dung", "em"))
GHOST = f"ghost@{D}"  # in the directory, unknown to the store: Dovecot refuses it at RCPT
PASSWORDS = {a: f"Kx7-{i}-Lop-Vuot-2026" for i, a in enumerate((AN, BINH, CHI, DUNG, EM))}
OUTSIDER = "dvbe@other.gov.vn"


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDovecot]:
    with PrivateDovecot(tmp_path_factory.mktemp("dovecot"), PASSWORDS) as server:
        yield server


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway], dovecot: PrivateDovecot, sink: Sink) -> Gateway:
    """all = {an, team}; team = {binh, chi, board}; board = {chi, dung, em};
    em revoked, dung locked (still receives); empty = {em}; ops = {binh, ghost}."""
    found = make_gateway(f"lmtp://127.0.0.1:{dovecot.lmtp_port}", sink.url, mailboxes=())
    directory = Directory.for_data_dir(found.workdir / "var")
    try:
        for address in (AN, CHI):  # the two who log in
            directory.add(Registration(address, address.split("@")[0]), PASSWORDS[address])
        for address in (BINH, DUNG, EM, GHOST):
            directory.add(Registration(address, address.split("@")[0]), None)
        for address in (ALL, TEAM, BOARD, EMPTY, OPS):
            directory.add(Registration(address, address.split("@")[0], kind="group"), None)
        for group, member in (
            (ALL, AN), (ALL, TEAM), (TEAM, BINH), (TEAM, CHI), (TEAM, BOARD), (BOARD, CHI),
            (BOARD, DUNG), (BOARD, EM), (EMPTY, EM), (OPS, BINH), (OPS, GHOST),
        ):  # fmt: skip
            directory.add_member(group, member)
        directory.set_state(EM, "revoked", "left")
        directory.set_state(DUNG, "locked", "6 months without access")
    finally:
        directory.close()
    return found.start()


def mail(sender: str, to: list[str]) -> tuple[EmailMessage, str]:
    message_id = f"<{uuid.uuid4().hex}@test>"
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = "Lịch họp giao ban"
    message["Message-ID"] = message_id
    message.set_content("Kính gửi các đồng chí, lịch họp tuần sau.")
    return message, message_id


def copies(dovecot: PrivateDovecot, address: str, message_id: str, want: int = 0) -> int:
    """How many copies of ``message_id`` ``address`` holds (waits up to 10 s for ``want``)."""
    deadline = time.monotonic() + 10
    while True:
        found = sum(
            1
            for raw in dovecot.fetch_messages(address, PASSWORDS[address])
            if email.message_from_bytes(raw)["Message-ID"] == message_id
        )
        if found >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def submit(gateway: Gateway, login: str, to: list[str], rcpts: list[str]) -> tuple[str, dict]:
    message, message_id = mail(login, to)
    with smtplib.SMTP("127.0.0.1", gateway.submission_port, timeout=30) as client:
        client.ehlo("client.test")
        client.login(login, PASSWORDS[login])
        refused = client.send_message(message, login, rcpts)
    return message_id, refused


def rcpt(port: int, sender: str, recipient: str, login: str | None = None) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        if login:
            client.login(login, PASSWORDS[login])
        client.mail(sender)
        code, text = client.rcpt(recipient)
        return code, text.decode()


def test_a_nested_group_with_overlaps_delivers_once_per_member(
    gateway: Gateway, dovecot: PrivateDovecot
) -> None:
    message_id, refused = submit(gateway, AN, [ALL, "Nhóm dự án"], [ALL, TEAM, CHI])
    assert refused == {}
    for member in (AN, BINH, CHI, DUNG):  # dung is locked: locked mailboxes still receive
        assert copies(dovecot, member, message_id, want=1) == 1, member
    assert copies(dovecot, EM, message_id) == 0  # revoked: skipped
    stored = next(
        raw for raw in dovecot.fetch_messages(BINH, PASSWORDS[BINH]) if message_id.encode() in raw
    )
    to = email.message_from_bytes(stored, policy=email.policy.default)["To"]
    assert ALL in to and "Nhóm dự án" in to and BINH not in to  # To: as the sender wrote it
    accepted = gateway.wait_event("message_accepted", lambda e: e.get("message_id") == message_id)
    assert accepted["recipients"] == [ALL, TEAM, CHI]  # the envelope as received
    assert accepted["delivery_plan"] == {
        CHI: "direct", AN: ALL, BINH: f"{ALL} > {TEAM}", DUNG: f"{ALL} > {TEAM} > {BOARD}",
    }  # fmt: skip
    expanded = [e for e in gateway.events("group_expanded") if e["message_id"] == message_id]
    assert [(e["group"], e["recipients"]) for e in expanded] == [
        (ALL, [AN, BINH, DUNG]),
        (TEAM, []),  # everyone team reaches had a copy already
    ]
    delivered = [
        r
        for e in gateway.events("delivered")
        if e["message_id"] == message_id
        for r in e["recipients"]
    ]
    assert sorted(delivered) == sorted([CHI, AN, BINH, DUNG])  # the groups' folders: nothing
    found = gateway.cli("logs", "search", "--recipient", DUNG, "--json").stdout
    assert message_id in {json.loads(line).get("message_id") for line in found.splitlines()}


def test_a_local_only_group_refuses_outside_mail_at_rcpt(gateway: Gateway) -> None:
    code, text = rcpt(gateway.inbound_port, OUTSIDER, ALL)
    assert code == replies.GROUP_POST_REFUSED.code
    assert "[groups]" in text and "local senders only" in text
    refused = gateway.wait_event("rcpt_rejected", lambda e: e["recipients"] == [ALL])
    assert "[groups]" in refused["reason"] and refused["sender"] == OUTSIDER
    # a sender claiming our own domain over inbound proves nothing: refused too
    assert rcpt(gateway.inbound_port, AN, ALL)[0] == 550


def test_a_members_only_group_refuses_a_non_member(
    gateway: Gateway, dovecot: PrivateDovecot
) -> None:
    shown = gateway.cli("group", "policy", BOARD, "members").stdout
    assert shown.strip() == f"{BOARD}: members"
    code, text = rcpt(gateway.submission_port, AN, BOARD, login=AN)
    assert code == 550 and "members only [groups]" not in text and "members only" in text
    assert rcpt(gateway.inbound_port, CHI, BOARD)[0] == 550  # a member's name, from outside
    message_id, refused = submit(gateway, CHI, [BOARD], [BOARD])  # chi is a member
    assert refused == {}
    assert copies(dovecot, DUNG, message_id, want=1) == 1
    changed = gateway.wait_event("group_policy_changed", lambda e: e["user"] == BOARD)
    assert changed["policy"] == "members"
    show = json.loads(gateway.cli("mailbox", "show", TEAM, "--json").stdout)
    assert show["post_policy_in_force"].startswith("local (default")


def test_anyone_may_post_when_the_group_says_so(gateway: Gateway, dovecot: PrivateDovecot) -> None:
    gateway.cli("group", "policy", TEAM, "anyone")
    message, message_id = mail(OUTSIDER, [TEAM])
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=30) as client:
        assert client.send_message(message, OUTSIDER, [TEAM]) == {}
    for member in (BINH, CHI, DUNG):
        assert copies(dovecot, member, message_id, want=1) == 1


def test_a_group_with_no_deliverable_member_is_refused_at_rcpt(gateway: Gateway) -> None:
    code, text = rcpt(gateway.submission_port, AN, EMPTY, login=AN)
    assert (code, text.split(" [")[0]) == (550, "5.2.1 Group has no deliverable member")
    assert "[groups]" in text


def test_a_member_the_store_refuses_is_bounced_alone(
    gateway: Gateway, dovecot: PrivateDovecot, sink: Sink
) -> None:
    gateway.cli("group", "policy", OPS, "anyone")
    message, message_id = mail(OUTSIDER, [OPS])
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=30) as client:
        assert client.send_message(message, OUTSIDER, [OPS]) == {}  # 250: binh has it
    assert copies(dovecot, BINH, message_id, want=1) == 1
    deadline = time.monotonic() + 15
    while not sink.handler.messages and time.monotonic() < deadline:
        time.sleep(0.1)
    (bounce,) = sink.handler.messages
    assert bounce.sender in ("", "<>") and bounce.recipients == [OUTSIDER]
    text = bounce.data.decode("utf-8", "replace")
    assert f"Original-Recipient: rfc822; {OPS}" in text
    assert f"Final-Recipient: rfc822; {GHOST}" in text
    assert BINH not in text.split("message/delivery-status")[1].split("text/rfc822-headers")[0]
