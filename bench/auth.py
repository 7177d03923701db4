"""Logins at ministry scale: a new connection and AUTH for every message (the way msmtp,
Outlook and phones send), with the login cache warm and with it off, against the
inbound listener without AUTH driven by the same client in the same run; then 64
simultaneous cold logins (peak RSS of serve, logins/s, logins/s per core of CPU).

Run: ``.venv/bin/python bench/auth.py [--messages 2000] [--cold-messages 200]
[--clients 16] [--logins 64] [--strict]``. Every system relays to a fresh Postfix
``smtp-sink``. The gateway runs its default config except ``[auth]``'s throttle
limits, raised so that one loopback address may log in many times at once (the
throttle counts logins in flight per client address, 20 by default).

Targets (issue 15): warm-cache AUTH-per-message submission >= 40% of the inbound
no-AUTH rate; peak RSS of serve with 64 simultaneous cold logins <= 512 MiB. The
IMAP-login row waits for the IMAP proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BENCH_DIR,
    HOST,
    MIB,
    RCPT,
    BenchError,
    free_port,
    log,
    percentile,
)
from bench.load import _read_reply, run_async
from bench.memory import PeakSampler, reset_hwm, tree_cpu_seconds, tree_kib
from bench.systems import ProcessServer, Sink, gateway_command

DEFAULT_JSON = BENCH_DIR / "results" / "auth.json"
PASSWORD = "Bench-Mat-Khau-2026"
DOMAIN = "bench.example"
WARM_TARGET = 0.40
RSS_TARGET_MIB = 512


def user(n: int) -> str:
    return f"user{n}@{DOMAIN}"


@dataclass
class Pass:
    """One measured pass of the reconnecting client."""

    name: str
    messages: int = 0
    refused: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    first_refusal: str | None = None

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.wall_s if self.wall_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"msgs_per_s": self.msgs_per_s}


@dataclass
class ColdLogins:
    logins: int = 0
    refused: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    rss_before_mib: float = 0.0
    peak_rss_mib: float = 0.0
    hash_workers: int | None = None
    replies: dict[str, int] = field(default_factory=dict)


def message(sender: str, size: int, n: int) -> bytes:
    """A 5 KB text message from ``sender``, dot-stuffed, ending with the final dot."""
    head = (
        f"From: <{sender}>\r\nTo: <{RCPT}>\r\nSubject: bench {n}\r\n"
        f"Message-ID: <auth-{n}-{os.getpid()}@{DOMAIN}>\r\n\r\n"
    )
    line = "Báo cáo hoạt động quý IV của đơn vị, gửi kèm số liệu tổng hợp.\r\n"
    body = ""
    while len(head.encode()) + len(body.encode()) < size:
        body += line
    return (head + body).encode() + b".\r\n"


async def _command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes, expect: int
) -> str | None:
    """Send one command, read its reply; the reply text if it is not ``expect``."""
    writer.write(line)
    code, text = await _read_reply(reader)
    return None if code == expect else text


async def _one_message(port: int, sender: str | None, data: bytes) -> str | None:
    """Connect, EHLO, (AUTH PLAIN), MAIL, RCPT, DATA, QUIT: None if accepted, else the
    refusal. A new connection each time, as msmtp sends."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        code, text = await _read_reply(reader)
        if code != 220:
            return text
        steps: list[tuple[bytes, int]] = [(b"EHLO bench-client.local\r\n", 250)]
        if sender is not None:
            token = base64.b64encode(f"\0{sender}\0{PASSWORD}".encode()).decode()
            steps.append((f"AUTH PLAIN {token}\r\n".encode(), 235))
        mail_from = sender or "someone@other.example"
        steps += [
            (f"MAIL FROM:<{mail_from}>\r\n".encode(), 250),
            (f"RCPT TO:<{RCPT}>\r\n".encode(), 250),
            (b"DATA\r\n", 354),
            (data, 250),
        ]
        for line, expect in steps:
            refused = await _command(reader, writer, line, expect)
            if refused is not None:
                return refused
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(BenchError, ConnectionError):
            await _read_reply(reader)
        return None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _reconnecting(
    port: int, clients: int, total: int, size: int, auth: bool, out: Pass, timeout: float
) -> None:
    counter = iter(range(total))

    async def client(index: int) -> None:
        sender = user(index) if auth else None
        for n in counter:
            refused = await _one_message(
                port, sender, message(sender or "someone@other.example", size, n)
            )
            if refused is None:
                out.messages += 1
            else:
                out.refused += 1
                out.first_refusal = out.first_refusal or refused[:200]

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(clients))), timeout)
    out.wall_s = time.monotonic() - started


