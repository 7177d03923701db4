"""Operators' side: check-config, serve refusing bad configs, SIGHUP, logs search, retention."""

from __future__ import annotations

import json
import signal
import smtplib
import socket
import subprocess

from tests.integration.harness import MAILGATE, REPO, Gateway, Sink

MESSAGE = b"Subject: cli\r\nMessage-ID: <cli-1@other.org>\r\n\r\nbody\r\n"


def test_check_config_names_every_mistake(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(sink.url, sink.url)
    sections = gateway.sections()
    sections["smtp"]["max_message_size"] = "20MB"
    sections["smtp"]["tls_certt"] = "x.pem"
    sections["delivery"]["local"] = "ftp://nowhere"
    from tests.integration.harness import render_toml

    gateway.write_config(render_toml(sections))
    result = gateway.cli("check-config", check=False)
    assert result.returncode == 1
    out = result.stdout
    assert "smtp.max_message_size: expected a positive number (bytes)" in out
    assert 'smtp.tls_certt: unknown key; did you mean "tls_cert"?' in out
    assert "delivery.local: expected" in out
    assert "3 problem(s)" in out


def test_serve_refuses_a_bad_config_and_a_busy_port(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(sink.url, sink.url)
    gateway.write_config("[gateway]\nhostname = 1\n")
    result = subprocess.run(
        [*MAILGATE, "-c", str(gateway.config_path), "serve"],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "gateway.hostname: expected a non-empty string" in result.stdout
    gateway.write_config()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", gateway.inbound_port))
        squatter.listen()
        result = subprocess.run(
            [*MAILGATE, "-c", str(gateway.config_path), "serve"],
            cwd=REPO, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        check = gateway.cli("check-config", check=False)
    assert result.returncode == 2
    assert f"smtp.inbound_listen: 127.0.0.1:{gateway.inbound_port} already in use" in result.stdout
    assert check.returncode == 1 and "already in use" in check.stdout
    assert gateway.cli("check-config", "--skip-bind").returncode == 0


def rcpt_code(gateway: Gateway, address: str) -> int:
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.ehlo("client.test")
        client.mail("a@other.org")
        return client.rcpt(address)[0]


def test_sighup_keeps_old_config_when_new_is_bad_and_applies_a_good_one(
    gateway: Gateway,
) -> None:
    assert rcpt_code(gateway, "x@other.gov.vn") == 550
    good = gateway.config_path.read_text()
    gateway.write_config(good.replace("[log]", "[log]\nretention_dayz = 1"))
    gateway.signal(signal.SIGHUP)
    rejected = gateway.wait_event("config_rejected")
    assert "log.retention_dayz: unknown key" in rejected["reason"]
    assert rcpt_code(gateway, "bob@example.gov.vn") == 250, "still serving on the old config"
    gateway.write_config(
        good.replace('domains = ["example.gov.vn"]', 'domains = ["example.gov.vn", "other.gov.vn"]')
    )
    gateway.signal(signal.SIGHUP)
    gateway.wait_event("config_reloaded")
    assert rcpt_code(gateway, "x@other.gov.vn") == 550, "now local, but not in the directory"
    gateway.add_recipients("x@other.gov.vn")
    assert rcpt_code(gateway, "x@other.gov.vn") == 250


def test_logs_search_finds_a_message_by_its_fields(gateway: Gateway, sink: Sink) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.sendmail("alice@other.org", ["bob@example.gov.vn"], MESSAGE)
    gateway.wait_event("message_accepted")
    result = gateway.cli("logs", "search", "--message-id", "cli-1@other.org", "--json")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["event"] for r in records} >= {"delivered", "message_accepted"}
    assert all(r["message_id"] == "<cli-1@other.org>" for r in records)
    by_sender = gateway.cli("logs", "search", "--sender", "ALICE@other.org", "--event",
                            "message_accepted", "--json").stdout.splitlines()  # fmt: skip
    assert len(by_sender) == 1
    assert json.loads(by_sender[0])["recipients"] == ["bob@example.gov.vn"]
    none = gateway.cli("logs", "search", "--recipient", "nobody@example.gov.vn").stdout
    assert none == ""
    human = gateway.cli("logs", "search", "--event", "message_accepted").stdout
    assert "message_accepted" in human and "alice@other.org" in human
    bad = gateway.cli("logs", "search", "--since", "yesterday", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("mailgate: ")


def test_maintenance_purges_logs_past_retention(gateway: Gateway) -> None:
    old = gateway.log_dir / "events-2026-01-01.jsonl"
    old.write_text('{"ts":"2026-01-01T00:00:00Z","event":"x"}\n')
    recent = gateway.log_dir / "events-2026-11-01.jsonl"
    recent.write_text('{"ts":"2026-11-01T00:00:00Z","event":"x"}\n')
    result = gateway.cli("maintenance", "--now", "2026-11-25")
    assert "removed 1 day file(s)" in result.stdout
    assert not old.exists() and recent.exists()


def test_files_the_gateway_writes_are_private(gateway: Gateway, sink: Sink) -> None:
    """Mail, spool, directory (password hashes) and logs: owner only, whatever the umask."""
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.sendmail("alice@other.org", ["bob@example.gov.vn"], MESSAGE)
    gateway.wait_event("message_accepted")
    written = [p for p in (gateway.workdir / "var").rglob("*") if p.is_file()]
    assert any(p.name == "directory.sqlite3" for p in written)
    assert any(p.suffix == ".jsonl" for p in written)
    loose = [str(p) for p in written if p.stat().st_mode & 0o077]
    assert loose == []
