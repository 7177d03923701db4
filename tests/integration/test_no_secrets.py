"""No secret in any record: after real AUTH PLAIN and LOGIN (good and bad), a password
typed as a user name, refusals, an internal error, password changes from the CLI, log
maintenance and the syslog copy, neither a password nor its base64 forms (the AUTH PLAIN
token, AUTH LOGIN's lines) appears in the log dir, the gateway's stdout/stderr, the CLI's
output or syslog."""

from __future__ import annotations

import base64
import contextlib
import smtplib
import socket
from pathlib import Path

from tests.integration.harness import Gateway, Sink, render_toml

USER = "thu.ha@example.gov.vn"
PASSWORD = "Mat-khau-7Qz!"
NEW_PASSWORD = "Doi-mat-khau-8Wx?"
WRONG = "Sai-mat-khau-3Rt#"
TYPED_AS_USER = "Go-nham-o-ten-5Yp%"  # typed into the user field
MESSAGE = b"From: thu.ha@example.gov.vn\r\nTo: bob@example.gov.vn\r\nSubject: s\r\n\r\nx\r\n"


def forms(secret: str, user: str = USER) -> set[bytes]:
    """The secret and what an SMTP client sends for it."""
    raw = secret.encode()
    return {
        raw,
        base64.b64encode(raw),  # AUTH LOGIN's password line
        base64.b64encode(f"\0{user}\0{secret}".encode()),  # AUTH PLAIN's token
        base64.b64encode(f"{user}\0{user}\0{secret}".encode()),  # with an authzid
        f"\0{user}\0{secret}".encode(),
    }


def login(gateway: Gateway, mechanism: str, user: str, password: str) -> int:
    with smtplib.SMTP("127.0.0.1", gateway.submission_port) as client:
        client.ehlo()
        client.user, client.password = user, password
        method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        try:
            code, _ = client.auth(mechanism, method)
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code
        if code == 235:
            with contextlib.suppress(smtplib.SMTPException):
                client.sendmail(USER, ["bob@example.gov.vn"], MESSAGE.replace(b"thu.ha", b"x"))
        return code


def test_no_password_or_auth_token_in_any_log_output_or_error(
    make_gateway, sink: Sink, tmp_path: Path
) -> None:
    sink.handler.rcpt_replies["carol@example.gov.vn"] = "451 4.3.0 later"  # spooled
    gateway = make_gateway(sink.url, sink.url)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.5)
    sections = gateway.sections()
    sections["log"].update(syslog=f"udp:127.0.0.1:{receiver.getsockname()[1]}", syslog_events=True)
    gateway.write_config(render_toml(sections))
    outputs: list[str] = []
    done = gateway.cli("mailbox", "add", USER, "--name", "Nguyễn Thu Hà", "--password", PASSWORD)
    outputs += [done.stdout, done.stderr]
    gateway.start()

    assert login(gateway, "PLAIN", USER, PASSWORD) == 235
    assert login(gateway, "LOGIN", USER, PASSWORD) == 235
    assert login(gateway, "PLAIN", USER, WRONG) == 535
    assert login(gateway, "LOGIN", USER, WRONG) == 535
    assert login(gateway, "LOGIN", TYPED_AS_USER, PASSWORD) == 535
    assert login(gateway, "PLAIN", TYPED_AS_USER, WRONG) == 535
    with smtplib.SMTP("127.0.0.1", gateway.submission_port) as client:  # refusals
        client.ehlo()
        client.user, client.password = USER, PASSWORD
        client.auth("PLAIN", client.auth_plain)
        with contextlib.suppress(smtplib.SMTPException):  # From: someone else
            client.sendmail(USER, ["bob@example.gov.vn"], MESSAGE.replace(b"thu.ha", b"khac"))
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        with contextlib.suppress(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@other.org", ["x@elsewhere.org"], MESSAGE)
        client.sendmail("a@other.org", ["bob@example.gov.vn", "carol@example.gov.vn"], MESSAGE)

    for args in (
        ("mailbox", "passwd", USER, "--password", NEW_PASSWORD, "--old-password", PASSWORD),
        ("mailbox", "passwd", USER, "--password", "short", "--old-password", NEW_PASSWORD),
        ("mailbox", "passwd", USER, "--password", NEW_PASSWORD, "--old-password", WRONG),
        ("logs", "search", "--user", USER),
        ("logs", "search", "--json"),
        ("logs", "verify"),
        ("logs", "export", "--since", "2000-01-01", "--until", "2100-01-01"),
        ("maintenance",),
    ):
        done = gateway.cli(*args, check=False)
        outputs += [done.stdout, done.stderr]
    # An internal error: the directory database is damaged under the running gateway.
    database = gateway.workdir / "var" / "directory.sqlite3"
    database.write_bytes(b"\xff" * database.stat().st_size)
    with (
        smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client,
        contextlib.suppress(smtplib.SMTPRecipientsRefused),
    ):
        client.sendmail("a@other.org", ["alice@example.gov.vn"], MESSAGE)
    error = gateway.wait_event("internal_error")
    assert error["reason"].startswith("directory lookup: DatabaseError at gateway/"), error
    assert gateway.stop() == 0

    syslog = []
    with contextlib.suppress(TimeoutError):
        while True:
            syslog.append(receiver.recv(65536))
    receiver.close()
    assert any(b'"event":"auth_success"' in line for line in syslog)

    places: dict[str, bytes] = {
        str(p): p.read_bytes() for p in gateway.log_dir.rglob("*") if p.is_file()
    }
    places["serve stdout/stderr"] = (gateway.workdir / "serve.log").read_bytes()
    places["CLI output"] = "\n".join(outputs).encode()
    places["syslog"] = b"\n".join(syslog)
    assert len(places) >= 4 and places["serve stdout/stderr"] is not None
    secrets = set().union(
        forms(PASSWORD), forms(NEW_PASSWORD), forms(WRONG), forms(TYPED_AS_USER),
        forms(PASSWORD, TYPED_AS_USER), forms(WRONG, TYPED_AS_USER),
        {base64.b64encode(TYPED_AS_USER.encode())},
    )  # fmt: skip
    leaks = [
        (where, secret) for where, data in places.items() for secret in secrets if secret in data
    ]
    assert leaks == []
