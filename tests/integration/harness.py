"""Real parts for integration tests: the gateway as a process, and a controllable SMTP sink."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.directory.mailboxes import Directory, Registration

REPO = Path(__file__).resolve().parents[2]
# Local mailboxes every test gateway's directory knows (they receive; none can log in).
RECIPIENTS = tuple(
    f"{name}@example.gov.vn" for name in ("alice", "bob", "carol", "nobody", "ghost")
)
MAILGATE = [sys.executable, "-m", "gateway.cli"]
DOMAIN = "example.gov.vn"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(
    port: int, timeout: float = 10.0, process: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def render_toml(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


@dataclass
class Gateway:
    """``mailgate serve`` in a subprocess with its own config, ports and data folder."""

    workdir: Path
    local: str
    outbound: str
    smtp_extra: dict[str, Any] = field(default_factory=dict)
    queue: dict[str, Any] = field(default_factory=dict)
    mailboxes: tuple[str, ...] = RECIPIENTS
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.inbound_port = free_port()
        self.submission_port = free_port()
        self.config_path = self.workdir / "gateway.toml"
        self.write_config()
        self.add_recipients(*self.mailboxes)

    def add_recipients(self, *addresses: str) -> None:
        """Mailboxes that receive but cannot log in (no password: no argon2 cost)."""
        directory = Directory.for_data_dir(self.workdir / "var")
        try:
            for address in addresses:
                directory.add(Registration(address, address.split("@")[0].title()), None)
        finally:
            directory.close()

    @property
    def log_dir(self) -> Path:
        return self.workdir / "var" / "log"

    @property
    def spool_queue(self) -> Path:
        return self.workdir / "var" / "spool" / "queue"

    def sections(self) -> dict[str, dict[str, Any]]:
        smtp = {
            "inbound_listen": f"127.0.0.1:{self.inbound_port}",
            "submission_listen": f"127.0.0.1:{self.submission_port}",
            "require_tls_for_auth": False,
            **self.smtp_extra,
        }
        return {
            "gateway": {"hostname": "mx.example.gov.vn", "domains": [DOMAIN], "data_dir": "var"},
            "smtp": smtp,
            "delivery": {"local": self.local, "outbound": self.outbound, "timeout": 5},
            "queue": {"retry_min_seconds": 1, "scan_interval_seconds": 0.5, **self.queue},
            "log": {"dir": "var/log"},
        }

    def write_config(self, text: str | None = None) -> None:
        self.config_path.write_text(text or render_toml(self.sections()), encoding="utf-8")

    def add_sections(self, sections: dict[str, dict[str, Any]]) -> None:
        """Append TOML tables to the config, e.g. ``{"filters.rate_limit": {...}}``."""
        with self.config_path.open("a", encoding="utf-8") as out:
            out.write("\n" + render_toml(sections))

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*MAILGATE, "-c", str(self.config_path), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and done.returncode != 0:  # say why: a bare exit status explains nothing
            raise AssertionError(
                f"mailgate {' '.join(args[:2])} exited {done.returncode}: {done.stderr.strip()}"
            )
        return done

    def start(self) -> Gateway:
        self.stderr = (self.workdir / "serve.log").open("ab")
        self.process = subprocess.Popen(
            [*MAILGATE, "-c", str(self.config_path), "serve"],
            cwd=REPO,
            stdout=self.stderr,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.inbound_port, process=self.process)
        wait_for_port(self.submission_port, process=self.process)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        self.stderr.close()
        return code

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.log_dir.glob("events-*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                if name is None or record["event"] == name:
                    found.append(record)
        return found

    def wait_event(
        self, name: str, predicate: Callable[[dict], bool] = lambda e: True, timeout: float = 15
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.events(name):
                if predicate(record):
                    return record
            time.sleep(0.1)
        raise TimeoutError(f"no {name} event within {timeout}s; have {self.events()[-5:]}")

    def wait_events(
        self,
        name: str,
        count: int,
        predicate: Callable[[dict], bool] = lambda e: True,
        timeout: float = 15,
    ) -> list[dict[str, Any]]:
        """At least ``count`` events ``name`` matching ``predicate`` (all of them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [record for record in self.events(name) if predicate(record)]
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise TimeoutError(f"fewer than {count} {name} events within {timeout}s")

    def queued_entries(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.spool_queue.glob("*.json"))]

    @property
    def implicit_tls_port(self) -> int:
        """The port of ``smtp.submission_tls_listen`` (set it in ``smtp_extra``)."""
        return int(str(self.smtp_extra["submission_tls_listen"]).rsplit(":", 1)[1])

    def serve_log(self) -> str:
        """What ``mailgate serve`` printed (stdout and stderr)."""
        path = self.workdir / "serve.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def all_logs(self) -> str:
        """serve.log and every file under the log directory, as one text."""
        texts = [self.serve_log()]
        texts += [
            p.read_text(encoding="utf-8", errors="replace")
            for p in sorted(self.log_dir.rglob("*"))
            if p.is_file()
        ]
        return "\n".join(texts)


