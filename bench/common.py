"""Constants and small helpers that every benchmark module needs.

Kept apart so that ``systems``, ``load``, ``memory`` and ``report`` do not import each
other for a port number or a log line: the dependency graph stays a tree rooted here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
CACHE_DIR = BENCH_DIR / ".cache"  # created on demand, ignored by its own .gitignore
DEFAULT_JSON = BENCH_DIR / "results" / "latest.json"
HOST = "127.0.0.1"
SENDER = "sender@bench.example"
RCPT = "rcpt@bench.example"
SBIN = Path("/usr/sbin")
MIB = 1024 * 1024

SYSTEMS = ("sink", "bare", "postfix", "haraka", "gateway")
SYSTEM_LABELS = {
    "sink": "smtp-sink (direct, reference)",
    "bare": "bare relay (aiosmtpd+aiosmtplib)",
    "postfix": "postfix relay (durable queue)",
    "haraka": "haraka relay (smtp_forward)",
    "gateway": "mailgate gateway",
}


class BenchError(RuntimeError):
    """A benchmark step failed."""


class Skipped(BenchError):
    """A system cannot run on this machine (e.g. Node or npm missing): reported, not failed."""


def cache_dir() -> Path:
    """``bench/.cache``, created with a ``.gitignore`` that ignores everything in it."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    ignore = CACHE_DIR / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# downloads and built inputs of bench/run.py\n*\n", encoding="ascii")
    return CACHE_DIR


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


def fmt(value: float | None, spec: str) -> str:
    """Format a number or show a dash."""
    return "-" if value is None else format(value, spec)
