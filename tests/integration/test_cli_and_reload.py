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
    assert "removed 1 day file(s), compressed 1" in result.stdout
    assert not old.exists() and not recent.exists()
    assert (gateway.log_dir / "events-2026-11-01.jsonl.gz").exists()
    assert [e["event"] for e in gateway.events() if e.get("actor") == "cli"][-2:] == [
        "log_purged",
        "log_compressed",
    ]


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


def test_check_config_prints_the_data_paths_and_warns_about_the_directory(
    make_gateway, sink: Sink
) -> None:
    """A mistyped data_dir is the usual reason every local recipient gets 550: show where
    the data is, and warn (not fail) when the directory is missing or empty."""
    gateway = make_gateway(sink.url, sink.url, mailboxes=())
    var = (gateway.workdir / "var").resolve()
    empty = gateway.cli("check-config", "--skip-bind", check=False)
    assert empty.returncode == 0, empty.stdout
    lines = empty.stdout.splitlines()
    assert lines[:4] == [
        f"data_dir: {var}",
        f"directory database: {var / 'directory.sqlite3'}",
        f"spool dir: {var / 'spool'}",
        f"log dir: {var / 'log'}",
    ]
    # Then what a login costs with [auth]'s argon2id (the defaults: within the minimums).
    assert lines[4].startswith("argon2id m=65536 KiB t=3 p=4: ")
    assert lines[5].startswith("login cache: up to 50000 logins for 3600 s")
    assert lines[6:8] == [
        "argon2id meets OWASP's minimum (m=19 MiB t=2 p=1, or m=46 MiB t=1): yes",
        "argon2id meets RFC 9106's second recommended option (m=64 MiB t=3 p=4): yes",
    ]
    assert lines[8] == (
        f"warning: the directory {var / 'directory.sqlite3'} holds no mailbox: every local"
        " recipient gets 550 user unknown (add one with `mailgate mailbox add`)"
    )
    assert lines[9:] == [f"{gateway.config_path}: OK (1 warning(s))"]

    sections = gateway.sections()
    sections["gateway"]["data_dir"] = "vra"
    from tests.integration.harness import render_toml

    gateway.write_config(render_toml(sections))
    typo = gateway.cli("check-config", "--skip-bind", check=False)
    assert typo.returncode == 0
    missing = (gateway.workdir / "vra" / "directory.sqlite3").resolve()
    (warning,) = [line for line in typo.stdout.splitlines() if line.startswith("warning: ")]
    assert f"no directory database at {missing}" in warning
    assert f"run `mailgate init -c {gateway.config_path}`" in warning
    assert not (gateway.workdir / "vra").exists(), "check-config creates nothing"

    gateway.write_config()
    gateway.add_recipients("bob@example.gov.vn")
    fine = gateway.cli("check-config", "--skip-bind")
    assert "warning" not in fine.stdout and fine.stdout.endswith(": OK\n")


def test_check_config_names_a_nul_byte_in_a_path(make_gateway, sink: Sink) -> None:
    """A NUL byte in a path made the loader raise ValueError (a traceback, and on SIGHUP
    a dead gateway): now it is a config mistake like any other, naming its key."""
    gateway = make_gateway(sink.url, sink.url)
    text = gateway.config_path.read_text()
    gateway.write_config(
        text.replace("[smtp]\n", '[smtp]\ntls_cert = "a\\u0000b"\ntls_key = "k.pem"\n')
    )
    result = gateway.cli("check-config", check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "smtp.tls_cert: contains a NUL character" in result.stdout
    other = gateway.cli("logs", "search", check=False)
    assert other.returncode != 0 and "Traceback" not in other.stderr
    assert "smtp.tls_cert: contains a NUL character" in other.stderr + other.stdout


def test_logs_search_into_head_ends_quietly(make_gateway, sink: Sink) -> None:
    """``mailgate logs search | head -2``: no BrokenPipeError traceback."""
    gateway = make_gateway(sink.url, sink.url)
    gateway.log_dir.mkdir(parents=True, exist_ok=True)
    day = gateway.log_dir / "events-2026-11-25.jsonl"
    with day.open("w", encoding="utf-8") as out:
        for n in range(20_000):  # ~2 MB: far more than a pipe buffer holds
            out.write(json.dumps({"ts": "2026-11-25T10:00:00Z", "event": "delivered", "n": n}))
            out.write("\n")
    search = subprocess.Popen(
        [*MAILGATE, "-c", str(gateway.config_path), "logs", "search"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    head = subprocess.run(
        ["head", "-2"], stdin=search.stdout, capture_output=True, text=True, timeout=60
    )
    assert search.stdout is not None and search.stderr is not None
    search.stdout.close()  # only head reads it now: when head exits, the pipe is broken
    stderr = search.stderr.read().decode()
    status = search.wait(timeout=60)
    header, first = head.stdout.splitlines()
    assert header.startswith("TIME (UTC)") and first.startswith("2026-11-25 10:00:00")
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert stderr == ""
    assert status in (0, 141)


def test_logs_search_for_an_event_nobody_emits_says_so(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(sink.url, sink.url)
    gateway.log_dir.mkdir(parents=True, exist_ok=True)
    day = gateway.log_dir / "events-2026-11-25.jsonl"
    day.write_text(
        '{"ts":"2026-11-25T10:00:00Z","event":"delivered"}\n'
        '{"ts":"2026-11-25T10:00:01Z","event":"imported_from_elsewhere"}\n'
    )
    typo = gateway.cli("logs", "search", "--event", "deliverd", check=False)
    assert typo.returncode == 2 and typo.stdout == ""
    (line,) = typo.stderr.splitlines()
    assert line.startswith("mailgate: no event is named 'deliverd'; known events: ")
    assert "delivered" in line.split("known events: ")[1].split(", ")
    nothing = gateway.cli("logs", "search", "--event", "bounced")  # known, none happened
    assert nothing.returncode == 0 and nothing.stdout == "" and nothing.stderr == ""
    foreign = gateway.cli("logs", "search", "--event", "imported_from_elsewhere")
    assert "imported_from_elsewhere" in foreign.stdout  # names in the files still match