class RawClient:
    """A line-level SMTP client for sequences smtplib refuses to send; every reply read
    belongs to the command just sent."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {lines!r}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line.decode())
            if line[3:4] != b"-":
                return "\n".join(lines)

    def command(self, line: str | bytes) -> str:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def envelope(self, sender: str = "a@other.org", rcpt: str = "bob@example.gov.vn") -> None:
        assert self.command("EHLO client.test").startswith("250")
        assert self.command(f"MAIL FROM:<{sender}>").startswith("250")
        assert self.command(f"RCPT TO:<{rcpt}>").startswith("250")
        assert self.command("DATA").startswith("354")

    def close(self) -> None:
        self.sock.close()


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes


class SinkHandler:
    """Accepts everything unless told otherwise per recipient; can drop after DATA."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.rcpt_replies: dict[str, str] = {}
        self.data_reply: str | None = None
        self.drop_after_data = False
        self.data_delay = 0.0  # seconds before answering DATA: a slow next hop
        self.data_started = threading.Event()  # set when a message's DATA is complete
        self.lock = threading.Lock()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        reply = self.rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.data_started.set()
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.drop_after_data:
            server.transport.close()
            return "451 dropped"
        if self.data_reply:
            return self.data_reply
        with self.lock:
            self.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        return "250 2.0.0 Ok: stored"


class Sink:
    """An aiosmtpd sink on its own thread: the outbound next hop in tests."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.handler = SinkHandler()
        self.controller: Controller | None = None

    def start(self) -> Sink:
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, server_hostname="sink.test"
        )
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    def wait_messages(self, count: int, timeout: float = 15) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.messages) >= count:
                return self.messages
            time.sleep(0.05)
        raise TimeoutError(f"sink got {len(self.messages)} messages, wanted {count}")


# Postfix's own services, each without chroot (a private instance has no chroot jail).
_POSTFIX_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PrivatePostfix:
    """A Postfix instance of its own (config, queue, data and log under ``root``) whose
    smtpd listens on a free loopback port and relays everything to ``relayhost``.

    Run as root (Postfix's master must be). ``root`` must be traversable by the
    ``postfix`` user, so it is not under pytest's 0700 base directory.
    """

    def __init__(self, root: Path, relayhost: str) -> None:
        self.root = root
        self.port = free_port()
        self.config_dir = root / "etc"
        self.maillog = root / "log" / "maillog"
        self.relayhost = relayhost

    def postconf(self) -> dict[str, str]:
        root = self.root
        return {
            "compatibility_level": "3.6",
            "queue_directory": str(root / "spool"),
            "data_directory": str(root / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "relay.test",
            "mydomain": "relay.test",
            "myorigin": "relay.test",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "relayhost": self.relayhost,
            "smtp_tls_security_level": "none",
            "smtp_dns_support_level": "disabled",
            "maillog_file_prefixes": str(root / "log"),
            "maillog_file": str(self.maillog),
            "biff": "no",
        }

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postfix", "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def start(self) -> PrivatePostfix:
        for name in ("etc", "spool", "data", "log"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.maillog.touch()
        main_cf = "".join(f"{key} = {value}\n" for key, value in self.postconf().items())
        (self.config_dir / "main.cf").write_text(main_cf)
        smtpd = f"127.0.0.1:{self.port} inet n - n - - smtpd\n"
        (self.config_dir / "master.cf").write_text(smtpd + _POSTFIX_SERVICES)
        self.postfix("set-permissions", check=False)
        result = self.postfix("start", check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"postfix start failed ({result.returncode}): {result.stdout}{result.stderr}"
                f"\nmaillog:\n{self.log()}"
            )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        self.postfix("stop", check=False)

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return ""


@dataclass(frozen=True)
class TLSFiles:
    """A test CA and a server certificate signed by it (PEM files)."""

    ca: Path
    cert: Path
    key: Path

    def smtp_extra(self) -> dict[str, Any]:
        """``[smtp]`` keys for both TLS listeners (STARTTLS and implicit TLS)."""
        return {
            "tls_cert": str(self.cert),
            "tls_key": str(self.key),
            "submission_tls_listen": f"127.0.0.1:{free_port()}",
        }


def make_tls_files(directory: Path, hostname: str = "mx.example.gov.vn") -> TLSFiles:
    """A trustme CA and a certificate for ``hostname`` and 127.0.0.1, written to ``directory``."""
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert(hostname, "127.0.0.1")
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.ca))
    issued.private_key_pem.write_to_path(str(files.key))
    files.key.chmod(0o600)
    with files.cert.open("wb") as chain:
        for blob in issued.cert_chain_pems:
            chain.write(blob.bytes())
    return files
