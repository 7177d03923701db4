"""Benchmark of the log index: generation, build, size, and whole-command searches vs zgrep.

Usage::

    .venv/bin/python bench/logsearch.py /work/bench-data/m20              # 20 M events
    .venv/bin/python bench/logsearch.py /work/bench-data/m2 --events 2000000
    .venv/bin/python bench/logsearch.py DIR --reuse                       # keep DIR's days

Prints, in one run: the generation time (bench/loggen.py; skipped with ``--reuse``), a
full index build (``gateway.events.index.update``, what ``mailgate maintenance`` runs,
on every core), the index's size against the compressed days, then for each key kind
the wall time of the whole ``mailgate logs search --KIND VALUE --json`` command (process
start included; best and median of ``--runs``), the same search before any maintenance
run indexed today's file, and ``zgrep -F VALUE`` over the same files with the ratio
(the ratio is zgrep's wall time over the best wall time).
Keep the data outside the repository (it is ~700 MB at 20 M events).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.loggen import generate  # noqa: E402
from gateway.events.index import INDEX_DIR, index_path, update  # noqa: E402
from gateway.events.search import day_files, read_day  # noqa: E402

MAILGATE = REPO / ".venv" / "bin" / "mailgate"
CONFIG = """[gateway]
hostname = "mail.mof.gov.vn"
domains = ["mof.gov.vn"]
data_dir = "var"
[smtp]
inbound_listen = "127.0.0.1:2525"
submission_listen = "127.0.0.1:5870"
require_tls_for_auth = false
[delivery]
local = "maildir:var/mail"
outbound = "smtp://127.0.0.1:2526"
[log]
dir = "{log_dir}"
"""
FIELDS = {
    "message-id": "message_id",
    "sender": "sender",
    "recipient": "recipients",
    "client": "client",
    "user": "user",
    "session": "session",
}


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def pick_values(log_dir: Path, seed: int) -> dict[str, str]:
    """A value of each kind, from an event in the middle of the period, as a user would ask."""
    rng = random.Random(seed)
    days = day_files(log_dir)
    records = list(read_day(days[len(days) // 2][1]))
    values: dict[str, str] = {}
    while len(values) < len(FIELDS):
        record = rng.choice(records)
        if record.get("event") != "message_accepted" or record.get("listener") != "submission":
            continue
        for option, field in FIELDS.items():
            value = record.get(field)
            values.setdefault(option, value[0] if isinstance(value, list) else value)
    return values


def timed(argv: list[str]) -> tuple[float, int, float]:
    """Wall time of a whole command, the lines it printed, and its CPU time (user + sys):
    on a machine shared with other work the CPU time is what an idle machine's wall time
    would be, roughly, for a single-threaded command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):  # zgrep exits 1 when nothing matched
        raise SystemExit(f"{argv[0]} failed: {done.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, done.stdout.count(b"\n"), cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--days", type=int, default=183)
    parser.add_argument("--reuse", action="store_true", help="do not regenerate the days")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-zgrep", action="store_true")
    parser.add_argument("--skip-build", action="store_true", help="keep the existing index")
    args = parser.parse_args(argv)
    log_dir = args.folder.resolve()
    print(f"machine: {os.cpu_count()} cores, {load()}")
    if args.reuse and day_files(log_dir):
        print("generation: reused the existing days")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
        started = time.perf_counter()
        total = generate(log_dir, days=args.days, events=args.events, workers=args.workers)
        print(f"generation: {total} events, {args.days} days in"
              f" {time.perf_counter() - started:.1f} s ({load()})")  # fmt: skip
    # An installed package ships compiled bytecode; this repo's venv may not have written it.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "gateway")], check=True)

    if not args.skip_build:
        shutil.rmtree(log_dir / INDEX_DIR, ignore_errors=True)
    started = time.perf_counter()
    report = update(log_dir, workers=args.workers)
    build = time.perf_counter() - started
    days = day_files(log_dir)
    events = sum(1 for _, path in days[-1:] for _ in read_day(path))
    gz = [p for _, p in days if p.name.endswith(".gz")]
    gz_bytes = sum(p.stat().st_size for p in gz)
    plain_bytes = sum(p.stat().st_size for _, p in days if not p.name.endswith(".gz"))
    idx_gz = sum(index_path(log_dir, p).stat().st_size for p in gz)
    idx_all = sum(p.stat().st_size for p in (log_dir / INDEX_DIR).glob("*.idx"))
    what = "index update (--skip-build)" if args.skip_build else "index build"
    print(f"{what}: {len(report.built)} days built, {report.kept} kept, in {build:.1f} s"
          f" ({load()})")  # fmt: skip
    print(f"sizes: compressed days {gz_bytes / 2**20:.1f} MiB ({len(gz)} days),"
          f" their index {idx_gz / 2**20:.1f} MiB = {100 * idx_gz / gz_bytes:.1f} %;"
          f" today's plain file {plain_bytes / 2**20:.1f} MiB ({events} events);"
          f" whole index {idx_all / 2**20:.1f} MiB")  # fmt: skip

    config = log_dir.parent / f"{log_dir.name}-bench.toml"
    config.write_text(CONFIG.format(log_dir=log_dir), encoding="utf-8")
    values = pick_values(log_dir, seed=7)
    files = [str(p) for _, p in days]
    today_index = index_path(log_dir, days[-1][1])
    print(f"{'key':<11} {'value':<36} {'found':>5} {'best s':>6} {'median':>6} {'cpu s':>5}"
          f" {'today unindexed':>15} {'zgrep s':>7} {'ratio':>5}")  # fmt: skip
    for option, value in values.items():
        command = [str(MAILGATE), "-c", str(config), "logs", "search", f"--{option}", value,
                   "--json"]  # fmt: skip
        runs = [timed(command) for _ in range(args.runs)]
        walls = [wall for wall, _, _ in runs]
        found = runs[0][1]
        cpu = min(c for _, _, c in runs)
        saved = today_index.read_bytes()
        today_index.unlink()  # as before any maintenance run today: today's file is scanned
        unindexed = min(timed(command)[0] for _ in range(3))
        today_index.write_bytes(saved)
        zgrep = ratio = "-"
        if not args.no_zgrep:
            wall, _, _ = timed(["zgrep", "-F", "--", value, *files])
            zgrep, ratio = f"{wall:.1f}", f"{wall / min(walls):.0f}x"
        print(f"{option:<11} {value[:36]:<36} {found:>5} {min(walls):>6.3f}"
              f" {statistics.median(walls):>6.3f} {cpu:>5.3f} {unindexed:>15.3f} {zgrep:>7}"
              f" {ratio:>5}  ({load()})", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
