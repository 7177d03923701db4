"""Mail-flow lines: the gateway with ClamAV on, and one message to a group of 50 members,
each against the Postfix relay measured in the same run.

Lines (all driven by the same asyncio client, ``load.drive``: N connections, one message
after another, each timed from MAIL FROM to the reply to DATA):

- ``plain`` and ``docx``: 5 KB messages and messages carrying a 1 MiB .docx, to the
  Postfix relay, the gateway with its default filters, and the gateway with
  ``[filters.clamav]`` scanning every decoded part in a private clamd (one local EICAR
  signature: no downloads, so clamd's cost per scan is its engine over a tiny database);
- ``group``: 5 KB messages to a group of 50 mailboxes. The gateway expands the group
  (``filters/groups.py``); Postfix expands the same 50 through ``virtual_alias_maps``.
  Both hand the sink one transaction with 50 recipients per message.

Run: ``.venv/bin/python bench/flows.py [--quick] [--rounds N]``. Prints one table and
writes ``bench/results/flows.json``. Like ``run.py`` it needs Postfix (smtp-sink) and
here clamd (clamav-daemon) too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_DIR, RCPT, BenchError, fmt, log, percentile
from bench.load import drive
from bench.memory import tree_cpu_seconds
from bench.messages import DocxWorkload, probe_message
from bench.systems import (
    PostfixServer,
    ProcessServer,
    Server,
    Sink,
    gateway_config,
    make_gateway,
)

# The private clamd the integration tests use: one config and one signature for both
# (it assembles EICAR from halves, so no file here is a "virus" to a scanner).
from tests.integration.clamd import PrivateClamd

GROUP = "all@bench.example"
MEMBERS = [f"member{n:02d}@bench.example" for n in range(1, 51)]
DEFAULT_JSON = BENCH_DIR / "results" / "flows.json"


@dataclass
class Line:
    """One system on one workload."""

    workload: str
    system: str
    ok: bool = False
    error: str | None = None
    messages: int = 0
    msgs_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_ms_per_msg: float | None = None
    refused: int = 0
    rounds_msgs_per_s: list[float | None] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer messages")
    p.add_argument("--rounds", type=int, default=1, help="repeat, interleaved; report medians")
    p.add_argument("--connections", type=int, default=20, help="client connections")
    p.add_argument("--processes", type=int, default=1, help="the gateway's smtp.processes")
    p.add_argument("--plain-messages", type=int, help="5 KB messages per line (2000/500)")
    p.add_argument("--docx-messages", type=int, help="docx messages per line (150/40)")
    p.add_argument("--group-messages", type=int, help="messages to the group per line (600/150)")
    p.add_argument("--timeout", type=float, default=600.0, help="limit per pass, seconds")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = p.parse_args(argv)
    args.plain_messages = args.plain_messages or (500 if args.quick else 2000)
    args.docx_messages = args.docx_messages or (40 if args.quick else 150)
    args.group_messages = args.group_messages or (150 if args.quick else 600)
    return args


def append_config(server: ProcessServer, text: str) -> None:
    """Add TOML sections to the config ``make_gateway`` wrote."""
    config = gateway_config(server)
    config.write_text(config.read_text(encoding="utf-8") + "\n" + text, encoding="utf-8")


def add_group(server: ProcessServer) -> None:
    """The group of 50 in the gateway's directory, open to mail from outside."""
    from gateway.directory.mailboxes import Directory, Registration

    directory = Directory.for_data_dir(gateway_config(server).parent / "var")
    try:
        directory.add(Registration(GROUP, "Bench group", kind="group"), None)
        for member in MEMBERS:
            directory.add(Registration(member, member.split("@")[0]), None)
            directory.add_member(GROUP, member)
        directory.set_post_policy(GROUP, "anyone")
    finally:
        directory.close()


def postfix_with_group(workdir: Path, sink_port: int) -> PostfixServer:
    """The Postfix relay, expanding the group through a virtual alias (texthash: no postmap)."""
    (workdir / "etc").mkdir(parents=True, exist_ok=True)
    table = workdir / "etc" / "virtual"
    table.write_text(f"{GROUP} {', '.join(MEMBERS)}\n", encoding="ascii")
    return PostfixServer(workdir, sink_port, [f"virtual_alias_maps = texthash:{table}"])


@contextmanager
def started(
    system: str, workload: str, workdir: Path, clamd: str | None, processes: int = 1
) -> Iterator[Server]:
    workdir.mkdir(parents=True, exist_ok=True)
    sink = Sink(workdir)
    server: Server | None = None
    try:
        sink.start()
        if system == "postfix":
            server = (
                postfix_with_group(workdir, sink.port)
                if workload == "group"
                else PostfixServer(workdir, sink.port)
            )
        else:
            gateway = make_gateway(workdir, sink.port, processes=processes)
            if system == "gateway+clamav":
                assert clamd is not None
                append_config(
                    gateway, f'[filters.clamav]\naddress = "{clamd}"\ntimeout_seconds = 30\n'
                )
            if workload == "group":
                add_group(gateway)
            server = gateway
        server.start()
        yield server
    finally:
        if server is not None:
            server.stop()
        sink.stop()


