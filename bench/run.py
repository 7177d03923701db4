"""Throughput, latency and memory benchmark: smtp-sink, bare relay, Postfix and mailgate.

Every system under test relays to a fresh Postfix ``smtp-sink`` (discarding) on loopback and
is driven with the same ``smtp-source -d`` load (``-d``: keep the connection open and send
the next message over it). Latency comes from a separate asyncio probe; peak RSS is VmHWM
summed over the server's process tree. ``--big`` checks the memory cost of one ~27 MiB
message. Run: ``.venv/bin/python bench/run.py [--messages N] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
DEFAULT_JSON = BENCH_DIR / "results" / "latest.json"
HOST = "127.0.0.1"
SENDER = "sender@bench.example"
RCPT = "rcpt@bench.example"
SBIN = Path("/usr/sbin")
MIB = 1024 * 1024

SYSTEM_LABELS = {
    "sink": "smtp-sink (direct, reference)",
    "bare": "bare relay (aiosmtpd+aiosmtplib)",
    "postfix": "postfix relay (durable queue)",
    "gateway": "mailgate gateway",
}


class BenchError(RuntimeError):
    """A benchmark step failed."""


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    """Print a progress line to stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tool(name: str) -> str:
    """Locate a Postfix tool (they live in /usr/sbin, often not on PATH)."""
    found = shutil.which(name) or shutil.which(name, path=str(SBIN))
    if not found:
        raise BenchError(f"{name} not found (install postfix)")
    return found


def free_port() -> int:
    """Return a currently free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, limit: int = 2000) -> str:
    """Return the last ``limit`` characters of a text file (or an empty string)."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


def wait_smtp_ready(
    port: int, timeout: float, alive: Callable[[], bool] | None = None, what: str = "server"
) -> None:
    """Wait until ``port`` accepts a connection and sends a 220 greeting."""
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise BenchError(f"{what} exited before listening on port {port}")
        try:
            with socket.create_connection((HOST, port), timeout=2) as sock:
                sock.settimeout(5)
                banner = sock.recv(512)
                if banner.startswith(b"220"):
                    with contextlib.suppress(OSError):
                        sock.sendall(b"QUIT\r\n")
                        sock.recv(512)
                    return
                last_error = f"banner {banner[:80]!r}"
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{what} not ready on port {port} after {timeout:.0f}s ({last_error})")


def proc_tree(pids: list[int]) -> list[psutil.Process]:
    """Return the processes ``pids`` and all their descendants that still exist."""
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs[pid] = proc
            for child in proc.children(recursive=True):
                procs[child.pid] = child
        except psutil.Error:
            continue
    return list(procs.values())


def read_status_kib(pid: int, key: str) -> int:
    """Read one ``kB`` field (VmHWM, VmRSS) from /proc/PID/status; 0 if unavailable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_kib(pids: list[int], key: str) -> tuple[int, int]:
    """Sum a /proc status field over a process tree; returns (KiB, process count)."""
    procs = proc_tree(pids)
    return sum(read_status_kib(p.pid, key) for p in procs), len(procs)


def tree_pss_kib(pids: list[int]) -> int:
    """Current proportional set size (shared pages split fairly) summed over a tree."""
    total = 0
    for proc in proc_tree(pids):
        with (
            contextlib.suppress(OSError, ValueError, IndexError),
            open(f"/proc/{proc.pid}/smaps_rollup", encoding="ascii") as fh,
        ):
            for line in fh:
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


def reset_hwm(pids: list[int]) -> bool:
    """Reset VmHWM to the current RSS for a process tree (``echo 5 > clear_refs``)."""
    ok = True
    for proc in proc_tree(pids):
        try:
            with open(f"/proc/{proc.pid}/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")
        except OSError:
            ok = False
    return ok


def tree_cpu_seconds(pids: list[int]) -> float:
    """User+system CPU seconds of a process tree, including reaped children."""
    total = 0.0
    for proc in proc_tree(pids):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(pct / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM a process we started, SIGKILL it if it lingers, then any leftover children."""
    children: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        children = psutil.Process(proc.pid).children(recursive=True)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"pid {proc.pid} ignored SIGTERM for {timeout:.0f}s; killing it")
            # Started with start_new_session=True: its process group id is its pid.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    for child in children:  # psutil checks the start time, so a reused pid is not hit
        with contextlib.suppress(psutil.Error):
            child.kill()