def reconnecting_pass(
    name: str, server: ProcessServer, port: int, args: argparse.Namespace, total: int, auth: bool
) -> Pass:
    out = Pass(name)
    cpu = tree_cpu_seconds(server.pids())
    run_async(_reconnecting(port, args.clients, total, args.size, auth, out, args.timeout))
    out.cpu_s = tree_cpu_seconds(server.pids()) - cpu
    why = f": {out.first_refusal}" if out.first_refusal else ""
    log(f"{name}: {out.messages} msgs in {out.wall_s:.1f}s = {out.msgs_per_s:.1f} msgs/s"
        f" ({out.refused} refused{why})")  # fmt: skip
    return out


async def _login_once(port: int, address: str) -> str:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        await _read_reply(reader)
        refused = await _command(reader, writer, b"EHLO bench-client.local\r\n", 250)
        if refused is not None:
            return refused
        token = base64.b64encode(f"\0{address}\0{PASSWORD}".encode()).decode()
        writer.write(f"AUTH PLAIN {token}\r\n".encode())
        _code, text = await _read_reply(reader)
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(BenchError, ConnectionError):
            await _read_reply(reader)
        return text
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _simultaneous(port: int, addresses: list[str], timeout: float) -> list[str]:
    return await asyncio.wait_for(
        asyncio.gather(*(_login_once(port, a) for a in addresses)), timeout
    )


@dataclass
class Beside:
    """Inbound mail (no AUTH) sent while a login storm runs: does it wait behind argon2?"""

    idle_msgs_per_s: float = 0.0
    msgs_per_s: float = 0.0
    idle_p99_ms: float = 0.0
    p99_ms: float = 0.0
    storm_s: float = 0.0


async def _inbound_until(
    port: int, clients: int, size: int, stop: asyncio.Event, latencies: list[float]
) -> None:
    async def client() -> None:
        n = 0
        while not stop.is_set():
            began = time.perf_counter()
            refused = await _one_message(port, None, message("someone@other.example", size, n))
            if refused is not None:
                raise BenchError(f"inbound refused during the login storm: {refused[:200]}")
            latencies.append((time.perf_counter() - began) * 1000)
            n += 1

    await asyncio.gather(*(client() for _ in range(clients)))


async def _measure_inbound(port: int, clients: int, size: int, seconds: float) -> list[float]:
    stop, latencies = asyncio.Event(), []
    task = asyncio.ensure_future(_inbound_until(port, clients, size, stop, latencies))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return latencies


async def _storm_beside_inbound(
    submission: int, inbound: int, addresses: list[str], clients: int, size: int, timeout: float
) -> tuple[list[str], list[float], float]:
    stop, latencies = asyncio.Event(), []
    background = asyncio.ensure_future(_inbound_until(inbound, clients, size, stop, latencies))
    began = time.monotonic()
    try:
        replies = await _simultaneous(submission, addresses, timeout)
    finally:
        wall = time.monotonic() - began
        stop.set()
        await background
    return replies, latencies, wall


