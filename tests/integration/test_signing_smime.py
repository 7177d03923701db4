"""S/MIME through the running gateway, checked with the independent openssl CLI: a local
sender holding its key signs; a subject tag encrypts to each recipient's certificate (or
refuses naming who has none); inbound signatures are stamped smime=pass/fail; inbound mail
encrypted to a local mailbox is decrypted for it; ``mailgate keys`` imports and lists."""

from __future__ import annotations

import smtplib
import subprocess
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.integration.harness import Gateway, Sink
from tests.unit.smime_pki import NOW, Pair, make_ca, make_leaf

USER, PASSWORD = "tran.hoa@example.gov.vn", "Ky-So-Thu-2026"
PARTNER, OTHER = "doitac@other.org", "khach@other.org"
HOST = "mx.example.gov.vn"
BODY = "Kính gửi anh chị,\nNội dung công văn số 12/2026.\n"


@pytest.fixture(scope="module")
def ca() -> Pair:
    return make_ca("Bo KHCN Test CA")


def write(folder: Path, name: str, *blobs: bytes) -> Path:
    path = folder / name
    path.write_bytes(b"".join(blobs))
    path.chmod(0o600)
    return path


def smime_gateway(make_gateway, sink: Sink, ca: Pair, tmp_path: Path, **signing: object) -> Gateway:  # type: ignore[no-untyped-def]
    gateway = make_gateway(sink.url, sink.url)
    ca_file = write(tmp_path, "ca.pem", ca.cert_pem())
    gateway.add_sections({"signing": {"smime_ca_file": str(ca_file), **signing}})
    gateway.cli("mailbox", "add", USER, "--name", "Trần Hoa", "--password", PASSWORD)
    return gateway


def import_identity(gateway: Gateway, tmp_path: Path, address: str, pair: Pair, own: bool) -> None:
    blobs = (pair.key_pem(), pair.cert_pem()) if own else (pair.cert_pem(),)
    path = write(tmp_path, f"{address}.pem", *blobs)
    done = gateway.cli("keys", "import", address, str(path))
    assert "imported S/MIME" in done.stdout


def submit(gateway: Gateway, subject: str, to: list[str]) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = USER, ", ".join(to), subject
    message.set_content(BODY)
    with smtplib.SMTP("127.0.0.1", gateway.submission_port, timeout=30) as client:
        client.login(USER, PASSWORD)
        client.send_message(message)


def openssl(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=30)


def text_of(message: bytes) -> str:
    parsed = message_from_bytes(message, policy=policy.default)
    part = parsed.get_body(("plain",)) if parsed.is_multipart() else parsed
    assert part is not None
    return part.get_content()


