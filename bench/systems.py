"""The systems under test and the sink they relay to: how each one is started and stopped.

Every system is started fresh for each pass, next to a fresh Postfix ``smtp-sink``, in its
own work directory, and stopped whatever happens (``running``). Each ``Server`` exposes the
pids whose process tree ``memory`` sums, so that RSS is measured the same way for a
one-process Python server, Postfix's master and its children, Haraka's Node process and a
gateway that parses MIME in a process pool.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.common import (
    BENCH_DIR,
    HOST,
    RCPT,
    ROOT,
    BenchError,
    Skipped,
    free_port,
    log,
    proc_tree,
    stop_process,
    tail,
    tool,
    wait_smtp_ready,
)
from bench.haraka import prepare_haraka


class Sink:
    """Postfix ``smtp-sink`` on a free loopback port, counting messages (``-c``)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.out_path = workdir / f"smtp-sink-{self.port}.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start smtp-sink and wait for its greeting."""
        cmd = [tool("smtp-sink"), "-c"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # required when started as root
        cmd += [f"{HOST}:{self.port}", "1024"]
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_smtp_ready(self.port, 10, lambda: self.proc is not None and self.proc.poll() is None)

    def count(self) -> int:
        """Messages received so far (the sink's last ``mesg=`` counter)."""
        try:
            with open(self.out_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 256))
                data = fh.read()
        except OSError:
            return 0
        found = re.findall(rb"mesg=(\d+)", data)
        return int(found[-1]) if found else 0

    def wait_count(self, target: int, timeout: float) -> float | None:
        """Wait until ``target`` messages arrived; return the monotonic time or None."""
        deadline = time.monotonic() + timeout
        while True:
            if self.count() >= target:
                return time.monotonic()
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def pids(self) -> list[int]:
        """Process ids of the sink."""
        return [self.proc.pid] if self.proc else []

    def stop(self) -> None:
        """Stop the sink."""
        if self.proc is not None:
            stop_process(self.proc, timeout=5)


class Server:
    """A system under test listening on ``port``."""

    name = "server"
    port = 0

    def start(self) -> None:
        """Start the server and wait until it answers with 220."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        """Top-level process ids (descendants are added by the callers)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server; must be safe to call more than once and after a failed start."""
        raise NotImplementedError

    def diagnostics(self) -> str:
        """Log excerpt explaining a failure."""
        return ""


class DirectSink(Server):
    """The sink itself as the system under test (upper bound of the load generator)."""

    name = "sink"

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.port = sink.port

    def start(self) -> None:
        """Nothing to start: the sink already runs."""

    def pids(self) -> list[int]:
        """The sink's pid."""
        return self.sink.pids()

    def stop(self) -> None:
        """The sink is stopped by its owner."""


class ProcessServer(Server):
    """A server run as one subprocess of ours, stopped with SIGTERM."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        port: int,
        workdir: Path,
        ready_timeout: float = 30,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self.ready = ready  # a further condition after the greeting, e.g. helpers started
        self.cmd = cmd
        self.port = port
        self.log_path = workdir / f"{name}.out"
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the subprocess and wait for its greeting on ``port``."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
        wait_smtp_ready(
            self.port,
            self.ready_timeout,
            lambda: self.proc is not None and self.proc.poll() is None,
            what=self.name,
        )
        deadline = time.monotonic() + self.ready_timeout
        while self.ready is not None and not self.ready():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise BenchError(f"{self.name} did not get ready in {self.ready_timeout:g} s")
            time.sleep(0.1)

    def pids(self) -> list[int]:
        """The subprocess pid (its helpers are its children: ``proc_tree`` finds them)."""
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        if self.proc is not None:
            stop_process(self.proc)

    def diagnostics(self) -> str:
        """Exit status and the tail of the server's output."""
        status = "running" if self.proc and self.proc.poll() is None else "exited"
        if self.proc is not None and self.proc.returncode is not None:
            status = f"exit status {self.proc.returncode}"
        return f"{self.name} {status}; output tail:\n{tail(self.log_path)}"


POSTFIX_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
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
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

POSTFIX_MAIN_CF = """\
# Private benchmark instance: relays bench.example to smtp-sink, default durable queue.
compatibility_level = 3.6
config_directory = {base}/etc
queue_directory = {base}/queue
data_directory = {base}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
# maillog_file must lie under maillog_file_prefixes, or start fails silently (exit 1).
maillog_file_prefixes = {base}
maillog_file = {base}/log/postfix.log
myhostname = postfix-bench.local
mydomain = bench.local
myorigin = $myhostname
mydestination =
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = bench.example
relayhost = [{host}]:{sink_port}
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtpd_tls_security_level = none
smtp_tls_security_level = none
"""


