"""PGP/MIME (gateway/signing/pgp.py) checked against the independent gpg CLI.

The "outside world" is a separate GNUPGHOME driven with the gpg command line; the gateway's
keyring is another. Keys are made once per module (ed25519/cv25519 take ~0.1 s each).
"""

from __future__ import annotations

import base64
import os
import resource
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

import gnupg
import pytest

from gateway.signing import pgp
from gateway.signing.pgp import (
    Keyring,
    PgpError,
    PgpTemporaryError,
    is_encrypted,
    is_signed,
)

SENDER = "an.nv@bo.gov.vn"  # local mailbox: its secret key lives in the gateway
PARTNER = "partner@doitac.vn"  # outside: the gateway holds its public key
STRANGER = "la@ngoai.vn"  # outside: the gateway holds nothing
EXPIRED = "cu@bo.gov.vn"  # secret + public in the gateway, expired
REVOKED = "huy@bo.gov.vn"  # secret + public in the gateway, revoked
PROTECTED = "mat@bo.gov.vn"  # secret key with a passphrase
PASSPHRASE = "mật khẩu rất bí mật 42"

VIETNAMESE = (
    "Kính gửi Bộ Nội vụ,\n\nCông văn số 123/BNV-VP về việc triển khai chữ ký số.\n"
    "Trân trọng cảm ơn!   \nNguyễn Văn An\n"
)
HTML = "<p>Kính gửi <b>Bộ Nội vụ</b>: công văn đính kèm.</p>\n"
ATTACHMENT = bytes(range(256)) * 20


def gpg(home: Path, *args: str, data: bytes | None = None, check: bool = True):
    """The independent gpg CLI (argument list, timeout)."""
    cmd = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--status-fd", "2"]
    cmd += ["--pinentry-mode", "loopback", "--trust-model", "always", *args]
    proc = subprocess.run(cmd, input=data, capture_output=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd}: {proc.stderr.decode(errors='replace')}")
    return proc


def gen_key(home: Path, uid: str, passphrase: str = "", faked_time: str | None = None) -> str:
    args = ["--passphrase", passphrase]
    if faked_time:
        args += ["--faked-system-time", faked_time]
    proc = gpg(home, *args, "--quick-gen-key", uid, "future-default", "default", "1y")
    for line in proc.stderr.decode().splitlines():
        if line.startswith("[GNUPG:] KEY_CREATED"):
            return line.split()[3]
    raise AssertionError("no KEY_CREATED")


def export(home: Path, fpr: str, secret: bool = False, passphrase: str = "") -> bytes:
    what = "--export-secret-keys" if secret else "--export"
    return gpg(home, "--passphrase", passphrase, "--armor", what, fpr).stdout


def subkey_fprs(home: Path, fpr: str) -> list[str]:
    out = gpg(home, "--with-colons", "--fingerprint", "--fingerprint", "-k", fpr).stdout
    lines = out.decode().splitlines()
    return [
        lines[i + 1].split(":")[9]
        for i, line in enumerate(lines)
        if line.startswith("sub:") and lines[i + 1].startswith("fpr:")
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Keys, the outside GNUPGHOME and the gateway's Keyring, built once."""
    mp = pytest.MonkeyPatch()
    fake_home = tmp_path_factory.mktemp("userhome")
    mp.setenv("HOME", str(fake_home))  # a stray ~/.gnupg would show up here
    mp.delenv("GNUPGHOME", raising=False)
    base = tmp_path_factory.mktemp("pgp")
    keygen, outside = base / "keygen", base / "outside"
    for d in (keygen, outside):
        d.mkdir(mode=0o700)
    t0 = time.perf_counter()
    fpr = {
        "sender": gen_key(keygen, f"Nguyễn Văn An <{SENDER.upper()}>"),
        "partner": gen_key(outside, f"Đối Tác <{PARTNER}>"),
        "stranger": gen_key(outside, f"Người Lạ <{STRANGER}>"),
        "expired": gen_key(keygen, f"Cũ <{EXPIRED}>", faked_time="20200101T000000"),
        "revoked": gen_key(keygen, f"Hủy <{REVOKED}>"),
        "protected": gen_key(keygen, f"Mật <{PROTECTED}>", passphrase=PASSPHRASE),
    }
    # signing subkeys: signatures then name the subkey, and KeyInfo must still be the primary
    gpg(outside, "--passphrase", "", "--quick-add-key", fpr["partner"], "ed25519", "sign", "1y")
    gpg(keygen, "--passphrase", "", "--quick-add-key", fpr["sender"], "ed25519", "sign", "1y")
    print(f"\nkey generation: {time.perf_counter() - t0:.2f} s for 6 ed25519/cv25519 keys")
    rev = (keygen / "openpgp-revocs.d" / f"{fpr['revoked']}.rev").read_bytes()
    gpg(keygen, "--import", data=rev.replace(b":-----BEGIN", b"-----BEGIN"))
    gpg(outside, "--import", data=export(keygen, fpr["sender"]))

    gw = Keyring(base / "gateway")
    armoured = {
        "sender": export(keygen, fpr["sender"], secret=True),
        "partner": export(outside, fpr["partner"]),
        "expired": export(keygen, fpr["expired"], secret=True),
        "revoked": export(keygen, fpr["revoked"], secret=True),
        "protected": export(keygen, fpr["protected"], secret=True, passphrase=PASSPHRASE),
    }
    for name, data in armoured.items():
        gw.import_key(data, passphrase=PASSPHRASE if name == "protected" else None)
    yield {
        "gw": gw,
        "outside": outside,
        "keygen": keygen,
        "fpr": fpr,
        "armoured": armoured,
        "fake_home": fake_home,
        "base": base,
    }
    gw.close()
    for home in (keygen, outside):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], timeout=30)
    mp.undo()


