"""Signing lines (issue 13): 5 KB messages through the whole gateway on submission (AUTH
once per connection, then message after message), each beside the raw primitive measured
in the same run, so the pipeline's overhead shows.

Lines: submission without signing (the path's own cost), DKIM rsa-sha256 and DKIM
ed25519-sha256 (``keys dkim-generate``, ``[signing.dkim]``). Raw: ``cryptography``'s RSA-2048
PKCS#1 v1.5 signature of a digest, and ``gateway.signing.dkim.signature_field`` (dkimpy's
canonicalisation of the 5 KB message plus that signature) on one core.

Target: DKIM rsa-sha256 through the gateway >= 1,000 msgs/s.

Run: ``.venv/bin/python bench/signing.py [--messages N]``; writes
``bench/results/signing.json``. Needs Postfix's smtp-sink as the next hop.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_DIR, SENDER, log, percentile
from bench.load import drive
from bench.messages import probe_message
from bench.systems import Sink, gateway_command, gateway_config, make_gateway

PASSWORD = "Bench-Sign-2026!"
DEFAULT_JSON = BENCH_DIR / "results" / "signing.json"
TARGET_DKIM_RSA = 1000.0


@dataclass
class Line:
    name: str
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    refused: int
    raw_per_s: float | None = None  # the primitive alone, same run


def per_second(action: Callable[[], object], seconds: float = 1.5) -> float:
    """How many times ``action`` runs in a second on this core (after one warm-up)."""
    action()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        action()
        count += 1
    return count / elapsed


def raw_rates() -> dict[str, float]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

    from gateway.signing import dkim

    message = probe_message(5120, 0)[:-3]
    rsa_key = rsa.generate_private_key(65537, 2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    digest = hashlib.sha256(message).digest()
    prehashed = utils.Prehashed(hashes.SHA256())
    return {
        "rsa_sign": per_second(lambda: rsa_key.sign(digest, padding.PKCS1v15(), prehashed)),
        "dkim_rsa": per_second(
            lambda: dkim.signature_field(message, "bench.example", "mail", rsa_key)
        ),
        "dkim_ed25519": per_second(
            lambda: dkim.signature_field(message, "bench.example", "mail", ed_key)
        ),
    }


def run_line(name: str, workdir: Path, messages: int, connections: int, setup: list[list[str]],
             extra_config: str) -> Line:  # fmt: skip
    sink = Sink(workdir)
    sink.start()
    server = make_gateway(workdir, sink.port)
    config = gateway_config(server)
    mailgate = [*gateway_command(), "-c", str(config)]
    add = ["mailbox", "add", SENDER, "--name", "Bench Sender", "--password", PASSWORD]
    subprocess.run([*mailgate, *add], check=True, capture_output=True, timeout=60)
    with config.open("a", encoding="utf-8") as out:
        # 16 connections logging in at once as one mailbox are not a guessing attack here.
        out.write("\n[auth]\nmax_failures_per_address = 1000\nmax_failures_per_client = 1000\n")
        # One login sends thousands of messages an hour: the bench, not a compromise.
        out.write("\n[filters.rate_limit]\nenabled = false\n")
        out.write(extra_config)
    for command in setup:
        subprocess.run([*mailgate, *command], check=True, capture_output=True, timeout=60)
    listen = tomllib.loads(config.read_text(encoding="utf-8"))["smtp"]["submission_listen"]
    submission = int(listen.rsplit(":", 1)[1])
    try:
        server.start()
        login = (SENDER, PASSWORD)
        drive(submission, 1, 20, probe_message_for, 120, login=login)  # the login cache warm
        drive(submission, connections, min(200, messages), probe_message_for, 120, login=login)
        result = drive(submission, connections, messages, probe_message_for, 600, login=login)
    finally:
        server.stop()
        sink.stop()
    lat = result.latencies_ms
    return Line(
        name,
        result.accepted / result.wall_s,
        percentile(lat, 50) if lat else 0.0,
        percentile(lat, 99) if lat else 0.0,
        result.refused,
    )


def probe_message_for(index: int) -> bytes:
    return probe_message(5120, index)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    raw = raw_rates()
    log(f"raw: {', '.join(f'{k} {v:,.0f}/s' for k, v in raw.items())}")
    dkim_section = '\n[signing.dkim]\nselector = "mail"\n'
    plans = [
        ("submission, no signing", [], "", None),
        ("DKIM rsa-sha256", [["keys", "dkim-generate", "bench.example"]], dkim_section,
         raw["dkim_rsa"]),
        ("DKIM ed25519-sha256",
         [["keys", "dkim-generate", "bench.example", "--algorithm", "ed25519"]], dkim_section,
         raw["dkim_ed25519"]),
    ]  # fmt: skip
    lines = []
    for name, setup, extra, primitive in plans:
        with tempfile.TemporaryDirectory(prefix="bench-signing-") as folder:
            log(f"{name} ...")
            line = run_line(name, Path(folder), args.messages, args.connections, setup, extra)
            line.raw_per_s = primitive
            lines.append(line)
    print(f"\n{'line':28} {'msgs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'refused':>8} {'raw/s':>9}")
    for line in lines:
        raw_text = f"{line.raw_per_s:9,.0f}" if line.raw_per_s else f"{'':>9}"
        print(f"{line.name:28} {line.msgs_per_s:9,.0f} {line.p50_ms:8.1f} {line.p99_ms:8.1f}"
              f" {line.refused:8} {raw_text}")  # fmt: skip
    print(f"raw cryptography RSA-2048 sign: {raw['rsa_sign']:,.0f}/s")
    rsa_line = next(line for line in lines if line.name == "DKIM rsa-sha256")
    verdict = "PASS" if rsa_line.msgs_per_s >= TARGET_DKIM_RSA else "FAIL"
    print(f"target DKIM rsa-sha256 >= {TARGET_DKIM_RSA:,.0f} msgs/s: {verdict}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"raw": raw, "lines": [asdict(x) for x in lines]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