# --------------------------------------------------------------------------- servers


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
    ) -> None:
        self.name = name
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

    def pids(self) -> list[int]:
        """The subprocess pid."""
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


def make_gateway(workdir: Path, sink_port: int, binary: str | None = None) -> ProcessServer:
    """Write a gateway config relaying everything to the sink and return its server."""
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
    return ProcessServer("gateway", cmd, inbound, workdir, ready_timeout=60)


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


def make_server(system: str, workdir: Path, sink: Sink, opts: ServerOptions) -> Server:
    """Build the system under test ``system`` in ``workdir``, relaying to ``sink``."""
    if system == "sink":
        return DirectSink(sink)
    if system == "bare":
        return make_bare(workdir, sink.port)
    if system == "postfix":
        return PostfixServer(workdir, sink.port, list(opts.postfix_settings))
    if system == "gateway":
        return make_gateway(workdir, sink.port, opts.gateway_bin)
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
            raise BenchError(f"{exc}\n{server.diagnostics()}") from exc
        yield server, sink
    finally:
        if server is not None:
            try:
                server.stop()
            except Exception as exc:  # keep cleaning up
                log(f"stopping {system} failed: {exc!r}")
        sink.stop()


# --------------------------------------------------------------------------- load


def smtp_source(port: int, sessions: int, size: int, messages: int, timeout: float) -> float:
    """Run ``smtp-source -d`` against ``port``; return its wall time in seconds."""
    cmd = [
        tool("smtp-source"),
        "-d",
        "-s",
        str(sessions),
        "-l",
        str(size),
        "-m",
        str(messages),
        "-f",
        SENDER,
        "-t",
        RCPT,
        f"{HOST}:{port}",
    ]
    start = time.monotonic()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"smtp-source did not finish within {timeout:.0f}s") from exc
    wall = time.monotonic() - start
    if res.returncode != 0:
        raise BenchError(f"smtp-source failed ({res.returncode}): {res.stderr.strip()[-1000:]}")
    return wall