def test_local_sender_signs_and_openssl_verifies(
    make_gateway, sink: Sink, ca: Pair, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gateway = smime_gateway(make_gateway, sink, ca, tmp_path)
    import_identity(gateway, tmp_path, USER, make_leaf(ca, USER), own=True)
    gateway.start()
    submit(gateway, "Báo cáo tuần", [PARTNER])
    (received,) = sink.wait_messages(1)
    head = received.data.split(b"\r\n\r\n", 1)[0]
    assert b"multipart/signed" in head and b"application/pkcs7-signature" in head
    ca_file = tmp_path / "ca.pem"
    checked = openssl("cms", "-verify", "-CAfile", str(ca_file), data=received.data)
    assert checked.returncode == 0, checked.stderr
    assert BODY.split("\n")[1] in text_of(checked.stdout)
    tampered = received.data.replace(b"Content-Transfer-Encoding", b"Content-transfer-encoding", 2)
    tampered = tampered.replace(b"Tm", b"Tn", 1) if tampered == received.data else tampered
    assert openssl("cms", "-verify", "-CAfile", str(ca_file), data=tampered).returncode != 0
    event = gateway.wait_event("message_transformed", lambda e: "[signing]" in e["reason"])
    assert "signed S/MIME" in event["reason"]


def test_subject_tag_encrypts_to_each_recipient_and_openssl_decrypts(
    make_gateway, sink: Sink, ca: Pair, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gateway = smime_gateway(make_gateway, sink, ca, tmp_path)
    import_identity(gateway, tmp_path, USER, make_leaf(ca, USER), own=True)
    partner, other = make_leaf(ca, PARTNER), make_leaf(ca, OTHER)
    import_identity(gateway, tmp_path, PARTNER, partner, own=False)
    import_identity(gateway, tmp_path, OTHER, other, own=False)
    gateway.start()
    submit(gateway, "[mã hóa] Hồ sơ dự án", [PARTNER, OTHER])
    (received,) = sink.wait_messages(1)
    assert sorted(received.recipients) == sorted([PARTNER, OTHER])
    assert b"enveloped-data" in received.data.split(b"\r\n\r\n", 1)[0]
    assert "công văn".encode() not in received.data
    for pair, name in ((partner, "partner"), (other, "other")):
        cert, key = pair.write(tmp_path, name)
        plain = openssl("cms", "-decrypt", "-recip", str(cert), "-inkey", str(key),
                        data=received.data)  # fmt: skip
        assert plain.returncode == 0, plain.stderr
        verified = openssl("cms", "-verify", "-CAfile", str(tmp_path / "ca.pem"), data=plain.stdout)
        assert verified.returncode == 0, verified.stderr
        assert BODY.split("\n")[1] in text_of(verified.stdout)


def test_a_recipient_without_certificate_refuses_the_whole_message(
    make_gateway, sink: Sink, ca: Pair, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gateway = smime_gateway(make_gateway, sink, ca, tmp_path)
    import_identity(gateway, tmp_path, PARTNER, make_leaf(ca, PARTNER), own=False)
    gateway.start()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        submit(gateway, "[encrypt] Hồ sơ", [PARTNER, OTHER])
    assert refused.value.smtp_code == 550
    assert (
        b"[encryption]" in refused.value.smtp_error and OTHER.encode() in refused.value.smtp_error
    )
    assert sink.messages == []


def test_send_plain_gives_the_recipient_without_key_a_plain_copy(
    make_gateway, sink: Sink, ca: Pair, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gateway = smime_gateway(make_gateway, sink, ca, tmp_path, missing_recipient_key="send-plain")
    import_identity(gateway, tmp_path, PARTNER, make_leaf(ca, PARTNER), own=False)
    gateway.start()
    submit(gateway, "[encrypt] Hồ sơ", [PARTNER, OTHER])
    messages = sink.wait_messages(2)
    by_recipient = {tuple(m.recipients): m.data for m in messages}
    assert b"enveloped-data" in by_recipient[(PARTNER,)]
    assert "công văn".encode() in by_recipient[(OTHER,)] or b"C=C3=B4ng" in by_recipient[(OTHER,)]


def test_an_expired_own_certificate_refuses_rather_than_sending_unsigned(
    make_gateway, sink: Sink, ca: Pair, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gateway = smime_gateway(make_gateway, sink, ca, tmp_path)
    fresh = make_leaf(ca, USER, not_after=NOW + timedelta(days=10))
    import_identity(gateway, tmp_path, USER, fresh, own=True)
    listed = gateway.cli("keys", "list", USER).stdout
    assert "smime" in listed and "expires in" in listed  # warned 30 days ahead
    folder = gateway.workdir / "var" / "keys" / "smime" / USER
    expired = make_leaf(ca, USER, not_before=NOW - timedelta(days=30),
                        not_after=NOW - timedelta(days=1))  # fmt: skip
    for path in folder.glob("*.pem"):  # what import refuses, put there by hand
        path.write_bytes(expired.key_pem() + expired.cert_pem())
    gateway.start()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        submit(gateway, "Báo cáo", [PARTNER])
    assert refused.value.smtp_code == 554 and b"[smime]" in refused.value.smtp_error
    assert sink.messages == []


def test_keys_import_refuses_what_cannot_serve(
    make_gateway, sink: Sink, ca: Pair, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gateway = smime_gateway(make_gateway, sink, ca, tmp_path)
    wrong = write(tmp_path, "wrong.pem", make_leaf(ca, OTHER).cert_pem())
    done = gateway.cli("keys", "import", PARTNER, str(wrong), check=False)
    assert done.returncode == 1 and f"for {OTHER}, not {PARTNER}" in done.stderr
    partner = make_leaf(ca, PARTNER)
    secret = write(tmp_path, "secret.pem", partner.key_pem(), partner.cert_pem())
    done = gateway.cli("keys", "import", PARTNER, str(secret), check=False)
    assert done.returncode == 1 and "must not hold its private key" in done.stderr
    old = make_leaf(ca, PARTNER, not_before=NOW - timedelta(days=30),
                    not_after=NOW - timedelta(days=1))  # fmt: skip
    done = gateway.cli("keys", "import", PARTNER, str(write(tmp_path, "old.pem", old.cert_pem())),
                       check=False)  # fmt: skip
    assert done.returncode == 1 and "expired" in done.stderr
    assert "PRIVATE KEY" not in gateway.all_logs()


def inbound(gateway: Gateway, data: bytes, to: str = "bob@example.gov.vn") -> None:
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=30) as client:
        client.sendmail(PARTNER, [to], data)


def test_inbound_signatures_are_stamped_and_tampered_ones_delivered_as_fail(
    make_gateway, sink: Sink, ca: Pair, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gateway = smime_gateway(make_gateway, sink, ca, tmp_path).start()
    cert, key = make_leaf(ca, PARTNER).write(tmp_path, "partner")
    content = (
        "From: doitac@other.org\r\nTo: bob@example.gov.vn\r\nSubject: Thu moi\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "Xin mời anh tham dự hội nghị.\r\n"
    ).encode()
    signed = openssl("cms", "-sign", "-signer", str(cert), "-inkey", str(key), data=content)
    assert signed.returncode == 0, signed.stderr
    message = signed.stdout.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    inbound(gateway, message)
    inbound(gateway, message.replace("hội nghị".encode(), "hội thảo".encode()))
    good, bad = sink.wait_messages(2)
    assert b"smime=pass" in good.data.split(b"\r\n\r\n")[0]
    assert b"smime=fail" in bad.data.split(b"\r\n\r\n")[0]


def test_inbound_mail_encrypted_to_a_local_mailbox_is_decrypted_for_it(
    make_gateway, sink: Sink, ca: Pair, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gateway = smime_gateway(make_gateway, sink, ca, tmp_path, decrypt_inbound=True)
    local = make_leaf(ca, "bob@example.gov.vn")
    import_identity(gateway, tmp_path, "bob@example.gov.vn", local, own=True)
    gateway.start()
    cert, _ = local.write(tmp_path, "bob")
    content = (
        b"From: doitac@other.org\r\nTo: bob@example.gov.vn\r\nSubject: Mat\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nNoi dung bi mat cua du an.\r\n"
    )
    encrypted = openssl("cms", "-encrypt", "-aes256", str(cert), data=content)
    assert encrypted.returncode == 0, encrypted.stderr
    inbound(gateway, encrypted.stdout.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    (received,) = sink.wait_messages(1)
    assert b"Noi dung bi mat cua du an." in received.data
    assert b"Authentication-Results: " + HOST.encode() in received.data
    gateway.wait_event("message_transformed", lambda e: "[decryption]" in e["reason"])


def test_a_group_is_encrypted_to_each_member_or_refused_naming_who_lacks_a_key(
    make_gateway, sink: Sink, ca: Pair, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Encryption comes after expansion: the members' certificates, not the group's."""
    gateway = smime_gateway(make_gateway, sink, ca, tmp_path)
    group = "phong@example.gov.vn"
    gateway.cli("mailbox", "add", group, "--name", "Phòng KH", "--kind", "group")
    for member in ("alice@example.gov.vn", "bob@example.gov.vn"):
        gateway.cli("group", "add-member", group, member)
    alice, bob = make_leaf(ca, "alice@example.gov.vn"), make_leaf(ca, "bob@example.gov.vn")
    import_identity(gateway, tmp_path, "alice@example.gov.vn", alice, own=False)
    gateway.start()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        submit(gateway, "[encrypt] Kế hoạch", [group])
    assert refused.value.smtp_code == 550 and b"bob@example.gov.vn" in refused.value.smtp_error
    assert sink.messages == []
    import_identity(gateway, tmp_path, "bob@example.gov.vn", bob, own=False)
    submit(gateway, "[encrypt] Kế hoạch", [group])
    (received,) = sink.wait_messages(1)
    assert sorted(received.recipients) == ["alice@example.gov.vn", "bob@example.gov.vn"]
    for pair, name in ((alice, "alice"), (bob, "bob")):
        cert, key = pair.write(tmp_path, name)
        plain = openssl("cms", "-decrypt", "-recip", str(cert), "-inkey", str(key),
                        data=received.data)  # fmt: skip
        assert plain.returncode == 0, plain.stderr
        assert BODY.split("\n")[1] in text_of(plain.stdout)


def test_a_certificate_imported_while_serving_counts_for_the_next_message(
    make_gateway, sink: Sink, ca: Pair, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gateway = smime_gateway(make_gateway, sink, ca, tmp_path).start()
    with pytest.raises(smtplib.SMTPDataError):
        submit(gateway, "[encrypt] Hồ sơ", [PARTNER])
    import_identity(gateway, tmp_path, PARTNER, make_leaf(ca, PARTNER), own=False)
    submit(gateway, "[encrypt] Hồ sơ", [PARTNER])
    (received,) = sink.wait_messages(1)
    assert b"enveloped-data" in received.data.split(b"\r\n\r\n", 1)[0]
    imported = gateway.wait_event("key_imported")
    assert imported["user"] == PARTNER and imported["actor"] == "cli"
