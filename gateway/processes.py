"""``smtp.processes``: more than one process serving the SMTP listeners.

One event loop uses one core; DKIM signing and MIME parsing are CPU work. With
``processes = N`` the process ``mailgate serve`` starts (the *primary*) does everything
it does with 1: the data_dir lock, spool recovery, the queue runner, the IMAP proxy,
the password page, the metrics endpoint (every process counts into files it sums:
:func:`share_metrics`). It binds each SMTP port once and starts N-1 *SMTP helpers*: the
same ``serve`` command with :data:`HELPER_ENV` set, inheriting the listening sockets and
the connection board (gateway/smtp/balance.py: every process accepts from the same
socket, the least loaded first). A helper runs the full relay, filters and signing,
writing the same event log (the writer chains across processes) and the same spool; it
never recovers the spool (that would delete the other processes' messages in progress)
and never runs the queue (the primary's runner picks up what a helper deferred).

Lifecycle: a helper gets SIGTERM when the primary dies (``PR_SET_PDEATHSIG``); the
primary forwards SIGHUP (each process reloads its own config), stops the helpers on
SIGTERM/SIGINT and replaces one that exits by itself. Helpers inherit the data_dir
lock's descriptor, so the lock lasts until the last of them exits: a new primary cannot
recover the spool under a helper of the old one that is still finishing a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.events.writer import EventLog
from gateway.smtp.balance import ABSENT, Board

log = logging.getLogger("gateway")

# Internal, not a CLI option, in a helper's environment:
# "PRIMARY_PID,READY_FD,PROCESSES,BOARD_FD,SLOT,KEY=FD;KEY=FD" (the last: the SMTP
# listening sockets by listener key, shared with the primary: gateway/smtp/balance.py).
HELPER_ENV = "MAILGATE_SMTP_HELPER"
RESTART_DELAY_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 60.0
READY_EOF_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1
# Under data_dir: prometheus-client's multiprocess files (every process's metric values).
METRICS_DIR_NAME = "metrics"
# prometheus-client reads it once, when first imported.
_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True, slots=True)
class HelperMark:
    """What a helper is told by its primary: the primary's PID, the descriptor on which
    it says "ready" once SIGHUP and SIGTERM are handled (:func:`report_ready`), the
    number of processes running (the config file may say otherwise since the start),
    the connection board's descriptor and this helper's slot on it, and the listening
    sockets it shares with the primary, by listener key."""

    primary: int
    ready_fd: int
    processes: int
    board_fd: int
    slot: int
    sockets: dict[str, int]

    def encode(self) -> str:
        sockets = ";".join(f"{key}={fd}" for key, fd in self.sockets.items())
        numbers = (self.primary, self.ready_fd, self.processes, self.board_fd, self.slot)
        return ",".join(map(str, numbers)) + "," + sockets


def helper_mark() -> HelperMark | None:
    """This process's mark when it is an SMTP helper, else None (and forget it, so
    nothing this process starts inherits it)."""
    parts = os.environ.pop(HELPER_ENV, "").split(",")
    if len(parts) != 6 or not all(part.isdigit() for part in parts[:5]):
        return None
    sockets = dict(item.split("=", 1) for item in parts[5].split(";") if "=" in item)
    if not all(fd.isdigit() for fd in sockets.values()):
        return None
    primary, ready_fd, processes, board_fd, slot = map(int, parts[:5])
    for fd in (ready_fd, board_fd, *map(int, sockets.values())):
        with contextlib.suppress(OSError):  # no child of ours may hold them open
            os.set_inheritable(fd, False)
    found = {key: int(fd) for key, fd in sockets.items()}
    return HelperMark(primary, ready_fd, processes, board_fd, slot, found)


def report_ready(mark: HelperMark) -> None:
    """Tell the primary this helper's signal handlers are in place: until then a SIGHUP
    would kill it (the default action), so the primary holds it back."""
    with contextlib.suppress(OSError):
        os.write(mark.ready_fd, b"r")
    with contextlib.suppress(OSError):
        os.close(mark.ready_fd)


def share_metrics(data_dir: Path, primary: bool) -> Path | None:
    """Where every process keeps its metric values for the primary's endpoint to sum;
    call before ``gateway.metrics`` is imported. The primary starts it empty (it holds
    the data_dir lock and its helpers start after this). None in a helper whose primary
    keeps no metrics (``[metrics]`` added to the file since it started)."""
    shared = data_dir / METRICS_DIR_NAME
    if primary:
        shutil.rmtree(shared, ignore_errors=True)
        shared.mkdir(mode=0o700)
    elif not shared.is_dir():
        return None
    os.environ[_METRICS_ENV] = str(shared)
    return shared


# -- limits kept in memory ------------------------------------------------------------------


def share(limit: int, processes: int) -> int:
    """One process's part of a limit counted in memory: ceil(limit / processes).

    Open connections, login failures and the rate_limit counters live in each process's
    memory, and the kernel spreads clients over the processes: if each enforced the whole
    limit, together they would allow ``processes`` times as much. Each enforces its share
    instead; rounding up keeps every limit at least 1 (the total is at most
    ``limit + processes - 1``). A client whose connections all land on one process is
    held to the share, the honest side to err on.
    """
    return -(-limit // processes)


def per_process(config: Config, processes: int) -> Config:
    """``config`` with its in-memory limits replaced by their :func:`share`.

    Connections (smtp.max_connections, _per_listener, _per_client), login failures
    ([auth] max_failures_per_address, _per_client: the primary's throttle also guards
    IMAP and the password page) and the rate_limit filter's hourly limits.
    """
    if processes == 1:
        return config
    smtp = config.smtp
    auth = config.auth
    shared = replace(
        config,
        smtp=replace(
            smtp,
            max_connections=share(smtp.max_connections, processes),
            max_connections_per_listener=share(smtp.max_connections_per_listener, processes),
            max_connections_per_client=share(smtp.max_connections_per_client, processes),
        ),
        auth=replace(
            auth,
            max_failures_per_address=share(auth.max_failures_per_address, processes),
            max_failures_per_client=share(auth.max_failures_per_client, processes),
        ),
    )
    if config.filters is None:
        return shared
    enabled = tuple(
        replace(item, config=_rate_limit_share(item.config, processes))
        if item.spec.name == "rate_limit"
        else item
        for item in config.filters.enabled
    )
    return replace(shared, filters=replace(config.filters, enabled=enabled))


def _rate_limit_share(settings: Any, processes: int) -> Any:
    """The rate_limit thresholds divided; each lock stays above its limit, as
    check-config requires of the whole numbers (else the lock would fire first)."""
    divided = {f.name: share(getattr(settings, f.name), processes) for f in fields(settings)}
    for kind in ("messages", "recipients"):
        limit = divided[f"max_{kind}_per_hour"]
        lock_key = f"lock_{kind}_per_hour"
        divided[lock_key] = max(divided[lock_key], limit + 1)
    return replace(settings, **divided)


# -- the helpers ----------------------------------------------------------------------------


def helper_command(config_path: Path) -> list[str]:
    """This interpreter running ``mailgate -c CONFIG serve``, whatever started us."""
    return [sys.executable, "-m", "gateway.entry", "-c", str(config_path), "serve"]


def _libc() -> ctypes.CDLL:
    """libc's prctl, loaded in the primary: the child between fork and exec
    of a threaded process must not run the dynamic loader (its lock may be held)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]  # fmt: skip
    return libc


