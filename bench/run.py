"""Throughput, latency and memory benchmark: smtp-sink, bare relay, Postfix, Haraka, mailgate.

Every system under test relays to a fresh Postfix ``smtp-sink`` (discarding) on loopback and
gets the same load: 5 KB messages from ``smtp-source -d`` (plain workload) and messages
carrying a 1 MiB .docx from an asyncio client (docx workload). ``--big`` checks the memory
cost of one ~27 MiB message and of two decompression bombs. Run:
``.venv/bin/python bench/run.py [--quick] [--workload plain|docx|both] [--rounds N]``.

This file only parses the command line and orders the passes; the work is in the sibling
modules (see ``bench/__init__.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_JSON, SYSTEMS, log
from bench.memory import big_check, bomb_check
from bench.messages import DocxWorkload, bomb_messages, build_big_message
from bench.report import report
from bench.throughput import (
    RunResult,
    bench_docx,
    bench_system,
    pick_median,
    server_options,
)


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
    p.add_argument(
        "--workload",
        choices=("plain", "docx", "both"),
        help="5 KB messages, 1 MiB .docx messages, or both (default both; --quick: plain)",
    )
    p.add_argument("--docx-messages", type=int, help="docx messages per system (default 300/60)")
    p.add_argument("--docx-connections", type=int, default=20, help="docx client connections")
    p.add_argument("--docx-warmup", type=int, help="docx warm-up messages (default 20/10)")
    p.add_argument("--rounds", type=int, default=1, help="repeat, interleaved; report medians")
    p.add_argument("--timeout", type=float, help="limit per load phase, seconds")
    for system in SYSTEMS:
        p.add_argument(f"--skip-{system}", action="store_true", help=f"do not run {system}")
    p.add_argument(
        "--haraka-nodes", type=int, default=1, help="Haraka cluster processes (default 1)"
    )
    big = p.add_mutually_exclusive_group()
    big.add_argument(
        "--big", action="store_true", help="run only the memory checks (20 MiB message, bombs)"
    )
    big.add_argument(
        "--no-big", action="store_true", help="skip the memory checks (20 MiB message, bombs)"
    )
    p.add_argument("--no-bombs", action="store_true", help="skip the two bombs")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    p.add_argument("--gateway-bin", help="gateway executable (default: the venv's mailgate)")
    p.add_argument(
        "--gateway-processes", type=int, default=1,
        help="the gateway's smtp.processes (default 1, as its shipped config)",
    )  # fmt: skip
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
    if args.workload is None:
        args.workload = "plain" if args.quick else "both"
    if args.docx_messages is None:
        args.docx_messages = 60 if args.quick else 300
    if args.docx_warmup is None:
        args.docx_warmup = min(10 if args.quick else 20, max(0, args.docx_messages // 10))
    if args.timeout is None:
        # Generous: assumes at least 25 plain or 1 docx msgs/s; every phase is bounded by it.
        docx = args.docx_messages if args.workload != "plain" else 0
        args.timeout = max(120.0, args.messages / 25, float(docx))
    positive = (args.messages, args.sessions, args.size, args.latency_clients, args.rounds)
    counts = (args.docx_messages, args.docx_connections, args.haraka_nodes, args.gateway_processes)
    if min(*positive, *counts) < 1:
        p.error(
            "--messages, --sessions, --size, --latency-clients, --rounds, --docx-messages, "
            "--docx-connections, --haraka-nodes, --gateway-processes must be positive"
        )
    for setting in args.postfix_set:
        if not re.fullmatch(r"[a-z0-9_]+\s*=[^\n]*", setting):
            p.error(f"--postfix-set expects KEY=VALUE, got {setting!r}")
    return args


def _terminate(signum: int, _frame: object) -> None:
    """Turn SIGTERM into SystemExit so that every finally block stops its servers."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def run_rounds(
    systems: list[str], args: argparse.Namespace, tmp: Path, failed: list[str]
) -> tuple[list[RunResult], list[RunResult], dict[str, object]]:
    """Every selected workload on every system, ``--rounds`` times interleaved; medians."""
    plain_runs: dict[str, list[RunResult]] = {s: [] for s in systems}
    docx_runs: dict[str, list[RunResult]] = {s: [] for s in systems}
    docx_info: dict[str, object] = {}
    workload: DocxWorkload | None = None
    if args.workload in ("docx", "both"):
        workload = DocxWorkload()
        docx_info = {"docx_bytes": len(workload.docx), "wire_bytes": workload.wire_bytes}
    skipped: dict[str, RunResult] = {}  # a system that cannot run here is tried once only
    for round_no in range(1, args.rounds + 1):
        passes: list[tuple[str, dict[str, list[RunResult]]]] = []
        if args.workload in ("plain", "both"):
            passes.append(("plain", plain_runs))
        if workload is not None:
            passes.append(("docx", docx_runs))
        for name, runs in passes:
            for system in systems:
                if system in skipped:
                    runs[system].append(skipped[system])
                    continue
                log(f"{name}: {system} (round {round_no}/{args.rounds})")
                workdir = tmp / f"r{round_no}"
                if name == "plain":
                    run = bench_system(system, args, workdir)
                else:
                    assert workload is not None
                    run = bench_docx(system, args, workdir, workload)
                runs[system].append(run)
                if run.skipped:
                    skipped[system] = run
                elif not run.ok:
                    failed.append(system if name == "plain" else f"docx/{system}")
    plain = [pick_median(plain_runs[s]) for s in systems] if plain_runs[systems[0]] else []
    docx = [pick_median(docx_runs[s]) for s in systems] if docx_runs[systems[0]] else []
    return plain, docx, docx_info


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 if a system failed (2 with --strict and a missed target)."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    load_start = os.getloadavg()
    cpus = os.cpu_count() or 1
    if load_start[0] > 0.5 * cpus:
        log(f"warning: load average {load_start[0]:.2f} on {cpus} CPUs; figures will be noisy")
    systems = [s for s in SYSTEMS if not getattr(args, f"skip_{s}")]
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-bench-"))
    log(f"work directory {tmp}")
    results: list[RunResult] = []
    docx: list[RunResult] = []
    docx_info: dict[str, object] = {}
    big: list[dict[str, object]] = []
    bombs: list[dict[str, object]] = []
    failed: list[str] = []
    try:
        if not args.big and systems:
            results, docx, docx_info = run_rounds(systems, args, tmp, failed)
        if not args.no_big:
            timeout = max(args.timeout, 300)
            opts = server_options(args)
            log("memory check: building the big message")
            message = build_big_message()
            for system in ("bare", "gateway"):
                if system in systems:
                    big.append(big_check(system, message, tmp, timeout, opts))
            if "gateway" in systems and not args.no_bombs:
                for name, description, _inflated, bomb in bomb_messages():
                    bombs.append(bomb_check(name, description, bomb, tmp, timeout, opts))
    finally:
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    doc = report(results, big, args, docx, bombs, docx_info)
    doc["elapsed_s"] = time.monotonic() - started
    doc["load_average"] = {"start": load_start, "end": os.getloadavg()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.json} (total {doc['elapsed_s']:.0f}s)")
    failed += [str(b["system"]) for b in big if not b.get("ok")]
    failed += [f"bomb/{b['name']}" for b in bombs if not b.get("ok")]
    if failed:
        print(f"failed: {', '.join(dict.fromkeys(failed))}")
        return 1
    targets = doc["targets"]
    if args.strict and isinstance(targets, dict) and False in targets.values():
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