def measure(
    system: str,
    workload: str,
    workdir: Path,
    clamd: str | None,
    payload: Callable[[int], bytes],
    count: int,
    args: argparse.Namespace,
) -> Line:
    line = Line(workload, system, messages=count)
    recipient = GROUP if workload == "group" else RCPT
    try:
        with started(system, workload, workdir, clamd, args.processes) as server:
            warm = max(5, count // 20)
            drive(server.port, min(warm, args.connections), warm, payload, args.timeout,
                  recipient=recipient)  # fmt: skip
            cpu0 = tree_cpu_seconds(server.pids())
            got = drive(server.port, args.connections, count, payload, args.timeout,
                        first=warm, recipient=recipient)  # fmt: skip
            line.cpu_ms_per_msg = (tree_cpu_seconds(server.pids()) - cpu0) * 1000 / count
            line.msgs_per_s = got.accepted / got.wall_s
            line.refused = got.refused
            if got.latencies_ms:
                line.p50_ms = percentile(got.latencies_ms, 50)
                line.p99_ms = percentile(got.latencies_ms, 99)
            line.ok = got.accepted == count
            if not line.ok:
                line.error = f"{got.refused} refused, e.g. {next(iter(got.refused_replies), '')}"
    except Exception as exc:
        line.error = f"{type(exc).__name__}: {exc}"
        log(f"{workload}/{system}: FAILED: {line.error}")
    return line


def median_line(lines: list[Line]) -> Line:
    ok = sorted((x for x in lines if x.ok), key=lambda x: x.msgs_per_s or 0.0)
    chosen = ok[(len(ok) - 1) // 2] if ok else lines[-1]
    chosen.rounds_msgs_per_s = [x.msgs_per_s for x in lines]
    return chosen


PLAN = (
    ("plain", ("postfix", "gateway", "gateway+clamav")),
    ("docx", ("postfix", "gateway", "gateway+clamav")),
    ("group", ("postfix", "gateway")),
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-flows-"))
    docx = DocxWorkload()
    payloads: dict[str, tuple[Callable[[int], bytes], int]] = {
        "plain": (lambda i: probe_message(5120, i), args.plain_messages),
        "docx": (docx.data, args.docx_messages),
        "group": (lambda i: probe_message(5120, i), args.group_messages),
    }
    runs: dict[tuple[str, str], list[Line]] = {}
    (tmp / "clamd").mkdir()
    clamd = PrivateClamd(tmp / "clamd")
    started_at = time.monotonic()
    try:
        clamd.start()
        for round_no in range(1, args.rounds + 1):
            for workload, systems in PLAN:
                payload, count = payloads[workload]
                for system in systems:
                    log(f"{workload}: {system} (round {round_no}/{args.rounds})")
                    where = tmp / f"r{round_no}-{workload}-{system.replace('+', '-')}"
                    line = measure(system, workload, where, clamd.tcp_address, payload, count, args)
                    runs.setdefault((workload, system), []).append(line)
                    log(f"{workload}/{system}: {fmt(line.msgs_per_s, '.1f')} msgs/s")
    finally:
        clamd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    lines = {key: median_line(found) for key, found in runs.items()}
    print(f"\n{'workload':<8} {'system':<16} {'msgs/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'CPU ms/msg':>10} {'x postfix':>9}")  # fmt: skip
    doc: dict[str, object] = {"lines": [], "ratios": {}}
    for (workload, system), line in lines.items():
        base = lines.get((workload, "postfix"))
        ratio = (
            line.msgs_per_s / base.msgs_per_s
            if line.msgs_per_s and base and base.msgs_per_s
            else None
        )
        print(
            f"{workload:<8} {system:<16} {fmt(line.msgs_per_s, '9.1f')} {fmt(line.p50_ms, '8.1f')}"
            f" {fmt(line.p99_ms, '8.1f')} {fmt(line.cpu_ms_per_msg, '10.2f')}"
            f" {fmt(ratio, '9.2f')}" + (f"  FAILED: {line.error}" if not line.ok else "")
        )
        doc["lines"].append(asdict(line))  # type: ignore[union-attr]
        if system != "postfix":
            doc["ratios"][f"{workload}/{system}"] = ratio  # type: ignore[index]
    doc["rounds"] = args.rounds
    doc["gateway_processes"] = args.processes
    doc["elapsed_s"] = time.monotonic() - started_at
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.json} ({doc['elapsed_s']:.0f}s)")
    if not all(line.ok for line in lines.values()):
        raise SystemExit(1)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"failed: {exc}")
        sys.exit(1)
