"""The data_dir ``serve`` runs on: never made up on the spot, never shared by two serves.

A mistyped data_dir used to give ``serve`` a new empty directory, so every local recipient
got 550; a second ``serve`` on the same data_dir would recover (delete) the first one's
spool files in progress. Both are now refused at start, exit 2, with the reason.
"""

from __future__ import annotations

import smtplib
import stat
import subprocess
from pathlib import Path

from tests.integration.harness import MAILGATE, REPO, Gateway, Sink, render_toml


def serve_once(gateway: Gateway) -> subprocess.CompletedProcess[str]:
    """``mailgate serve`` expected to refuse at start (a hang fails on the timeout)."""
    return subprocess.run(
        [*MAILGATE, "-c", str(gateway.config_path), "serve"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_init_creates_the_directory_database(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, "maildir:var/mail", "smtp://127.0.0.1:9", mailboxes=())
    database = tmp_path / "var" / "directory.sqlite3"
    database.unlink()
    result = gateway.cli("init")
    assert f"created an empty directory database {database.resolve()}" in result.stdout
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    again = gateway.cli("init")  # idempotent: an existing directory is left alone
    assert "directory database" not in again.stdout


def test_serve_refuses_a_data_dir_without_a_directory(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(sink.url, sink.url)
    sections = gateway.sections()
    sections["gateway"]["data_dir"] = "vra"  # a typo for "var"
    gateway.write_config(render_toml(sections))
    result = serve_once(gateway)
    output = result.stdout + result.stderr
    missing = (gateway.workdir / "vra" / "directory.sqlite3").resolve()
    assert result.returncode == 2, output
    assert f"no directory database at {missing}" in output
    assert "mailgate init -c" in output
    assert "Traceback" not in output
    assert not missing.exists(), "serve must not create the directory"


def test_a_second_serve_on_the_same_data_dir_is_refused(make_gateway, sink: Sink) -> None:
    first = make_gateway(sink.url, sink.url).start()
    assert first.process is not None
    second = make_gateway(sink.url, sink.url)
    sections = second.sections()
    sections["gateway"]["data_dir"] = str(first.workdir / "var")
    second.write_config(render_toml(sections))
    result = serve_once(second)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"is in use by mailgate PID {first.process.pid}; stop it first" in output
    assert "Traceback" not in output
    with smtplib.SMTP("127.0.0.1", first.inbound_port) as client:  # the first one is unharmed
        assert client.noop()[0] == 250
    assert first.stop() == 0
    second.start()  # the lock went with the first process
    with smtplib.SMTP("127.0.0.1", second.inbound_port) as client:
        client.ehlo("client.test")
        client.mail("a@other.org")
        assert client.rcpt("bob@example.gov.vn")[0] == 250, "it reads the first one's directory"
