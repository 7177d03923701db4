"""Smoke test: ``bench/run.py`` runs end to end and reports a gateway throughput figure."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# scripts/test installs postfix (smtp-sink, smtp-source): a missing tool fails, never skips.
pytestmark = pytest.mark.integration


def test_bench_quick_reports_gateway_throughput(tmp_path: Path) -> None:
    """A short run without Postfix and the memory check exits 0 with gateway msgs/s > 0."""
    results = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        "--quick",
        "--messages",
        "200",
        "--latency-messages",
        "40",
        "--skip-postfix",
        "--no-big",
        "--timeout",
        "120",
        "--json",
        str(results),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    output = f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, output

    match = re.search(r"^RESULT gateway ok=1 msgs_per_s=([0-9.]+)$", proc.stdout, re.MULTILINE)
    assert match is not None, output
    assert float(match.group(1)) > 0, output

    doc = json.loads(results.read_text(encoding="utf-8"))
    gateway = doc["throughput"]["gateway"]
    assert gateway["ok"] and gateway["msgs_per_s"] > 0
    assert gateway["p50_ms"] is not None and gateway["p50_ms"] > 0