class PostfixServer(Server):
    """A private Postfix instance (own config, queue and data dirs) relaying to the sink."""

    name = "postfix"

    def __init__(self, workdir: Path, sink_port: int, settings: list[str] | None = None) -> None:
        self.base = workdir
        self.settings = settings or []
        self.conf = self.base / "etc"
        self.port = free_port()
        self.sink_port = sink_port
        self.started = False

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool("postfix"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        """Write main.cf/master.cf, run ``postfix -c DIR start`` and wait for smtpd."""
        for sub in ("etc", "queue", "data", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        # Postfix daemons run as the postfix user: every directory above the queue and the
        # data directory must be searchable by it (mkdtemp creates mode 0700).
        for path in (self.base, *self.base.parents):
            if path == Path(tempfile.gettempdir()):
                break
            path.chmod(path.stat().st_mode | 0o755)
        fmt = {"base": self.base, "host": HOST, "sink_port": self.sink_port}
        main_cf = POSTFIX_MAIN_CF.format(**fmt) + "".join(f"{kv}\n" for kv in self.settings)
        (self.conf / "main.cf").write_text(main_cf, encoding="ascii")
        (self.conf / "master.cf").write_text(
            POSTFIX_MASTER_CF.format(listen=f"{HOST}:{self.port}"), encoding="ascii"
        )
        if os.geteuid() == 0:
            data = self.base / "data"
            shutil.chown(data, user="postfix", group="postfix")
        check = self._postfix("check")
        if check.returncode != 0:
            raise BenchError(f"postfix check failed: {check.stdout}{check.stderr}")
        self.started = True  # from here on, always try to stop it
        res = self._postfix("start")
        if res.returncode != 0:
            raise BenchError(f"postfix start failed ({res.returncode}): {res.stdout}{res.stderr}")
        wait_smtp_ready(self.port, 30, what="postfix smtpd")

    def master_pid(self) -> int | None:
        """Pid of the instance's master process, from its pid file."""
        try:
            text = (self.base / "queue" / "pid" / "master.pid").read_text(encoding="ascii")
            pid = int(text.strip())
        except (OSError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def pids(self) -> list[int]:
        """The master pid (smtpd, cleanup, qmgr, smtp are its children)."""
        pid = self.master_pid()
        return [pid] if pid else []

    def queue_empty(self) -> bool:
        """True if ``postqueue -p`` reports an empty queue."""
        res = subprocess.run(
            [tool("postqueue"), "-c", str(self.conf), "-p"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return "Mail queue is empty" in res.stdout

    def wait_queue_empty(self, timeout: float) -> bool:
        """Poll ``postqueue -p`` until the queue is empty or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not self.queue_empty():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def stop(self) -> None:
        """``postfix -c DIR stop``; kill the master if it does not go away."""
        if not self.started:
            return
        self.started = False
        pid = self.master_pid()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._postfix("stop", timeout=30)
        deadline = time.monotonic() + 20
        while pid and psutil.pid_exists(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid and psutil.pid_exists(pid):
            log("postfix master still running after stop; running postfix abort")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._postfix("abort", timeout=30)
            time.sleep(1)
            for proc in proc_tree([pid]):
                with contextlib.suppress(psutil.Error):
                    proc.kill()

    def diagnostics(self) -> str:
        """Tail of the instance's maillog."""
        return f"postfix log tail:\n{tail(self.base / 'log' / 'postfix.log')}"


def gateway_command(override: str | None = None) -> list[str]:
    """Command that starts the gateway (the venv's ``mailgate`` console script)."""
    if override:
        return [override]
    candidate = Path(sys.executable).parent / "mailgate"
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which("mailgate")
    if found:
        return [found]
    return [sys.executable, "-m", "gateway.cli"]


def helpers_started(log_dir: Path) -> int:
    """How many SMTP helpers (``smtp.processes``) said ``gateway_start`` in the event log:
    until they have, every connection goes to the primary."""
    count = 0
    for day in log_dir.glob("events-*.jsonl"):
        with contextlib.suppress(OSError):
            for line in day.read_text(encoding="utf-8", errors="replace").splitlines():
                count += '"event":"gateway_start"' in line and "SMTP helper" in line
    return count


def connections_per_process(port: int, pids: list[int]) -> list[int]:
    """Established connections on local ``port`` held by each of ``pids`` and their
    children, largest first: how a run's connections were spread over a gateway's SMTP
    processes (they share one listening socket and balance by load)."""
    counts = []
    for proc in proc_tree(pids):
        with contextlib.suppress(psutil.Error):
            held = sum(
                1
                for c in proc.net_connections(kind="tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
            )
            if held:
                counts.append(held)
    return sorted(counts, reverse=True)


@contextlib.contextmanager
def watching_split(port: int, pids: list[int], every: float = 0.5) -> Iterator[list[int]]:
    """While the block runs, the fullest ``connections_per_process`` seen (filled in
    when it ends)."""
    best: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            found = connections_per_process(port, pids)
            if sum(found) > sum(best):
                best[:] = found

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield best
    finally:
        stop.set()
        thread.join()


def make_gateway(
    workdir: Path, sink_port: int, binary: str | None = None, processes: int = 1
) -> ProcessServer:
    """Write a gateway config relaying everything to the sink and return its server;
    ``processes`` > 1 sets ``smtp.processes`` (SMTP helpers on the same ports)."""
    base = workdir
    for sub in ("var", "log"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    inbound, submission = free_port(), free_port()
    config = f"""\
[gateway]
hostname = "bench.local"
domains = ["bench.example"]
data_dir = "{base / "var"}"

[smtp]
processes = {processes}
inbound_listen = "{HOST}:{inbound}"
submission_listen = "{HOST}:{submission}"
require_tls_for_auth = false

[delivery]
local = "smtp://{HOST}:{sink_port}"
outbound = "smtp://{HOST}:{sink_port}"

[log]
dir = "{base / "log"}"
"""
    cfg_path = base / "mailgate.toml"
    cfg_path.write_text(config, encoding="utf-8")
    # The gateway only accepts local recipients its directory knows (550 5.1.1 otherwise).
    subprocess.run(
        [*gateway_command(binary), "-c", str(cfg_path), "mailbox", "add", RCPT,
         "--name", "Bench Recipient"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    cmd = [*gateway_command(binary), "-c", str(cfg_path), "serve"]
    log_dir = base / "log"
    ready = (lambda: helpers_started(log_dir) >= processes - 1) if processes > 1 else None
    return ProcessServer("gateway", cmd, inbound, workdir, ready_timeout=60, ready=ready)


def gateway_config(server: ProcessServer) -> Path:
    """The config file a ``make_gateway`` server runs with (for passes that extend it)."""
    return Path(server.cmd[server.cmd.index("-c") + 1])


def make_bare(workdir: Path, sink_port: int) -> ProcessServer:
    """The bare aiosmtpd relay as a subprocess."""
    port = free_port()
    cmd = [
        sys.executable,
        str(BENCH_DIR / "bare_relay.py"),
        "--listen",
        f"{HOST}:{port}",
        "--upstream",
        f"{HOST}:{sink_port}",
    ]
    return ProcessServer("bare", cmd, port, workdir)


@dataclass(frozen=True)
class ServerOptions:
    """Knobs for the systems under test."""

    gateway_bin: str | None = None
    postfix_settings: tuple[str, ...] = ()
    haraka_nodes: int = 1
    gateway_processes: int = 1


def make_server(system: str, workdir: Path, sink: Sink, opts: ServerOptions) -> Server:
    """Build the system under test ``system`` in ``workdir``, relaying to ``sink``."""
    if system == "sink":
        return DirectSink(sink)
    if system == "bare":
        return make_bare(workdir, sink.port)
    if system == "postfix":
        return PostfixServer(workdir, sink.port, list(opts.postfix_settings))
    if system == "haraka":
        cmd, port = prepare_haraka(workdir, sink.port, opts.haraka_nodes)
        return ProcessServer("haraka", cmd, port, workdir, ready_timeout=60)
    if system == "gateway":
        return make_gateway(workdir, sink.port, opts.gateway_bin, opts.gateway_processes)
    raise ValueError(system)


@contextlib.contextmanager
def running(system: str, workdir: Path, opts: ServerOptions) -> Iterator[tuple[Server, Sink]]:
    """Start a fresh sink and the system under test; stop both whatever happens."""
    workdir.mkdir(parents=True, exist_ok=True)
    sink = Sink(workdir)
    server: Server | None = None
    try:
        sink.start()
        server = make_server(system, workdir, sink, opts)
        try:
            server.start()
        except Exception as exc:
            # Haraka is an optional guest: if it will not start here, say why and go on.
            kind = Skipped if system == "haraka" else BenchError
            raise kind(f"{exc}\n{server.diagnostics()}") from exc
        yield server, sink
    finally:
        if server is not None:
            try:
                server.stop()
            except Exception as exc:  # keep cleaning up
                log(f"stopping {system} failed: {exc!r}")
        sink.stop()