def _before_exec(libc: ctypes.CDLL, parent: int) -> None:
    """In the child before exec: SIGTERM when the primary dies (Linux), and at once if
    it died already, so a helper never serves on its own."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


class SmtpHelpers:
    """Keeps ``count`` SMTP helper processes running until :meth:`terminate`."""

    def __init__(
        self,
        config_path: Path,
        count: int,
        events: EventLog,
        board: Board,
        sockets: dict[str, int],
        inherit_fds: tuple[int, ...] = (),
        exited: Callable[[int], None] | None = None,
    ) -> None:
        self.config_path = config_path
        self.count = count
        self.events = events
        self.inherit_fds = inherit_fds
        self.exited = exited  # told each helper's PID once it is gone (metrics)
        self.board = board  # slot k+1 is the helper of slot k (the primary's is 0)
        self.sockets = sockets  # the shared listening sockets, by listener key
        self._running: dict[int, asyncio.subprocess.Process] = {}  # slot -> process
        self._ready: set[int] = set()  # PIDs whose signal handlers are in place
        self._hangup_pending: set[int] = set()  # PIDs to get SIGHUP once ready
        self._stopping = asyncio.Event()
        self._libc = _libc()

    async def run(self) -> None:
        """Start every helper and keep each slot filled until :meth:`terminate`."""
        async with asyncio.TaskGroup() as group:
            for slot in range(self.count):
                group.create_task(self._keep(slot))

    async def _keep(self, slot: int) -> None:
        """One slot: start a helper, wait for it, replace it unless we are stopping.

        The first replacement comes after a second; one that keeps failing (a config
        file broken since the start, say) is retried ever more slowly, up to once a
        minute, so it does not fill the log with an event a second."""
        loop = asyncio.get_running_loop()
        delay = RESTART_DELAY_SECONDS
        while not self._stopping.is_set():
            started = loop.time()
            try:
                process, ready = await self._start(slot)
            except Exception as exc:  # fork/exec failed: say so, try again
                why = f"cannot start an SMTP helper: {type(exc).__name__}: {exc}"
            else:
                self._running[slot] = process
                if self._stopping.is_set():  # terminate() came while it was starting
                    self._signal(process.pid, signal.SIGTERM)
                waiting = asyncio.create_task(self._wait_ready(process.pid, ready))
                code = await process.wait()
                # Its end of the pipe closed with it: this ends at once.
                await asyncio.wait({waiting}, timeout=READY_EOF_SECONDS)
                del self._running[slot]
                self._ready.discard(process.pid)
                self._hangup_pending.discard(process.pid)
                if self.exited is not None:
                    self.exited(process.pid)
                self.board.set(slot + 1, ABSENT)  # no connection waits for it now
                if self._stopping.is_set():
                    return
                why = f"SMTP helper PID {process.pid} exited ({_status(code)}); starting another"
            if loop.time() - started > MAX_RESTART_DELAY_SECONDS:
                delay = RESTART_DELAY_SECONDS  # it ran a good while: not a crash loop
            log.error("%s in %g s", why, delay)
            self.events.emit("internal_error", reason=f"{why} in {delay:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, MAX_RESTART_DELAY_SECONDS)

    async def _start(self, slot: int) -> tuple[asyncio.subprocess.Process, int]:
        """A new helper, and the read end of the pipe on which it reports ready."""
        primary, libc = os.getpid(), self._libc
        ready_read, ready_write = os.pipe()
        mark = HelperMark(
            primary, ready_write, self.count + 1, self.board.fd, slot + 1, self.sockets
        )
        shared = (self.board.fd, *self.sockets.values())
        try:
            process = await asyncio.create_subprocess_exec(
                *helper_command(self.config_path),
                env={**os.environ, HELPER_ENV: mark.encode()},
                preexec_fn=lambda: _before_exec(libc, primary),
                pass_fds=(*self.inherit_fds, ready_write, *shared),
            )
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)
        log.info("SMTP helper started, PID %d", process.pid)
        return process, ready_read

    async def _wait_ready(self, pid: int, ready_read: int) -> None:
        """Mark ``pid`` ready when it says so (EOF: it exited first), then give it the
        SIGHUP that came while it was starting, if one did."""
        try:
            said = await asyncio.to_thread(os.read, ready_read, 1)
        finally:
            os.close(ready_read)
        if not said:
            return
        self._ready.add(pid)
        if pid in self._hangup_pending:
            self._hangup_pending.discard(pid)
            self._signal(pid, signal.SIGHUP)

    def send(self, signum: int) -> None:
        """Pass a signal on. SIGHUP (each helper reloads its own config) waits for a
        starting helper's handlers; SIGTERM does not (its default action stops it too)."""
        for process in list(self._running.values()):
            if signum == signal.SIGHUP and process.pid not in self._ready:
                self._hangup_pending.add(process.pid)
            else:
                self._signal(process.pid, signum)

    def _signal(self, pid: int, signum: int) -> None:
        # One that just exited is replaced by its slot, with the current config.
        for process in self._running.values():
            if process.pid == pid:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    def terminate(self) -> None:
        """Stop replacing helpers and ask each to shut down as the primary does."""
        self._stopping.set()
        self.send(signal.SIGTERM)

    async def wait(self, deadline: float) -> None:
        """Wait for the helpers to exit until ``deadline`` (loop time), then kill the rest."""
        loop = asyncio.get_running_loop()
        waits = {asyncio.ensure_future(p.wait()) for p in self._running.values()}
        if waits:
            await asyncio.wait(waits, timeout=max(deadline - loop.time(), 0.1))
        self.send(signal.SIGKILL)
        if waits:
            await asyncio.wait(waits, timeout=5)


def _status(code: int) -> str:
    """A wait status as words: "exit code 1" or "killed by SIGKILL"."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