def build_message(body_cte: str = "8bit") -> bytes:
    """A submission as a client sends it: Vietnamese UTF-8 text (8bit), HTML, an attachment."""
    msg = EmailMessage(policy=default.clone(linesep="\r\n"))
    msg["From"] = f"Nguyễn Văn An <{SENDER}>"
    msg["To"] = f"Đối Tác <{PARTNER}>"
    msg["Subject"] = "Công văn số 123 về chữ ký số"
    msg["Date"] = "Mon, 07 Dec 2026 11:00:00 +0700"
    msg["Message-ID"] = "<cv123@bo.gov.vn>"
    msg.set_content(VIETNAMESE, cte=body_cte)
    msg.add_alternative(HTML, subtype="html", cte=body_cte)
    msg.add_attachment(
        ATTACHMENT, maintype="application", subtype="octet-stream", filename="cv123.bin"
    )
    raw = msg.as_bytes()
    return b"Received: from client (client [192.0.2.1]) by mx.bo.gov.vn\r\n" + raw


def simple_8bit() -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {PARTNER}\r\nSubject: =?utf-8?b?dGhpIMSRdWE=?=\r\n"
        "Date: Mon, 07 Dec 2026 11:00:00 +0700\r\nMessage-ID: <s1@bo.gov.vn>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: text/plain; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: 8bit\r\n\r\n" + VIETNAMESE.replace("\n", "\r\n")
    ).encode("utf-8")


def rfc3156_parts(signed: bytes) -> tuple[bytes, bytes]:
    """The test's own reading of RFC 3156 §5: the first part's exact bytes, CRLF canonical."""
    boundary = message_from_bytes(signed, policy=default).get_boundary().encode()
    body = signed.split(b"\r\n\r\n", 1)[1]
    pieces = (b"\r\n" + body).split(b"\r\n--" + boundary)
    assert pieces[3].startswith(b"--"), "closing delimiter"
    first = pieces[1].split(b"\r\n", 1)[1]
    sig_part = pieces[2].split(b"\r\n", 1)[1]
    signature = sig_part.split(b"\r\n\r\n", 1)[1]
    return first, signature


def decoded(entity: bytes) -> dict[str, object]:
    msg = message_from_bytes(entity, policy=default)
    out: dict[str, object] = {}
    for part in msg.walk():
        if part.is_multipart():
            continue
        if part.get_content_maintype() == "text":
            out[part.get_content_type()] = part.get_content().replace("\r\n", "\n")
        else:
            out[part.get_content_type()] = part.get_content()
    return out


def gpg_verify_detached(home: Path, data: bytes, signature: bytes, tmp: Path):
    (tmp / "data").write_bytes(data)
    (tmp / "data.asc").write_bytes(signature)
    return gpg(home, "--verify", str(tmp / "data.asc"), str(tmp / "data"), check=False)


# --- the keyring -----------------------------------------------------------------------


def test_home_private_and_user_gnupg_untouched(world):
    gw: Keyring = world["gw"]
    assert stat.S_IMODE(gw.home.stat().st_mode) == 0o700
    for root, _dirs, files in os.walk(gw.home):
        for f in files:
            path = Path(root, f)
            if path.is_file() and not path.is_socket():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not (world["fake_home"] / ".gnupg").exists()
    assert agent_socket(gw.home).is_socket()


