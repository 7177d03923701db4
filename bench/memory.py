"""Memory: RSS of a system's whole process tree, the 20 MiB message and the two bombs.

Peak RSS is VmHWM summed over the server's process tree (Postfix's master and children, a
gateway's MIME-parsing process pool): each process's own high-water mark, so shared pages
count once per process and the sum is an upper bound. A process that exits during a send
takes its VmHWM with it, so ``PeakSampler`` also polls the tree's summed VmRSS while a big
message or a bomb is in flight and the larger of the two figures is reported.
"""

from __future__ import annotations

import contextlib
import smtplib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from bench.common import HOST, MIB, RCPT, SENDER, SYSTEM_LABELS, BenchError, log, proc_tree
from bench.messages import warmup_message
from bench.systems import ServerOptions, Sink, running


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


class PeakSampler:
    """Poll the summed VmRSS of a process tree in a thread; ``peak_kib`` is the largest seen."""

    def __init__(self, pids: list[int], interval: float = 0.02) -> None:
        self.pids = pids
        self.interval = interval
        self.peak_kib = 0
        self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            kib, nproc = tree_kib(self.pids, "VmRSS")
            self.peak_kib = max(self.peak_kib, kib)
            self.max_processes = max(self.max_processes, nproc)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def send_smtplib(port: int, message: bytes, timeout: float) -> None:
    """Send one message with smtplib (fresh connection)."""
    with smtplib.SMTP(HOST, port, local_hostname="bench-client.local", timeout=timeout) as smtp:
        refused = smtp.sendmail(SENDER, [RCPT], message)
        if refused:
            raise BenchError(f"recipients refused: {refused}")


WARMUP_SENDS = 4  # concurrent, so a process pool starts every worker, not just one


def warm_up(port: int, sink: Sink, timeout: float) -> None:
    """Relay ``WARMUP_SENDS`` small messages with a .docx at once; wait for the sink."""
    base = sink.count()
    messages = [warmup_message(i) for i in range(WARMUP_SENDS)]
    with ThreadPoolExecutor(WARMUP_SENDS) as pool:
        list(pool.map(lambda m: send_smtplib(port, m, timeout), messages))
    if sink.wait_count(base + WARMUP_SENDS, 30) is None:
        raise BenchError("warm-up messages did not reach the sink")
    time.sleep(0.5)


def big_check(
    system: str, message: bytes, workdir: Path, timeout: float, opts: ServerOptions
) -> dict[str, object]:
    """Peak RSS growth of a freshly started ``system`` while relaying one big message."""
    out: dict[str, object] = {"system": system, "label": SYSTEM_LABELS[system], "ok": False}
    wire = len(message)
    out["wire_bytes"] = wire
    try:
        with running(system, workdir / f"big-{system}", opts) as (server, sink):
            warm_up(server.port, sink, timeout)
            pids = server.pids()
            rss_before, nproc_before = tree_kib(pids, "VmRSS")
            out["processes_before"] = nproc_before
            if not reset_hwm(pids):
                out["note"] = "could not reset VmHWM; growth may include startup peaks"
            start = time.monotonic()
            with PeakSampler(pids) as sampler:
                send_smtplib(server.port, message, timeout)
                out["send_s"] = time.monotonic() - start
                if sink.wait_count(WARMUP_SENDS + 1, timeout) is None:
                    raise BenchError("big message did not reach the sink")
            hwm, nproc = tree_kib(pids, "VmHWM")
            hwm = max(hwm, sampler.peak_kib)
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


def send_for_reply(port: int, message: bytes, timeout: float) -> tuple[int, str]:
    """Send one message; return the reply to end-of-DATA (or to the command that failed)."""
    try:
        with smtplib.SMTP(HOST, port, local_hostname="bench-client.local", timeout=timeout) as s:
            s.ehlo()
            for command, expect in ((f"MAIL FROM:<{SENDER}>", 250), (f"RCPT TO:<{RCPT}>", 250)):
                code, text = s.docmd(command)
                if code != expect:
                    return code, text.decode("utf-8", "replace")
            code, text = s.data(message)
            return code, text.decode("utf-8", "replace")
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code, exc.smtp_error.decode("utf-8", "replace")


def bomb_check(
    name: str, description: str, message: bytes, workdir: Path, timeout: float,
    opts: ServerOptions, system: str = "gateway",
) -> dict[str, object]:  # fmt: skip
    """Peak RSS of ``system``'s process tree while it receives one bomb, and its reply."""
    out: dict[str, object] = {
        "name": name, "description": description, "system": system,
        "label": SYSTEM_LABELS[system], "wire_bytes": len(message), "ok": False,
    }  # fmt: skip
    try:
        with running(system, workdir / f"{name}-{system}", opts) as (server, sink):
            warm_up(server.port, sink, timeout)
            pids = server.pids()
            rss_before, nproc_before = tree_kib(pids, "VmRSS")
            out["processes_before"] = nproc_before
            reset_hwm(pids)
            start = time.monotonic()
            with PeakSampler(pids) as sampler:
                code, text = send_for_reply(server.port, message, timeout)
                out["send_s"] = time.monotonic() - start
                if code == 250:  # accepted: let the relay finish before the last reading
                    sink.wait_count(WARMUP_SENDS + 1, 60)
                time.sleep(0.3)
            hwm, nproc = tree_kib(pids, "VmHWM")
            peak = max(hwm, sampler.peak_kib)
            out.update(
                ok=True, reply_code=code, reply=text.replace("\n", " ")[:300],
                rss_before_mib=rss_before / 1024, peak_rss_mib=peak / 1024,
                processes=max(nproc, sampler.max_processes),
                reached_sink=sink.count() > WARMUP_SENDS,
            )  # fmt: skip
            log(f"{name}/{system}: reply {code} {text[:80]!r}, peak RSS {peak / 1024:.1f} MiB")
            if server.pids() == []:
                out["note"] = f"{system} exited during the bomb"
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        log(f"{name}/{system}: FAILED: {out['error']}")
    return out
