"""Content rules end to end: real clients -> the gateway (default filters) -> LMTP ->
a private Dovecot, and what arrives read back from its Maildir."""

from __future__ import annotations

import io
import signal
import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from gateway.smtp import replies
from tests.integration.dovecot import PrivateDovecot
from tests.integration.harness import Gateway, Sink

ALICE = "alice@example.gov.vn"
PASSWORDS = {ALICE: "Alice-pass-1"}
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDovecot]:
    with PrivateDovecot(tmp_path_factory.mktemp("dovecot"), PASSWORDS) as server:
        yield server


@pytest.fixture
def gateway(make_gateway, dovecot: PrivateDovecot, sink: Sink) -> Gateway:
    return make_gateway(f"lmtp://127.0.0.1:{dovecot.lmtp_port}", sink.url).start()


def stored(dovecot: PrivateDovecot) -> list[bytes]:
    folder = dovecot.maildir(ALICE)
    return [p.read_bytes() for sub in ("new", "cur") for p in sorted((folder / sub).glob("*"))]


def wait_stored(dovecot: PrivateDovecot, count: int) -> list[bytes]:
    deadline = time.monotonic() + 20
    while len(found := stored(dovecot)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def message(subject: str, text: str, *files: tuple[str, bytes]) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "dvbe@other.gov.vn"
    mail["To"] = ALICE
    mail["Subject"] = subject
    mail.set_content(text)
    for name, data in files:
        mail.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return mail


def send(gateway: Gateway, mail: EmailMessage, smtputf8: bool = False) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=120) as client:
        client.ehlo("client.test")
        client.mail("dvbe@other.gov.vn", ["BODY=8BITMIME", *(["SMTPUTF8"] if smtputf8 else [])])
        client.rcpt(ALICE)
        return client.data(mail.as_bytes(policy=mail.policy.clone(linesep="\r\n")))


def docx(*paragraphs: str) -> bytes:
    document = pytest.importorskip("docx").Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_a_20_mib_attachment_passes(gateway: Gateway, dovecot: PrivateDovecot) -> None:
    before = len(stored(dovecot))
    payload = bytes(range(256)) * (20 * MIB // 256)  # exactly 20 MiB, incompressible-ish
    code, _ = send(gateway, message("Hồ sơ", "Kèm theo hồ sơ.", ("ho-so.bin", payload)))
    assert code == 250
    arrived = wait_stored(dovecot, before + 1)
    assert len(arrived) == before + 1 and len(arrived[-1]) > 27 * MIB


def test_21_mib_in_two_files_is_refused_stating_limit_and_size(
    gateway: Gateway, dovecot: PrivateDovecot
) -> None:
    before = len(stored(dovecot))
    half = b"\x00\x01" * (21 * MIB // 4)  # two files of 10.5 MiB
    code, text = send(gateway, message("Hai tệp", "Hai tệp.", ("a.bin", half), ("b.bin", half)))
    assert code == replies.ATTACHMENTS_TOO_BIG.code
    reply = text.decode()
    assert reply.startswith("5.3.4") and "[attachment_cap]" in reply
    assert "21.0 MiB" in reply and "20.0 MiB" in reply
    event = gateway.wait_event("message_rejected")
    assert "[attachment_cap]" in event["reason"] and event["code"] == 552
    assert len(stored(dovecot)) == before


@pytest.mark.parametrize("smtputf8", [False, True], ids=["ascii-reply", "smtputf8-reply"])
def test_a_top_secret_docx_is_refused_naming_the_file(
    gateway: Gateway, dovecot: PrivateDovecot, smtputf8: bool
) -> None:
    before = len(stored(dovecot))
    document = docx("BỘ KHOA HỌC VÀ CÔNG NGHỆ", "TỐI MẬT", "Báo cáo tình hình quý IV.")
    mail = message("Báo cáo", "Gửi anh báo cáo.", ("bao-cao.docx", document))
    code, text = send(gateway, mail, smtputf8)
    reply = text.decode()
    assert code == 550 and reply.startswith("5.7.1") and "bao-cao.docx" in reply
    # UTF-8 reply text only for a client that asked for SMTPUTF8 (RFC 6531 3.7.4.2).
    assert ("TỐI MẬT" in reply) if smtputf8 else ("TOI MAT" in reply and reply.isascii())
    event = gateway.wait_event("message_rejected")
    assert "[classification]" in event["reason"] and "bao-cao.docx" in event["reason"]
    assert "TỐI MẬT" in event["reason"]  # the record keeps the real words
    assert "Báo cáo tình hình" not in gateway.all_logs(), "the event never holds the content"
    assert len(stored(dovecot)) == before


def test_a_mail_full_of_ordinary_mat_words_arrives(
    gateway: Gateway, dovecot: PrivateDovecot
) -> None:
    before = len(stored(dovecot))
    text = (
        "Chào chị,\nMật khẩu mới của hệ thống: xem tệp đính kèm. Mật độ dân số tăng, "
        "mật ong rừng rất ngon, anh em thân mật. MẤT ĐIỆN lúc 9h, MẶT TRẬN Tổ quốc họp.\n"
    )
    document = docx("Hướng dẫn đổi mật khẩu", "Mật khẩu phải có ít nhất 8 ký tự.")
    code, _ = send(gateway, message("Mật khẩu mới", text, ("huong-dan.docx", document)))
    assert code == 250
    assert len(wait_stored(dovecot, before + 1)) == before + 1


def test_sighup_reloads_the_filters_without_dropping_a_session(
    gateway: Gateway, dovecot: PrivateDovecot
) -> None:
    """An operator turns a rule off and back on; a client connected across the reload
    keeps its session and gets the rule in force when its message ends."""
    before = len(stored(dovecot))
    document = docx("TỐI MẬT", "Nội dung.")
    mail = message("Báo cáo", "Gửi anh.", ("bao-cao.docx", document))
    raw = mail.as_bytes(policy=mail.policy.clone(linesep="\r\n"))
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=60) as client:
        client.ehlo("client.test")
        assert client.mail("dvbe@other.gov.vn", ["BODY=8BITMIME"])[0] == 250
        assert client.rcpt(ALICE)[0] == 250
        gateway.write_config(
            gateway.config_path.read_text() + "\n[filters.classification]\nenabled = false\n"
        )
        gateway.signal(signal.SIGHUP)
        gateway.wait_event("config_reloaded")
        assert client.data(raw)[0] == 250  # same session, new rules
    assert len(wait_stored(dovecot, before + 1)) == before + 1
    gateway.write_config(gateway.config_path.read_text().replace("enabled = false", "enabled = 1"))
    gateway.signal(signal.SIGHUP)
    rejected = gateway.wait_event("config_rejected")
    assert "filters.classification.enabled: expected true or false" in rejected["reason"]
    assert send(gateway, mail)[0] == 250  # a bad config keeps the running one (rule off)