def inbound_beside_storm(
    inbound: int, submission: int, addresses: list[str], args: argparse.Namespace
) -> Beside:
    """The inbound rate and p99 latency on their own for as long as a storm lasts, then
    during a storm of cold logins of ``addresses`` (distinct users, nothing cached)."""
    out = Beside()
    clients = max(1, args.clients // 4)
    replies, during, out.storm_s = run_async(
        _storm_beside_inbound(submission, inbound, addresses, clients, args.size, args.timeout)
    )
    refused = [r for r in replies if not r.startswith("235")]
    if refused:
        raise BenchError(f"{len(refused)} logins refused in the storm: {refused[0][:200]}")
    idle = run_async(_measure_inbound(inbound, clients, args.size, out.storm_s))
    out.msgs_per_s = len(during) / out.storm_s
    out.idle_msgs_per_s = len(idle) / out.storm_s
    out.p99_ms = percentile(sorted(during), 99)
    out.idle_p99_ms = percentile(sorted(idle), 99)
    log(f"inbound beside {len(addresses)} cold logins: {out.msgs_per_s:.0f} msgs/s"
        f" (p99 {out.p99_ms:.0f} ms) vs {out.idle_msgs_per_s:.0f} msgs/s alone"
        f" (p99 {out.idle_p99_ms:.0f} ms)")  # fmt: skip
    return out


def cold_logins(server: ProcessServer, port: int, count: int, timeout: float) -> ColdLogins:
    """``count`` logins of distinct users at once on a fresh gateway (nothing cached)."""
    out = ColdLogins()
    pids = server.pids()
    out.rss_before_mib = tree_kib(pids, "VmRSS")[0] / 1024
    reset_hwm(pids)
    cpu = tree_cpu_seconds(pids)
    started = time.monotonic()
    with PeakSampler(pids) as sampler:
        replies = run_async(_simultaneous(port, [user(n) for n in range(count)], timeout))
    out.wall_s = time.monotonic() - started
    out.cpu_s = tree_cpu_seconds(pids) - cpu
    hwm = tree_kib(pids, "VmHWM")[0]
    out.peak_rss_mib = max(hwm, sampler.peak_kib) / 1024
    for reply in replies:
        key = reply[:60]
        out.replies[key] = out.replies.get(key, 0) + 1
    out.logins = sum(1 for r in replies if r.startswith("235"))
    out.refused = count - out.logins
    log(f"{count} cold logins at once: {out.logins} ok in {out.wall_s:.2f}s,"
        f" peak RSS {out.peak_rss_mib:.0f} MiB (before {out.rss_before_mib:.0f})")  # fmt: skip
    return out


def write_gateway(workdir: Path, sink_port: int, users: int, auth: dict[str, Any]) -> tuple[
    ProcessServer, int
]:  # fmt: skip
    """A gateway relaying to the sink, with ``users`` mailboxes that log in; its server
    (waiting on the inbound port) and its submission port."""
    from gateway.config import load_config
    from gateway.directory.mailboxes import Directory, Registration

    workdir.mkdir(parents=True, exist_ok=True)
    inbound, submission = free_port(), free_port()
    auth_lines = "".join(f"{key} = {value}\n" for key, value in auth.items())
    config = f"""\
[gateway]
hostname = "bench.local"
domains = ["{DOMAIN}"]
data_dir = "{workdir / "var"}"

[smtp]
inbound_listen = "{HOST}:{inbound}"
submission_listen = "{HOST}:{submission}"
require_tls_for_auth = false
max_connections_per_client = 400

[delivery]
local = "smtp://{HOST}:{sink_port}"
outbound = "smtp://{HOST}:{sink_port}"

[auth]
max_failures_per_address = 1000
max_failures_per_client = 1000
{auth_lines}
[log]
dir = "{workdir / "log"}"
"""
    path = workdir / "mailgate.toml"
    path.write_text(config, encoding="utf-8")
    hasher = load_config(path).auth.argon2().hasher()  # hashed as serve will verify them
    directory = Directory.for_data_dir(workdir / "var", hasher)
    try:
        forms = [(Registration(RCPT, "Bench Recipient"), None)]
        forms += [(Registration(user(n), f"Bench User {n}"), PASSWORD) for n in range(users)]
        directory.add_many(forms, must_change=False)
    finally:
        directory.close()
    cmd = [*gateway_command(), "-c", str(path), "serve"]
    return ProcessServer("gateway", cmd, inbound, workdir, ready_timeout=60), submission


@contextlib.contextmanager
def gateway_running(
    workdir: Path, users: int, auth: dict[str, Any]
) -> Iterator[tuple[ProcessServer, int]]:
    workdir.mkdir(parents=True, exist_ok=True)
    sink = Sink(workdir)
    server: ProcessServer | None = None
    try:
        sink.start()
        server, submission = write_gateway(workdir, sink.port, users, auth)
        server.start()
        yield server, submission
    finally:
        if server is not None:
            server.stop()
        sink.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=2000, help="inbound and warm passes")
    p.add_argument("--cold-messages", type=int, default=200, help="the pass without cache")
    p.add_argument("--clients", type=int, default=16, help="parallel reconnecting clients")
    p.add_argument("--size", type=int, default=5120, help="message bytes")
    p.add_argument("--logins", type=int, default=64, help="simultaneous cold logins")
    p.add_argument("--timeout", type=float, default=600.0, help="limit per pass, seconds")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--strict", action="store_true", help="exit 2 if a target is missed")
    args = p.parse_args(argv)
    if min(args.messages, args.cold_messages, args.clients, args.size, args.logins) < 1:
        p.error("counts must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cpus = os.cpu_count() or 1
    load = os.getloadavg()
    if load[0] > 0.5 * cpus:
        log(f"warning: load average {load[0]:.2f} on {cpus} CPUs; figures will be noisy")
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-bench-auth-"))
    passes: dict[str, Pass] = {}
    try:
        with gateway_running(tmp / "warm", args.clients, {}) as (server, submission):
            warmup = min(200, args.messages // 10)
            reconnecting_pass("warm-up", server, server.port, args, warmup, auth=False)
            passes["inbound"] = reconnecting_pass(
                "inbound, no AUTH", server, server.port, args, args.messages, auth=False
            )
            # One login per user fills the cache, as the first message of the day would.
            reconnecting_pass("cache fill", server, submission, args, args.clients, auth=True)
            passes["warm"] = reconnecting_pass(
                "submission, AUTH per message, warm cache", server, submission, args,
                args.messages, auth=True,
            )  # fmt: skip
        with gateway_running(tmp / "cold", args.clients, {"cache_size": 0}) as (
            server,
            submission,
        ):
            reconnecting_pass("warm-up", server, server.port, args, 50, auth=False)
            passes["inbound_cold_gateway"] = reconnecting_pass(
                "inbound, no AUTH (gateway without cache)", server, server.port, args,
                args.messages, auth=False,
            )  # fmt: skip
            passes["cold"] = reconnecting_pass(
                "submission, AUTH per message, no cache", server, submission, args,
                args.cold_messages, auth=True,
            )  # fmt: skip
        with gateway_running(tmp / "logins", 2 * args.logins, {}) as (server, submission):
            reconnecting_pass("warm-up", server, server.port, args, 50, auth=False)
            logins = cold_logins(server, submission, args.logins, args.timeout)
            second = [user(n) for n in range(args.logins, 2 * args.logins)]
            beside = inbound_beside_storm(server.port, submission, second, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc = report(passes, logins, beside, cpus)
    doc["load_average"] = {"start": load, "end": os.getloadavg()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.json}")
    if any(p.refused for p in passes.values()) or logins.refused:
        print("failed: some messages or logins were refused (see above)")
        return 1
    if args.strict and False in doc["targets"].values():
        return 2
    return 0


def report(
    passes: dict[str, Pass], logins: ColdLogins, beside: Beside, cpus: int
) -> dict[str, Any]:
    inbound = passes["inbound"].msgs_per_s
    inbound_cold = passes["inbound_cold_gateway"].msgs_per_s
    warm = passes["warm"].msgs_per_s
    cold = passes["cold"].msgs_per_s
    print("\nReconnect for every message (new connection, EHLO, [AUTH], MAIL, RCPT, DATA, QUIT)")
    print(f"{'pass':<48} {'msgs/s':>9} {'vs inbound':>11} {'CPU ms/msg':>11}")
    rows = [
        ("inbound", "inbound, no AUTH", inbound),
        ("warm", "submission, AUTH every message, warm cache", inbound),
        ("inbound_cold_gateway", "inbound, no AUTH (gateway without cache)", inbound_cold),
        ("cold", "submission, AUTH every message, no cache", inbound_cold),
    ]
    for key, label, base in rows:
        p = passes[key]
        cpu_ms = p.cpu_s * 1000 / p.messages if p.messages else float("nan")
        ratio = p.msgs_per_s / base if base else float("nan")
        print(f"{label:<48} {p.msgs_per_s:>9.1f} {ratio:>10.2f}x {cpu_ms:>11.2f}")
    per_core = logins.logins / logins.cpu_s if logins.cpu_s else float("nan")
    per_s = logins.logins / logins.wall_s if logins.wall_s else float("nan")
    print(f"\n{logins.logins} simultaneous cold logins: {logins.wall_s:.2f} s,"
          f" {per_s:.1f} logins/s ({per_core:.1f} per core-second of serve's CPU, {cpus} cores),"
          f" peak RSS {logins.peak_rss_mib:.0f} MiB"
          f" (before {logins.rss_before_mib:.0f})")  # fmt: skip
    print(f"inbound mail beside a second storm of {logins.logins + logins.refused} cold logins:"
          f" {beside.msgs_per_s:.0f} msgs/s, p99 {beside.p99_ms:.0f} ms; alone for as long:"
          f" {beside.idle_msgs_per_s:.0f} msgs/s, p99 {beside.idle_p99_ms:.0f} ms")  # fmt: skip
    print("IMAP logins/s: bench/imap.py (cold and cached logins through the proxy)")
    targets = {
        "warm_auth_ge_40pct_inbound": warm >= WARM_TARGET * inbound,
        "cold_logins_peak_rss_le_512mib": logins.peak_rss_mib <= RSS_TARGET_MIB,
    }
    print("\nTargets (issue 15):")
    print(f"  {'PASS' if targets['warm_auth_ge_40pct_inbound'] else 'FAIL'} warm-cache AUTH per"
          f" message >= {WARM_TARGET:.0%} of inbound: {warm / inbound:.2f}x")  # fmt: skip
    verdict = "PASS" if targets["cold_logins_peak_rss_le_512mib"] else "FAIL"
    print(f"  {verdict} peak RSS with {logins.logins} cold logins <= {RSS_TARGET_MIB} MiB:"
          f" {logins.peak_rss_mib:.0f} MiB")  # fmt: skip
    print(f"  cold AUTH per message: {cold:.1f} msgs/s = {cold / inbound_cold:.3f}x inbound"
          f" (limited by argon2: {per_core:.1f} logins per core-second)")  # fmt: skip
    for key, p in passes.items():
        print(f"RESULT auth/{key} msgs_per_s={p.msgs_per_s:.1f} refused={p.refused}")
    print(f"RESULT auth/cold_logins logins={logins.logins} seconds={logins.wall_s:.2f}"
          f" logins_per_core_s={per_core:.1f} peak_rss_mib={logins.peak_rss_mib:.0f}")  # fmt: skip
    return {
        "passes": {k: p.as_dict() for k, p in passes.items()},
        "ratios": {"warm_vs_inbound": warm / inbound, "cold_vs_inbound": cold / inbound_cold},
        "cold_logins": asdict(logins) | {"logins_per_s": per_s, "logins_per_core_s": per_core},
        "inbound_beside_cold_logins": asdict(beside),
        "cpus": cpus,
        "mib": MIB,
        "targets": targets,
    }


if __name__ == "__main__":
    sys.exit(main())