def agent_socket(home: Path) -> Path:
    out = subprocess.run(
        ["gpgconf", "--homedir", str(home), "--list-dirs", "agent-socket"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    return Path(out)


def test_agent_started_with_the_keyring_and_stopped_by_close(world, tmp_path):
    gw = Keyring(tmp_path / "fresh")
    assert agent_socket(gw.home).is_socket()  # warm before the first message
    gw.close()
    deadline = time.monotonic() + 10
    while agent_socket(gw.home).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not agent_socket(gw.home).exists()


def test_a_helpers_key_store_leaves_the_shared_agent_running(world, tmp_path):
    """Every SMTP process of one gateway uses the same GNUPGHOME and agent: a helper that
    exits or is replaced closes its key store without stopping the agent."""
    from gateway.signing.keys import KeyStore

    primary, helper = KeyStore(tmp_path), KeyStore(tmp_path)
    home = primary.keyring().home
    assert helper.keyring().home == home and agent_socket(home).is_socket()
    helper.close(stop_agent=False)
    time.sleep(0.5)
    assert agent_socket(home).is_socket()
    primary.close()
    deadline = time.monotonic() + 10
    while agent_socket(home).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not agent_socket(home).exists()


def test_key_that_expires_while_listed_is_no_longer_offered(world, monkeypatch):
    gw: Keyring = world["gw"]
    partner, sender = gw.encryption_key(PARTNER), gw.signing_key(SENDER)
    assert partner.expires and sender.expires
    later = max(partner.expires, sender.expires) + timedelta(days=1)

    class Later(datetime):
        @classmethod
        def now(cls, tz=None):
            return later

    monkeypatch.setattr(pgp, "datetime", Later)  # the listing stays cached; the clock moves
    assert gw.keys(PARTNER) == [partner]
    assert gw.encryption_key(PARTNER) is None
    assert gw.signing_key(SENDER) is None


def test_keys_primary_fingerprint_addresses_and_capabilities(world):
    gw: Keyring = world["gw"]
    fpr = world["fpr"]
    (sender,) = gw.keys(SENDER)
    assert sender.fingerprint == fpr["sender"]  # the primary key, not the cv25519 subkey
    assert sender.fingerprint not in subkey_fprs(world["keygen"], fpr["sender"])
    assert sender.keyid == fpr["sender"][-16:]
    assert sender.addresses == (SENDER,)  # the UID was upper case
    assert sender.secret and sender.can_sign and sender.can_encrypt
    assert sender.expires is not None and not sender.expired and not sender.revoked
    (partner,) = gw.keys(PARTNER)
    assert not partner.secret and partner.can_encrypt
    assert set(partner.subkeys) == set(subkey_fprs(world["outside"], fpr["partner"]))
    assert len(partner.subkeys) == 2  # cv25519 encryption, ed25519 signing
    assert gw.signing_key(SENDER) == sender
    assert gw.encryption_key(PARTNER) == partner
    assert gw.signing_key(PARTNER) is None  # public only
    assert gw.keys(STRANGER) == [] and gw.encryption_key(STRANGER) is None


def test_expired_and_revoked_keys_not_offered(world):
    gw: Keyring = world["gw"]
    (expired,) = gw.keys(EXPIRED)
    (revoked,) = gw.keys(REVOKED)
    assert expired.expired and not expired.usable()
    assert revoked.revoked and not revoked.usable()
    for address in (EXPIRED, REVOKED):
        assert gw.signing_key(address) is None
        assert gw.encryption_key(address) is None
    partner = gw.encryption_key(PARTNER)
    for key in (expired, revoked):  # gpg refuses them, permanently; never signs with another
        with pytest.raises(PgpError) as err:
            gw.sign(simple_8bit(), key)
        assert not isinstance(err.value, PgpTemporaryError)
        with pytest.raises(PgpError):
            gw.encrypt(simple_8bit(), [partner], sign_with=key)


def test_import_returns_keys_and_rejects_garbage(world):
    gw: Keyring = world["gw"]
    (info,) = gw.import_key(world["armoured"]["partner"])  # again: unchanged, still reported
    assert info.fingerprint == world["fpr"]["partner"]
    with pytest.raises(PgpError):
        gw.import_key(b"not a key")
    with pytest.raises(PgpError):
        gw.import_key(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY")


def test_key_imported_by_another_process_counts_at_once(world, tmp_path):
    gw: Keyring = world["gw"]
    stranger = export(world["outside"], world["fpr"]["stranger"])
    assert gw.encryption_key(STRANGER) is None
    gpg(gw.home, "--import", data=stranger)  # as `mailgate keys import` would, beside serve
    try:
        assert gw.encryption_key(STRANGER).fingerprint == world["fpr"]["stranger"]
    finally:
        gw.remove(world["fpr"]["stranger"])
    assert gw.encryption_key(STRANGER) is None


def test_remove_secret_key(world):
    gw: Keyring = world["gw"]
    gw.remove(world["fpr"]["expired"])
    assert gw.keys(EXPIRED) == []
    listed = gpg(gw.home, "--with-colons", "-K").stdout.decode()
    assert world["fpr"]["expired"] not in listed
    gw.import_key(world["armoured"]["expired"])
    assert gw.keys(EXPIRED)[0].secret


def test_remove_and_reimport(world):
    gw: Keyring = world["gw"]
    gw.remove(world["fpr"]["partner"])
    assert gw.keys(PARTNER) == []
    with pytest.raises(PgpError):
        gw.remove(world["fpr"]["partner"])
    gw.import_key(world["armoured"]["partner"])
    assert gw.encryption_key(PARTNER).fingerprint == world["fpr"]["partner"]


# --- sign ------------------------------------------------------------------------------


def test_signed_output_verifies_with_gpg_cli(world, tmp_path):
    gw: Keyring = world["gw"]
    original = build_message()
    signed = gw.sign(original, gw.signing_key(SENDER))
    assert b"\n" not in signed.replace(b"\r\n", b"")  # CRLF only
    outer = message_from_bytes(signed, policy=default)
    assert outer.get_content_type() == "multipart/signed"
    assert outer.get_param("micalg") == "pgp-sha256"
    assert outer.get_param("protocol") == "application/pgp-signature"
    for name in ("From", "To", "Subject", "Date", "Message-ID", "Received"):
        assert outer[name] == message_from_bytes(original, policy=default)[name]
    assert outer.get_all("Content-Transfer-Encoding") is None
    first, signature = rfc3156_parts(signed)
    assert first.isascii()  # 7-bit safe: the 8bit parts were re-encoded before signing
    assert all(len(line) <= 998 for line in first.split(b"\r\n"))
    assert not any(line.endswith(b" ") for line in first.split(b"\r\n"))
    inner = message_from_bytes(first, policy=default)
    assert inner.get_content_type() == "multipart/mixed"
    assert inner["Subject"] is None and inner["From"] is None
    proc = gpg_verify_detached(world["outside"], first, signature, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"VALIDSIG {world['fpr']['sender']}".encode() in proc.stderr or (
        world["fpr"]["sender"].encode() in proc.stderr and b"GOODSIG" in proc.stderr
    )
    want = decoded(original.split(b"\r\n", 1)[1])
    assert decoded(first) == want
    assert want["text/plain"] == VIETNAMESE
    assert want["application/octet-stream"] == ATTACHMENT


def test_sign_then_verify_pass(world):
    gw: Keyring = world["gw"]
    signed = gw.sign(build_message(), gw.signing_key(SENDER))
    assert is_signed(signed) and not is_encrypted(signed)
    v = gw.verify(signed)
    assert (v.status, v.fingerprint, v.addresses) == ("pass", world["fpr"]["sender"], (SENDER,))


def test_vietnamese_8bit_single_part_signed_and_verified(world, tmp_path):
    gw: Keyring = world["gw"]
    original = simple_8bit()
    signed = gw.sign(original, gw.signing_key(SENDER))
    first, signature = rfc3156_parts(signed)
    assert first.isascii()
    inner = message_from_bytes(first, policy=default)
    assert inner["Content-Transfer-Encoding"] == "quoted-printable"
    assert inner.get_content().replace("\r\n", "\n") == VIETNAMESE
    assert gpg_verify_detached(world["outside"], first, signature, tmp_path).returncode == 0
    assert gw.verify(signed).status == "pass"
    # the same message arriving with LF line ends (a local pickup) still verifies
    assert gw.verify(signed.replace(b"\r\n", b"\n")).status == "pass"


def test_seven_bit_message_signed_byte_exact(world):
    gw: Keyring = world["gw"]
    body = b"Plain ASCII.\r\n\r\n-- \r\nsig\r\n".replace(b"-- \r\n", b"--\r\n")
    original = b"From: a@bo.gov.vn\r\nSubject: x\r\nContent-Type: text/plain\r\n\r\n" + body
    first, _ = rfc3156_parts(gw.sign(original, gw.signing_key(SENDER)))
    assert first == b"Content-Type: text/plain\r\n\r\n" + body


def test_undeclared_8bit_and_trailing_white_space_are_encoded(world, tmp_path):
    gw: Keyring = world["gw"]
    text = "Dòng có khoảng trắng cuối   \r\nDòng cuối\r\n"
    original = (
        f"From: {SENDER}\r\nSubject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}"
    ).encode()
    ascii_trailing = b"From: a@bo.gov.vn\r\nContent-Type: text/plain\r\n\r\nkhoang trang  \r\n"
    for message in (original, ascii_trailing):
        signed = gw.sign(message, gw.signing_key(SENDER))
        first, signature = rfc3156_parts(signed)
        assert first.isascii()
        assert not any(line.endswith((b" ", b"\t")) for line in first.split(b"\r\n"))
        assert gpg_verify_detached(world["outside"], first, signature, tmp_path).returncode == 0
        want = message_from_bytes(message, policy=default).get_content()
        assert message_from_bytes(first, policy=default).get_content() == want


def test_tampered_signed_message_fails(world):
    gw: Keyring = world["gw"]
    signed = gw.sign(simple_8bit(), gw.signing_key(SENDER))
    first, _ = rfc3156_parts(signed)
    tampered_first = first.replace(b"123", b"124", 1)
    assert tampered_first != first
    v = gw.verify(signed.replace(first, tampered_first))
    assert v.status == "fail" and v.reason == "signature bad"
    assert v.fingerprint is None or v.fingerprint == world["fpr"]["sender"]
    # a garbled signature is a failure too, never a pass
    sig_start = signed.index(b"-----BEGIN PGP SIGNATURE-----")
    garbled = signed[: sig_start + 40] + b"AAAA" + signed[sig_start + 44 :]
    assert gw.verify(garbled).status == "fail"


def test_unsigned_is_none(world):
    v = world["gw"].verify(simple_8bit())
    assert v.status == "none" and not is_signed(simple_8bit())


def mime_signed_by_cli(home: Path, signer: str, entity: bytes, tmp: Path) -> bytes:
    """RFC 3156 §5 built around the gpg CLI's detached signature."""
    (tmp / "entity").write_bytes(entity)
    sig = (
        gpg(
            home,
            "--armor",
            "--detach-sign",
            "--digest-algo",
            "SHA256",
            "-u",
            signer,
            "-o",
            "-",
            str(tmp / "entity"),
        )
        .stdout.replace(b"\r\n", b"\n")
        .replace(b"\n", b"\r\n")
    )
    b = b"cli-boundary-42"
    return (
        b"From: " + signer.encode() + b"\r\nTo: " + SENDER.encode() + b"\r\nSubject: cli\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/signed; micalg=pgp-sha256;\r\n"
        b' protocol="application/pgp-signature"; boundary="' + b + b'"\r\n\r\n'
        b"--" + b + b"\r\n" + entity + b"\r\n--" + b + b"\r\n"
        b"Content-Type: application/pgp-signature\r\n\r\n" + sig + b"\r\n--" + b + b"--\r\n"
    )


ENTITY = (
    'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
    + base64.encodebytes(VIETNAMESE.encode()).decode().replace("\n", "\r\n")
).encode()


def test_cli_signed_message_verified(world, tmp_path):
    gw: Keyring = world["gw"]
    # the CLI signs with the partner's signing subkey, not its primary key
    message = mime_signed_by_cli(world["outside"], PARTNER, ENTITY, tmp_path)
    first, signature = rfc3156_parts(message)
    proc = gpg_verify_detached(world["outside"], first, signature, tmp_path)
    validsig = next(ln for ln in proc.stderr.decode().splitlines() if "VALIDSIG" in ln).split()
    assert validsig[2] in subkey_fprs(world["outside"], world["fpr"]["partner"])
    v = gw.verify(mime_signed_by_cli(world["outside"], PARTNER, ENTITY, tmp_path))
    assert (v.status, v.fingerprint, v.addresses) == ("pass", world["fpr"]["partner"], (PARTNER,))
    v = gw.verify(mime_signed_by_cli(world["outside"], STRANGER, ENTITY, tmp_path))
    assert v.status == "neutral" and v.reason == "no public key"
    assert v.key_id == world["fpr"]["stranger"][-16:]
    good = mime_signed_by_cli(world["outside"], PARTNER, ENTITY, tmp_path)
    tampered = good.replace(b"\r\n\r\nS8Ot", b"\r\n\r\nS8Ou", 1)
    assert tampered != good
    assert gw.verify(tampered).status == "fail"


# --- encrypt / decrypt -----------------------------------------------------------------


def test_encrypted_output_decrypts_with_gpg_cli(world):
    gw: Keyring = world["gw"]
    original = build_message()
    partner = gw.encryption_key(PARTNER)
    out = gw.encrypt(original, [partner], sign_with=gw.signing_key(SENDER))
    assert is_encrypted(out) and not is_signed(out)
    outer = message_from_bytes(out, policy=default)
    assert outer.get_content_type() == "multipart/encrypted"
    assert outer.get_param("protocol") == "application/pgp-encrypted"
    version, data = outer.get_payload()
    assert version.get_content_type() == "application/pgp-encrypted"
    assert version.get_payload().strip() == "Version: 1"
    assert data.get_content_type() == "application/octet-stream"
    assert outer["Subject"] == message_from_bytes(original, policy=default)["Subject"]
    armoured = data.get_payload(decode=True)
    assert armoured.startswith(b"-----BEGIN PGP MESSAGE-----")
    proc = gpg(world["outside"], "--decrypt", data=armoured)
    assert b"GOODSIG" in proc.stderr and world["fpr"]["sender"].encode() in proc.stderr
    assert decoded(proc.stdout) == decoded(original.split(b"\r\n", 1)[1])
    assert decoded(proc.stdout)["text/plain"] == VIETNAMESE


def test_encrypt_only_keeps_content_bytes(world):
    gw: Keyring = world["gw"]
    out = gw.encrypt(simple_8bit(), [gw.encryption_key(PARTNER)])
    armoured = message_from_bytes(out, policy=default).get_payload()[1].get_payload(decode=True)
    proc = gpg(world["outside"], "--decrypt", data=armoured)
    assert b"GOODSIG" not in proc.stderr
    assert proc.stdout == simple_8bit().split(b"\r\n\r\n", 1)[1].join(
        [
            b'MIME-Version: 1.0\r\nContent-Type: text/plain; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: 8bit\r\n\r\n",
            b"",
        ]
    )


def test_encrypt_refuses_without_recipients_or_to_a_revoked_key(world):
    gw: Keyring = world["gw"]
    with pytest.raises(PgpError):
        gw.encrypt(simple_8bit(), [])
    big = simple_8bit() + b"x" * 2_000_000  # gpg refuses before reading: the pipe breaks
    for message in (simple_8bit(), big):
        with pytest.raises(PgpError) as err:
            gw.encrypt(message, gw.keys(REVOKED))
        assert world["fpr"]["revoked"] in err.value.reason
        assert not isinstance(err.value, PgpTemporaryError)


def mime_encrypted_by_cli(home: Path, armoured: bytes) -> bytes:
    b = b"enc-cli-7"
    return (
        b"From: " + PARTNER.encode() + b"\r\nTo: " + SENDER.encode() + b"\r\n"
        b"Subject: encrypted by the CLI\r\nMessage-ID: <e1@doitac.vn>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\r\n'
        b' boundary="' + b + b'"\r\n\r\n--' + b + b"\r\n"
        b"Content-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n--" + b + b"\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n" + armoured + b"\r\n--" + b + b"--\r\n"
    )


def test_cli_encrypted_and_signed_message_decrypted(world):
    gw: Keyring = world["gw"]
    outside = world["outside"]
    args = ["--armor", "--encrypt", "-r", world["fpr"]["sender"]]
    signed = gpg(outside, *args, "--sign", "-u", PARTNER, data=ENTITY).stdout
    result = gw.decrypt(mime_encrypted_by_cli(outside, signed))
    assert result.signed and result.verification.status == "pass"
    assert result.verification.fingerprint == world["fpr"]["partner"]
    assert result.message.startswith(b"From: " + PARTNER.encode())
    msg = message_from_bytes(result.message, policy=default)
    assert msg["Message-ID"] == "<e1@doitac.vn>"
    assert msg.get_content().replace("\r\n", "\n") == VIETNAMESE
    assert result.message.endswith(ENTITY)

    plain = gpg(outside, *args, "-r", world["fpr"]["partner"], data=ENTITY).stdout
    result = gw.decrypt(mime_encrypted_by_cli(outside, plain))
    assert not result.signed and result.verification.status == "none"
    assert result.message.endswith(ENTITY)

    by_stranger = gpg(outside, *args, "--sign", "-u", STRANGER, data=ENTITY).stdout
    result = gw.decrypt(mime_encrypted_by_cli(outside, by_stranger))
    assert result.signed and result.verification.status == "neutral"


def test_decrypt_signed_then_encrypted_rfc3156_6_1(world, tmp_path):
    gw: Keyring = world["gw"]
    outside = world["outside"]
    signed = mime_signed_by_cli(outside, PARTNER, ENTITY, tmp_path)
    inner = signed.split(b"\r\n", 3)[3]  # drop From/To/Subject: the entity with its Content-*
    enc = gpg(outside, "--armor", "--encrypt", "-r", world["fpr"]["sender"], data=inner).stdout
    result = gw.decrypt(mime_encrypted_by_cli(outside, enc))
    assert result.signed and result.verification.status == "pass"


def test_decrypt_without_our_key_is_permanent(world):
    gw: Keyring = world["gw"]
    enc = gpg(world["outside"], "--armor", "--encrypt", "-r", PARTNER, data=ENTITY).stdout
    with pytest.raises(PgpError) as err:
        gw.decrypt(mime_encrypted_by_cli(world["outside"], enc))
    assert not isinstance(err.value, PgpTemporaryError)
    with pytest.raises(PgpError):
        gw.decrypt(simple_8bit())


def test_own_roundtrip(world):
    gw: Keyring = world["gw"]
    sender = gw.signing_key(SENDER)
    out = gw.encrypt(build_message(), [sender], sign_with=sender)
    result = gw.decrypt(out)
    assert result.signed and result.verification.status == "pass"
    assert decoded(result.message) == decoded(build_message())


def test_worker_threads_share_one_keyring(world):
    gw: Keyring = world["gw"]
    sender, partner = gw.signing_key(SENDER), gw.encryption_key(PARTNER)

    def one(i: int) -> tuple[str, bool]:
        msg = simple_8bit().replace(b"<s1@", f"<t{i}@".encode())
        signed = gw.sign(msg, sender)
        enc = gw.encrypt(msg, [partner, sender], sign_with=sender)
        return gw.verify(signed).status, gw.decrypt(enc).verification.status == "pass"

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(one, range(12)))
    assert results == [("pass", True)] * 12


def test_agent_gone_is_restarted(world):
    gw: Keyring = world["gw"]
    subprocess.run(["gpgconf", "--homedir", str(gw.home), "--kill", "gpg-agent"], timeout=30)
    signed = gw.sign(simple_8bit(), gw.signing_key(SENDER))
    assert gw.verify(signed).status == "pass"


# --- passphrases, secrets, failures ----------------------------------------------------


def test_protected_key_needs_its_passphrase_and_never_leaks_it(world, caplog):
    gw: Keyring = world["gw"]
    caplog.set_level("DEBUG")
    key = gw.signing_key(PROTECTED)
    assert key is not None
    with pytest.raises(PgpError) as err:
        gw.sign(simple_8bit(), key)
    with pytest.raises(PgpError) as err2:
        gw.sign(simple_8bit(), key, passphrase="sai")
    sealed = gw.encrypt(simple_8bit(), [key])
    with pytest.raises(PgpError) as err3:
        gw.decrypt(sealed)
    opened = gw.decrypt(sealed, passphrase=PASSPHRASE)
    # from here on the agent holds the unlocked key for its cache TTL (documented)
    signed = gw.sign(simple_8bit(), key, passphrase=PASSPHRASE)
    assert gw.verify(signed).status == "pass"
    text = message_from_bytes(opened.message, policy=default).get_content()
    assert text.replace("\r\n", "\n") == VIETNAMESE
    gw.import_key(world["armoured"]["protected"], passphrase=PASSPHRASE)
    for text in (str(err.value), str(err2.value), str(err3.value), caplog.text):
        assert PASSPHRASE not in text
        assert "PRIVATE KEY BLOCK" not in text
        body = world["armoured"]["protected"].decode().splitlines()[3][:40]
        assert body not in text


def test_gpg_that_does_not_answer_is_temporary(world, tmp_path):
    slow = tmp_path / "slow-gpg"
    slow.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case $a in --detach-sign|--encrypt) exec sleep 30;; esac; done\n'
        'exec gpg "$@"\n'
    )
    slow.chmod(0o700)
    gw = Keyring(world["gw"].home, timeout=1.0, gpgbinary=str(slow))
    big = simple_8bit() + b"x" * 1_000_000  # gpg never reads it: the writer's pipe breaks
    sender = gw.signing_key(SENDER)
    calls = (
        lambda: gw.sign(simple_8bit(), sender),
        lambda: gw.sign(big, sender),
        lambda: gw.encrypt(big, [sender]),
    )
    for call in calls:
        t0 = time.monotonic()
        with pytest.raises(PgpTemporaryError) as err:
            call()
        assert time.monotonic() - t0 < 10
        assert "did not answer" in err.value.reason
        assert not isinstance(err.value, PgpError)


def test_unreadable_keyring_is_temporary_not_no_key(world, tmp_path):
    gw = Keyring(tmp_path / "broken")
    (gw.home / "pubring.kbx").mkdir()  # gpg: "read error: Is a directory"
    try:
        with pytest.raises(PgpTemporaryError) as err:
            gw.signing_key(SENDER)
        assert "pubring.kbx" in err.value.reason
        signed = world["gw"].sign(simple_8bit(), world["gw"].signing_key(SENDER))
        with pytest.raises(PgpTemporaryError):
            gw.verify(signed)
    finally:
        gw.close()


def test_failed_key_listing_is_temporary_not_no_key(world, tmp_path):
    failing = tmp_path / "failing-gpg"
    failing.write_text(
        '#!/bin/sh\nfor a in "$@"; do [ "$a" = --list-secret-keys ] && exit 2; done\n'
        'exec gpg "$@"\n'
    )
    failing.chmod(0o700)
    gw = Keyring(world["gw"].home, gpgbinary=str(failing))
    with pytest.raises(PgpTemporaryError) as err:
        gw.signing_key(SENDER)  # not None: that would mean "send unsigned" or a 5xx
    assert "keyring unreadable" in err.value.reason


def test_missing_gpg_is_temporary(world, tmp_path):
    with pytest.raises(PgpTemporaryError):
        Keyring(tmp_path / "h", gpgbinary=str(tmp_path / "no-such-gpg"))


# --- speed (printed, not asserted) -----------------------------------------------------


def test_speed_sign_encrypt_5kb(world):
    gw: Keyring = world["gw"]
    text = ("Công văn về chữ ký số, mã hóa thư điện tử. " * 120)[:5000]
    msg = (
        f"From: {SENDER}\r\nTo: {PARTNER}\r\nSubject: bench\r\nMIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'
        + text
    ).encode()
    sender, partner = gw.signing_key(SENDER), gw.encryption_key(PARTNER)
    raw = gnupg.GPG(gnupghome=str(gw.home))

    def ours() -> None:
        gw.encrypt(msg, [partner], sign_with=sender)

    def theirs() -> None:
        r = raw.encrypt(msg, partner.fingerprint, sign=sender.fingerprint, always_trust=True)
        assert r.ok

    def cold() -> None:
        subprocess.run(["gpgconf", "--homedir", str(gw.home), "--kill", "gpg-agent"], timeout=30)
        ours()

    ours()  # warm
    print("\nPGP sign+encrypt, 5 KB (wall msgs/s; msgs per CPU-second of this process + gpg):")
    for name, call, n in (("Keyring, agent warm", ours, 40), ("raw python-gnupg", theirs, 40)):
        print(f"  {name}: " + rate(call, n))
    print("  Keyring, agent killed before each call: " + rate(cold, 15))
    with ThreadPoolExecutor(max_workers=2) as pool:

        def two() -> None:
            list(pool.map(lambda _: ours(), range(2)))

        print("  Keyring, agent warm, 2 worker threads (x2 msgs): " + rate(two, 20))


def rate(call, n: int) -> str:
    def cpu() -> float:
        me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    t0, c0 = time.perf_counter(), cpu()
    for _ in range(n):
        call()
    return f"{n / (time.perf_counter() - t0):.0f}/s wall, {n / (cpu() - c0):.0f}/CPU-s"


def test_gpg_keeps_no_random_seed_file(world):
    """Concurrent gpg processes lock the seed file in turn, and libgcrypt waits 0.25 s and
    then 1.25 s for that lock: a message now and then took 1.5 s longer (the PGP line's
    p99 with two SMTP processes). The kernel's getrandom() seeds every call instead."""
    gw: Keyring = world["gw"]
    seed = gw.home / "random_seed"
    seed.unlink(missing_ok=True)  # an earlier test's own gpg CLI may have left one
    partner = gw.encryption_key(PARTNER)
    assert partner is not None
    assert gw.encrypt(simple_8bit(), [partner], sign_with=gw.signing_key(SENDER))
    assert not seed.exists()
