"""One measured pass: start one system, load it with one workload, read its figures.

Both workloads fill the same ``RunResult`` so that ``report`` can print them alike:
msgs/s accepted (timed from the first message to the last reply), msgs/s drained (until the
sink has them all), p50/p99 latency, peak RSS of the process tree and CPU per message.
With ``--rounds N`` every system runs N times, interleaved, and the median round is kept.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import SYSTEM_LABELS, BenchError, Skipped, fmt, log, percentile
from bench.load import drive, latency_probe, smtp_source
from bench.memory import tree_cpu_seconds, tree_kib, tree_pss_kib
from bench.messages import DocxWorkload
from bench.systems import PostfixServer, Server, ServerOptions, running


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
    # Added with the docx workload and Haraka (the JSON keeps every older key).
    workload: str = "plain"
    skipped: bool = False  # the system cannot run here (error says why): not a failure
    wire_bytes: int | None = None  # bytes of one message on the wire (docx workload)
    refused: int = 0  # messages answered with something other than 250
    refused_replies: dict[str, int] = field(default_factory=dict)


def pick_median(runs: list[RunResult]) -> RunResult:
    """The round with the median msgs/s (lower median), annotated with every round's figure."""
    if all(r.skipped for r in runs):
        return runs[0]  # one skip, reused for every round: nothing to annotate
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
    return ServerOptions(
        args.gateway_bin, tuple(args.postfix_set), args.haraka_nodes, args.gateway_processes
    )


def read_memory(result: RunResult, server: Server) -> None:
    """Peak RSS (summed VmHWM) and current PSS of the server's process tree."""
    hwm_kib, nproc = tree_kib(server.pids(), "VmHWM")
    result.peak_rss_mib = hwm_kib / 1024
    result.rss_processes = nproc
    result.pss_now_mib = tree_pss_kib(server.pids()) / 1024
    if nproc > 1:
        result.notes.append(
            f"peak RSS = sum of VmHWM over {nproc} processes (shared pages counted in "
            f"each); PSS after the run: {result.pss_now_mib:.1f} MiB"
        )


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
            read_memory(result, server)
            result.ok = True
    except Skipped as exc:
        result.skipped, result.error = True, str(exc)
        log(f"{system}: skipped: {exc}")
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"{system}: FAILED: {result.error}")
    return result


def bench_docx(
    system: str, args: argparse.Namespace, workdir: Path, workload: DocxWorkload
) -> RunResult:
    """Start ``system`` and send it the docx workload over parallel asyncio connections."""
    n, conns = args.docx_messages, args.docx_connections
    result = RunResult(system, SYSTEM_LABELS[system], messages=n, workload="docx")
    result.sessions, result.size = conns, len(workload.docx)
    result.wire_bytes = workload.wire_bytes
    timeout = args.timeout
    try:
        with running(system, workdir / f"docx-{system}", server_options(args)) as (server, sink):
            log(f"docx/{system}: listening on {server.port}, sink on {sink.port}")
            warm = args.docx_warmup
            if warm:
                got = drive(server.port, min(conns, warm), warm, workload.data, timeout)
                if got.accepted and sink.wait_count(got.accepted, timeout) is None:
                    raise BenchError(f"warm-up: sink got {sink.count()} of {got.accepted}")
            base = sink.count()
            cpu0 = tree_cpu_seconds(server.pids())
            start = time.monotonic()
            got = drive(server.port, conns, n, workload.data, timeout, first=warm)
            result.cpu_s = tree_cpu_seconds(server.pids()) - cpu0
            result.cpu_ms_per_msg = result.cpu_s * 1000 / n
            result.wall_s = got.wall_s
            result.msgs_per_s = got.accepted / got.wall_s
            result.refused, result.refused_replies = got.refused, got.refused_replies
            if got.refused:
                top = max(got.refused_replies, key=lambda k: got.refused_replies[k])
                result.notes.append(f"{got.refused} of {n} refused, e.g. {top!r}")
            log(f"docx/{system}: {result.msgs_per_s:.1f} msgs/s accepted ({got.wall_s:.2f}s)")
            done = sink.wait_count(base + got.accepted, timeout)
            if done is None:
                result.notes.append(f"sink got {sink.count() - base} of {got.accepted} in time")
            else:
                result.drained_s = done - start
                result.drained_msgs_per_s = got.accepted / result.drained_s
            if isinstance(server, PostfixServer) and not server.wait_queue_empty(30):
                result.notes.append("postfix queue not empty 30s after the sink got all")
            samples = got.latencies_ms
            result.latency_samples = len(samples)
            if samples:
                result.p50_ms = percentile(samples, 50)
                result.p99_ms = percentile(samples, 99)
                result.mean_ms = statistics.fmean(samples)
            read_memory(result, server)
            result.ok = got.accepted > 0
            if not result.ok:
                result.error = f"every message refused: {result.notes[-1]}"
    except Skipped as exc:
        result.skipped, result.error = True, str(exc)
        log(f"docx/{system}: skipped: {exc}")
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"docx/{system}: FAILED: {result.error}")
    return result