def probe_message(size: int, index: int) -> bytes:
    """A dot-safe message of about ``size`` body bytes, terminated for DATA."""
    line = b"x" * 78 + b"\r\n"
    body = line * max(1, size // len(line))
    headers = (
        f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: latency probe {index}\r\n"
        f"Message-ID: <probe{index}.{time.time_ns()}@bench.example>\r\n\r\n"
    ).encode("ascii")
    return headers + body + b".\r\n"


async def _reply(reader: asyncio.StreamReader, expect: int) -> None:
    """Read one (possibly multi-line) SMTP reply and check its code."""
    while True:
        line = await reader.readline()
        if not line:
            raise BenchError("connection closed by server")
        if line[3:4] != b"-":
            break
    if not line[:3].isdigit() or int(line[:3]) != expect:
        raise BenchError(f"expected {expect}, got {line.strip()[:200]!r}")


async def _probe_client(port: int, count: int, size: int, out: list[float]) -> None:
    """One connection sending ``count`` messages in sequence, timing MAIL..end of DATA."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        await _reply(reader, 220)
        writer.write(b"EHLO latency-probe.local\r\n")
        await _reply(reader, 250)
        mail = f"MAIL FROM:<{SENDER}>\r\n".encode()
        rcpt = f"RCPT TO:<{RCPT}>\r\n".encode()
        for i in range(count):
            message = probe_message(size, i)
            start = time.perf_counter()
            writer.write(mail)
            await _reply(reader, 250)
            writer.write(rcpt)
            await _reply(reader, 250)
            writer.write(b"DATA\r\n")
            await _reply(reader, 354)
            writer.write(message)
            await _reply(reader, 250)
            out.append(time.perf_counter() - start)
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(BenchError, ConnectionError):
            await _reply(reader, 221)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _probe(port: int, clients: int, total: int, size: int, timeout: float) -> list[float]:
    samples: list[float] = []
    per_client = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    tasks = [_probe_client(port, n, size, samples) for n in per_client if n]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    return samples


def latency_probe(port: int, clients: int, total: int, size: int, timeout: float) -> list[float]:
    """Latency samples in ms from ``clients`` concurrent connections sending ``total`` msgs."""
    try:
        import uvloop
    except ImportError:
        samples = asyncio.run(_probe(port, clients, total, size, timeout))
    else:
        samples = uvloop.run(_probe(port, clients, total, size, timeout))
    return sorted(s * 1000 for s in samples)


# --------------------------------------------------------------------------- throughput


@dataclass
class RunResult:
    """Figures for one system under test."""

    system: str
    label: str
    ok: bool = False
    error: str | None = None
    messages: int = 0
    sessions: int = 0
    size: int = 0
    wall_s: float | None = None
    msgs_per_s: float | None = None
    drained_s: float | None = None
    drained_msgs_per_s: float | None = None
    latency_samples: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    peak_rss_mib: float | None = None
    rss_processes: int = 0
    pss_now_mib: float | None = None
    cpu_s: float | None = None
    cpu_ms_per_msg: float | None = None
    rounds_msgs_per_s: list[float | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def pick_median(runs: list[RunResult]) -> RunResult:
    """The round with the median msgs/s (lower median), annotated with every round's figure."""
    ok = sorted((r for r in runs if r.ok), key=lambda r: r.msgs_per_s or 0.0)
    chosen = ok[(len(ok) - 1) // 2] if ok else runs[-1]
    chosen.rounds_msgs_per_s = [r.msgs_per_s for r in runs]
    if len(runs) > 1:
        figures = ", ".join(fmt(r.msgs_per_s, ".0f") for r in runs)
        chosen.notes.append(f"median of {len(runs)} rounds (msgs/s: {figures})")
    if ok and len(ok) < len(runs):
        chosen.notes.append(f"{len(runs) - len(ok)} of {len(runs)} rounds failed")
    return chosen


def server_options(args: argparse.Namespace) -> ServerOptions:
    """ServerOptions from the command line."""
    return ServerOptions(args.gateway_bin, tuple(args.postfix_set))


def bench_system(system: str, args: argparse.Namespace, workdir: Path) -> RunResult:
    """Start ``system``, drive it with smtp-source and the latency probe, read its RSS."""
    result = RunResult(system, SYSTEM_LABELS[system], messages=args.messages)
    result.sessions, result.size = args.sessions, args.size
    timeout = args.timeout
    try:
        with running(system, workdir / system, server_options(args)) as (server, sink):
            log(f"{system}: listening on {server.port}, sink on {sink.port}")
            sent = 0
            if args.warmup:
                smtp_source(server.port, args.sessions, args.size, args.warmup, timeout)
                sent += args.warmup
                if sink.wait_count(sent, timeout) is None:
                    raise BenchError(f"warm-up: sink got {sink.count()} of {sent} messages")
            cpu0 = tree_cpu_seconds(server.pids())
            start = time.monotonic()
            result.wall_s = smtp_source(
                server.port, args.sessions, args.size, args.messages, timeout
            )
            result.cpu_s = tree_cpu_seconds(server.pids()) - cpu0
            result.cpu_ms_per_msg = result.cpu_s * 1000 / args.messages
            result.msgs_per_s = args.messages / result.wall_s
            sent += args.messages
            log(f"{system}: {result.msgs_per_s:.0f} msgs/s accepted ({result.wall_s:.2f}s)")
            done = sink.wait_count(sent, timeout)
            if done is None:
                result.notes.append(f"sink got {sink.count()} of {sent} messages in time")
            else:
                result.drained_s = done - start
                result.drained_msgs_per_s = args.messages / result.drained_s
            if isinstance(server, PostfixServer):
                if not server.wait_queue_empty(15):
                    result.notes.append("postfix queue not empty 15s after the sink got all")
                log(f"{system}: drained at {result.drained_msgs_per_s or 0:.0f} msgs/s")
            if args.latency_messages:
                samples = latency_probe(
                    server.port, args.latency_clients, args.latency_messages, args.size, timeout
                )
                result.latency_samples = len(samples)
                result.p50_ms = percentile(samples, 50)
                result.p99_ms = percentile(samples, 99)
                result.mean_ms = statistics.fmean(samples)
            if isinstance(server, PostfixServer):
                if args.postfix_set:
                    result.notes.append(f"non-default main.cf: {', '.join(args.postfix_set)}")
                else:
                    seen = " (p99 shows it)" if (result.p99_ms or 0) >= 500 else ""
                    result.notes.append(
                        "Postfix defaults: smtpd waits up to in_flow_delay (1s) per message "
                        f"while deliveries lag, capping accepted/s{seen}"
                    )
            hwm_kib, nproc = tree_kib(server.pids(), "VmHWM")
            result.peak_rss_mib = hwm_kib / 1024
            result.rss_processes = nproc
            result.pss_now_mib = tree_pss_kib(server.pids()) / 1024
            if nproc > 1:
                result.notes.append(
                    f"peak RSS = sum of VmHWM over {nproc} processes (shared pages counted in "
                    f"each); PSS after the run: {result.pss_now_mib:.1f} MiB"
                )
            result.ok = True
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"{system}: FAILED: {result.error}")
    return result


# --------------------------------------------------------------------------- memory


def build_big_message(attachment_bytes: int = 20 * MIB, parts: int = 4) -> bytes:
    """One message carrying ``attachment_bytes`` of random base64 attachments (CRLF)."""
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = RCPT
    msg["Subject"] = "bench: 20 MiB of attachments"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="bench.example")
    msg.set_content("Memory check: this message carries large attachments.\n")
    rnd = random.Random(20)
    for i in range(parts):
        msg.add_attachment(
            rnd.randbytes(attachment_bytes // parts),
            maintype="application",
            subtype="octet-stream",
            filename=f"blob{i}.bin",
        )
    return msg.as_bytes(policy=SMTP_POLICY)


def send_smtplib(port: int, message: bytes, timeout: float) -> None:
    """Send one message with smtplib (fresh connection)."""
    with smtplib.SMTP(HOST, port, local_hostname="bench-client.local", timeout=timeout) as smtp:
        refused = smtp.sendmail(SENDER, [RCPT], message)
        if refused:
            raise BenchError(f"recipients refused: {refused}")


def big_check(
    system: str, message: bytes, workdir: Path, timeout: float, opts: ServerOptions
) -> dict[str, object]:
    """Peak RSS growth of a freshly started ``system`` while relaying one big message."""
    out: dict[str, object] = {"system": system, "label": SYSTEM_LABELS[system], "ok": False}
    wire = len(message)
    out["wire_bytes"] = wire
    try:
        with running(system, workdir / f"big-{system}", opts) as (server, sink):
            send_smtplib(server.port, probe_message(1024, 0)[:-3], timeout)  # warm-up
            if sink.wait_count(1, 30) is None:
                raise BenchError("warm-up message did not reach the sink")
            time.sleep(0.5)
            pids = server.pids()
            rss_before, _ = tree_kib(pids, "VmRSS")
            if not reset_hwm(pids):
                out["note"] = "could not reset VmHWM; growth may include startup peaks"
            start = time.monotonic()
            send_smtplib(server.port, message, timeout)
            out["send_s"] = time.monotonic() - start
            if sink.wait_count(2, timeout) is None:
                raise BenchError("big message did not reach the sink")
            hwm, nproc = tree_kib(pids, "VmHWM")
            growth = (hwm - rss_before) * 1024
            out.update(
                ok=True,
                rss_before_mib=rss_before / 1024,
                peak_rss_mib=hwm / 1024,
                growth_mib=growth / MIB,
                growth_x_wire=growth / wire,
                processes=nproc,
            )
            log(
                f"big/{system}: RSS {rss_before / 1024:.1f} -> peak {hwm / 1024:.1f} MiB "
                f"= +{growth / wire:.2f}x wire size"
            )
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        log(f"big/{system}: FAILED: {out['error']}")
    return out


# --------------------------------------------------------------------------- report


def fmt(value: float | None, spec: str) -> str:
    """Format a number or show a dash."""
    return "-" if value is None else format(value, spec)


def ratio(a: RunResult | None, b: RunResult | None) -> float | None:
    """msgs/s of ``a`` divided by msgs/s of ``b`` when both ran."""
    if a and b and a.ok and b.ok and a.msgs_per_s and b.msgs_per_s:
        return a.msgs_per_s / b.msgs_per_s
    return None


def verdict(ok: bool | None) -> str:
    """PASS / FAIL / n/a."""
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def report(
    results: list[RunResult], big: list[dict[str, object]], args: argparse.Namespace
) -> dict[str, object]:
    """Print the result tables and return the JSON document."""
    by_name = {r.system: r for r in results}
    print()
    if results:
        print(
            f"Throughput: smtp-source -d -s {args.sessions} -l {args.size} -m {args.messages} "
            f"(after {args.warmup} warm-up messages; median of {args.rounds} round(s)); "
            "latency: asyncio probe, "
            f"{args.latency_clients} connections x {args.latency_messages} msgs total, "
            "sequential per connection, MAIL..end-of-DATA reply, run after the throughput pass"
        )
        header = (
            f"{'system':<34} {'msgs/s':>8} {'drained/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'peak RSS MiB':>12} {'CPU ms/msg':>10}"
        )
        print(header)
        print("-" * len(header))
        for r in results:
            if not r.ok:
                print(f"{r.label:<34} FAILED: {(r.error or '').splitlines()[0][:80]}")
                continue
            print(
                f"{r.label:<34} {fmt(r.msgs_per_s, '8.0f')} {fmt(r.drained_msgs_per_s, '9.0f')} "
                f"{fmt(r.p50_ms, '7.2f')} {fmt(r.p99_ms, '7.2f')} "
                f"{fmt(r.peak_rss_mib, '12.1f')} {fmt(r.cpu_ms_per_msg, '10.3f')}"
            )
            for note in r.notes:
                print(f"{'':<36}note: {note}")
    gw_bare = ratio(by_name.get("gateway"), by_name.get("bare"))
    gw_pf = ratio(by_name.get("gateway"), by_name.get("postfix"))
    gw_pf_drained = None
    gw, pf = by_name.get("gateway"), by_name.get("postfix")
    if gw and pf and gw.drained_msgs_per_s and pf.drained_msgs_per_s:
        gw_pf_drained = gw.drained_msgs_per_s / pf.drained_msgs_per_s
    targets = {
        "gateway_vs_bare_ge_0.60": None if gw_bare is None else gw_bare >= 0.60,
        "gateway_gt_postfix": None if gw_pf is None else gw_pf > 1.0,
    }
    if results:
        print()
        print(
            f"gateway / bare relay = {fmt(gw_bare, '.2f')}  "
            f"(target >= 0.60: {verdict(targets['gateway_vs_bare_ge_0.60'])})"
        )
        print(
            f"gateway / postfix    = {fmt(gw_pf, '.2f')}  "
            f"(target > 1.00: {verdict(targets['gateway_gt_postfix'])}; "
            f"drained to the sink: {fmt(gw_pf_drained, '.2f')})"
        )
    big_target: bool | None = None
    if big:
        print()
        wire = next((b.get("wire_bytes") for b in big), 0)
        print(f"Memory: one message with 20 MiB of base64 attachments, {wire} bytes on the wire")
        for b in big:
            if not b.get("ok"):
                print(f"  {b['label']:<34} FAILED: {str(b.get('error', '')).splitlines()[0][:80]}")
                continue
            print(
                f"  {b['label']:<34} RSS before {b['rss_before_mib']:7.1f} MiB, "
                f"peak {b['peak_rss_mib']:7.1f} MiB, growth {b['growth_mib']:6.1f} MiB "
                f"= {b['growth_x_wire']:.2f}x wire size ({b['send_s']:.1f}s)"
            )
        gw = next((b for b in big if b["system"] == "gateway" and b.get("ok")), None)
        if gw is not None:
            big_target = float(gw["growth_x_wire"]) <= 3.0  # type: ignore[arg-type]
        print(f"  gateway growth <= 3x wire size: {verdict(big_target)}")
    targets["gateway_big_message_le_3x"] = big_target
    # Machine-readable summary lines (used by tests/integration/test_bench_smoke.py).
    print()
    for r in results:
        print(f"RESULT {r.system} ok={int(r.ok)} msgs_per_s={r.msgs_per_s or 0:.1f}")
    return {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "load": {
            "tool": "smtp-source -d",
            "sessions": args.sessions,
            "size": args.size,
            "messages": args.messages,
            "warmup": args.warmup,
            "rounds": args.rounds,
        },
        "postfix_settings": args.postfix_set,
        "latency_method": (
            f"asyncio probe in the harness process: {args.latency_clients} connections, "
            f"{args.latency_messages} messages in total, sequential per connection, "
            "time from MAIL FROM to the reply after end-of-DATA"
        ),
        "throughput": {r.system: asdict(r) for r in results},
        "ratios": {
            "gateway_over_bare": gw_bare,
            "gateway_over_postfix": gw_pf,
            "gateway_over_postfix_drained": gw_pf_drained,
        },
        "targets": targets,
        "memory": big,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, help="messages per system (default 20000, quick 2000)")
    p.add_argument("--sessions", type=int, default=20, help="smtp-source parallel sessions")
    p.add_argument("--size", type=int, default=5120, help="message payload bytes")
    p.add_argument("--quick", action="store_true", help="fewer messages (2000) and probes (200)")
    p.add_argument("--warmup", type=int, help="warm-up messages before timing (default 200)")
    p.add_argument("--latency-messages", type=int, help="probe messages (default 1000/200)")
    p.add_argument("--latency-clients", type=int, default=20, help="probe connections")
    p.add_argument("--rounds", type=int, default=1, help="repeat, interleaved; report medians")
    p.add_argument("--timeout", type=float, help="limit per load phase, seconds")
    for system in ("sink", "bare", "postfix", "gateway"):
        p.add_argument(f"--skip-{system}", action="store_true", help=f"do not run {system}")
    big = p.add_mutually_exclusive_group()
    big.add_argument("--big", action="store_true", help="run only the big-message memory check")
    big.add_argument("--no-big", action="store_true", help="skip the big-message memory check")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    p.add_argument("--gateway-bin", help="gateway executable (default: the venv's mailgate)")
    p.add_argument(
        "--postfix-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra main.cf line for the Postfix relay, e.g. in_flow_delay=0 (repeatable)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    p.add_argument("--strict", action="store_true", help="exit 2 if a target is missed")
    args = p.parse_args(argv)
    if args.messages is None:
        args.messages = 2000 if args.quick else 20000
    if args.latency_messages is None:
        args.latency_messages = 200 if args.quick else 1000
    if args.warmup is None:
        args.warmup = min(200, max(0, args.messages // 10))
    if args.timeout is None:
        # Generous: assumes at least 25 msgs/s; every phase is bounded by it.
        args.timeout = max(120.0, args.messages / 25)
    if min(args.messages, args.sessions, args.size, args.latency_clients, args.rounds) < 1:
        p.error("--messages, --sessions, --size, --latency-clients, --rounds must be positive")
    for setting in args.postfix_set:
        if not re.fullmatch(r"[a-z0-9_]+\s*=[^\n]*", setting):
            p.error(f"--postfix-set expects KEY=VALUE, got {setting!r}")
    return args


def _terminate(signum: int, _frame: object) -> None:
    """Turn SIGTERM into SystemExit so that every finally block stops its servers."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 if a system failed (2 with --strict and a missed target)."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    load_start = os.getloadavg()
    cpus = os.cpu_count() or 1
    if load_start[0] > 0.5 * cpus:
        log(f"warning: load average {load_start[0]:.2f} on {cpus} CPUs; figures will be noisy")
    systems = [s for s in ("sink", "bare", "postfix", "gateway") if not getattr(args, f"skip_{s}")]
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-bench-"))
    log(f"work directory {tmp}")
    results: list[RunResult] = []
    big: list[dict[str, object]] = []
    failed: list[str] = []
    try:
        if not args.big:
            runs: dict[str, list[RunResult]] = {s: [] for s in systems}
            for round_no in range(1, args.rounds + 1):
                for system in systems:
                    log(f"throughput: {system} (round {round_no}/{args.rounds})")
                    run = bench_system(system, args, tmp / f"r{round_no}")
                    runs[system].append(run)
                    if not run.ok:
                        failed.append(system)
            results = [pick_median(runs[s]) for s in systems]
        if not args.no_big:
            log("memory check: building the big message")
            message = build_big_message()
            for system in ("bare", "gateway"):
                if system in systems:
                    timeout = max(args.timeout, 300)
                    opts = server_options(args)
                    big.append(big_check(system, message, tmp, timeout, opts))
    finally:
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    doc = report(results, big, args)
    doc["elapsed_s"] = time.monotonic() - started
    doc["load_average"] = {"start": load_start, "end": os.getloadavg()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.json} (total {doc['elapsed_s']:.0f}s)")
    failed += [str(b["system"]) for b in big if not b.get("ok")]
    if failed:
        print(f"failed: {', '.join(dict.fromkeys(failed))}")
        return 1
    targets = doc["targets"]
    if args.strict and isinstance(targets, dict) and False in targets.values():
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
