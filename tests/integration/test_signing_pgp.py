"""PGP/MIME (RFC 3156) through the running gateway, checked with the independent gpg CLI:
a local sender holding only an OpenPGP secret key signs; a subject tag encrypts to a
partner's public key; inbound signatures are stamped x-pgp=pass/fail."""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.integration.harness import Gateway, Sink
from tests.unit.test_pgp import export, gen_key, gpg, mime_signed_by_cli, rfc3156_parts

USER, PASSWORD = "tran.hoa@example.gov.vn", "Ky-So-Thu-2026"
PARTNER = "doitac@other.org"
BODY = "Kính gửi anh chị,\nNội dung công văn số 12/2026.\n"


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The sender's key made in one GNUPGHOME, the partner's in another (the outside)."""
    base = tmp_path_factory.mktemp("pgp-homes")
    keygen, outside = base / "keygen", base / "outside"
    for home in (keygen, outside):
        home.mkdir(mode=0o700)
    sender = gen_key(keygen, f"Trần Hoa <{USER}>")
    partner = gen_key(outside, f"Đối Tác <{PARTNER}>")
    gpg(outside, "--import", data=export(keygen, sender))
    files = {
        "sender_secret": export(keygen, sender, secret=True),
        "partner_public": export(outside, partner),
    }
    yield {"keygen": keygen, "outside": outside, "files": files, "partner": partner}
    for home in (keygen, outside):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], timeout=30)


def pgp_gateway(make_gateway, sink: Sink, homes: dict, tmp_path: Path) -> Gateway:  # type: ignore[no-untyped-def]
    gateway = make_gateway(sink.url, sink.url)
    gateway.cli("mailbox", "add", USER, "--name", "Trần Hoa", "--password", PASSWORD)
    for address, name in ((USER, "sender_secret"), (PARTNER, "partner_public")):
        path = tmp_path / f"{name}.asc"
        path.write_bytes(homes["files"][name])
        assert "imported OpenPGP" in gateway.cli("keys", "import", address, str(path)).stdout
    return gateway.start()


def submit(gateway: Gateway, subject: str) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = USER, PARTNER, subject
    message.set_content(BODY)
    with smtplib.SMTP("127.0.0.1", gateway.submission_port, timeout=30) as client:
        client.login(USER, PASSWORD)
        client.send_message(message)


def text_of(entity: bytes) -> str:
    parsed = message_from_bytes(entity, policy=policy.default)
    part = parsed.get_body(("plain",)) if parsed.is_multipart() else parsed
    assert part is not None
    return part.get_content()


def test_sender_with_a_pgp_key_signs_and_gpg_verifies(
    make_gateway, sink: Sink, homes: dict, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gateway = pgp_gateway(make_gateway, sink, homes, tmp_path)
    listed = gateway.cli("keys", "list").stdout
    assert "pgp" in listed and USER in listed and PARTNER in listed
    submit(gateway, "Báo cáo tuần")
    (received,) = sink.wait_messages(1)
    head = received.data.split(b"\r\n\r\n", 1)[0]
    assert b"multipart/signed" in head and b"application/pgp-signature" in head
    data, signature = rfc3156_parts(received.data)
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "data.asc").write_bytes(signature)
    outside = homes["outside"]
    checked = gpg(outside, "--verify", str(tmp_path / "data.asc"), str(tmp_path / "data"),
                  check=False)  # fmt: skip
    assert checked.returncode == 0 and b"GOODSIG" in checked.stderr, checked.stderr
    assert BODY.split("\n")[1] in text_of(data)
    (tmp_path / "data").write_bytes(data.replace(b"Content-Type", b"Content-type", 1))
    tampered = gpg(outside, "--verify", str(tmp_path / "data.asc"), str(tmp_path / "data"),
                   check=False)  # fmt: skip
    assert tampered.returncode != 0


def test_subject_tag_encrypts_to_the_partner_and_gpg_decrypts(
    make_gateway, sink: Sink, homes: dict, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gateway = pgp_gateway(make_gateway, sink, homes, tmp_path)
    submit(gateway, "[encrypt] Hồ sơ dự án")
    (received,) = sink.wait_messages(1)
    assert b"multipart/encrypted" in received.data.split(b"\r\n\r\n", 1)[0]
    assert "công văn".encode() not in received.data
    armoured = received.data[received.data.index(b"-----BEGIN PGP MESSAGE-----") :]
    armoured = armoured[: armoured.index(b"-----END PGP MESSAGE-----") + 25]
    plain = gpg(homes["outside"], "--decrypt", data=armoured, check=False)
    assert plain.returncode == 0, plain.stderr
    assert b"GOODSIG" in plain.stderr  # signed and encrypted in one pass, by the sender
    assert BODY.split("\n")[1] in text_of(plain.stdout.replace(b"\r\n", b"\n"))
    event = gateway.wait_event("message_transformed", lambda e: "[signing]" in e["reason"])
    assert homes["partner"] in event["reason"]  # the key's fingerprint, never the key


def test_inbound_pgp_signatures_are_stamped(
    make_gateway, sink: Sink, homes: dict, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gateway = pgp_gateway(make_gateway, sink, homes, tmp_path)
    entity = (
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        b"Xin moi anh tham du hoi nghi.\r\n"
    )
    signed = mime_signed_by_cli(homes["outside"], PARTNER, entity, tmp_path)
    signed = signed.replace(b"To: " + USER.encode(), b"To: bob@example.gov.vn")
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=30) as client:
        client.sendmail(PARTNER, ["bob@example.gov.vn"], signed)
        client.sendmail(PARTNER, ["bob@example.gov.vn"], signed.replace(b"hoi nghi", b"hoi thao"))
    good, bad = sink.wait_messages(2)
    assert b"x-pgp=pass" in good.data.split(b"\r\n\r\n")[0]
    assert b"x-pgp=fail" in bad.data.split(b"\r\n\r\n")[0]


def test_a_key_filed_under_the_wrong_address_is_refused_and_nothing_held_is_lost(
    make_gateway, sink: Sink, homes: dict, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gateway = pgp_gateway(make_gateway, sink, homes, tmp_path)
    path = tmp_path / "again.asc"
    path.write_bytes(homes["files"]["partner_public"])
    done = gateway.cli("keys", "import", "someone@other.org", str(path), check=False)
    assert done.returncode == 1 and f"for {PARTNER}, not someone@other.org" in done.stderr
    assert homes["partner"] in gateway.cli("keys", "list", PARTNER).stdout  # still held
    submit(gateway, "[encrypt] Hồ sơ")  # and still used
    (received,) = sink.wait_messages(1)
    assert b"multipart/encrypted" in received.data.split(b"\r\n\r\n", 1)[0]
