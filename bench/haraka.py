"""Haraka, the Node.js SMTP server, installed from the npm registry and set up as a relay.

Why a module of its own: unlike the other systems it has to be fetched first (``npm
install`` into ``bench/.cache/haraka``, once; later runs reuse it) and configured from
Haraka's own defaults (``haraka -i DIR``), and when Node, npm or the registry are missing the
benchmark must go on without it and say why (``Skipped``), not fail.

What the relay does: ``rcpt_to.in_host_list`` accepts recipients in ``bench.example`` and
``queue/smtp_forward`` forwards each message to the sink in the queue hook, answering the
client's end of DATA with the sink's verdict. No queue on disk, no other plugins (no TLS,
SPF, DKIM, DNS lists, spam or virus checks); Haraka spools a message to a temp file only
above ``spool_after`` (default never). One Node process unless ``--haraka-nodes`` asks for
a cluster.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.common import HOST, BenchError, Skipped, cache_dir, free_port, log, tail

HARAKA_VERSION = "3.3.4"  # checked to work here on Node 20; pinned so runs stay comparable


def haraka_bin(version: str = HARAKA_VERSION) -> Path:
    """Path of the ``haraka`` executable, installing it from npm on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise Skipped("node and npm are not both on PATH: Haraka not run")
    prefix = cache_dir() / "haraka"
    binary = prefix / "node_modules" / ".bin" / "haraka"
    pkg = prefix / "node_modules" / "haraka" / "package.json"
    if binary.exists() and f'"version": "{version}"' in pkg.read_text(encoding="utf-8"):
        return binary
    prefix.mkdir(parents=True, exist_ok=True)
    log(f"haraka: npm install haraka@{version} into {prefix}")
    logfile = prefix / "npm-install.log"
    try:
        with open(logfile, "wb") as out:
            res = subprocess.run(
                [npm, "install", "--prefix", str(prefix), f"haraka@{version}",
                 "--no-audit", "--no-fund", "--loglevel=error"],
                stdout=out, stderr=subprocess.STDOUT, timeout=600, check=False,
            )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise Skipped("npm install haraka did not finish within 600s") from exc
    if res.returncode != 0 or not binary.exists():
        raise Skipped(
            f"npm install haraka@{version} failed ({res.returncode}): {tail(logfile, 400)}"
        )
    return binary


def prepare_haraka(workdir: Path, sink_port: int, nodes: int = 1) -> tuple[list[str], int]:
    """Configure a Haraka instance relaying ``bench.example`` to the sink: (command, port)."""
    binary = haraka_bin()
    base = workdir / "haraka-instance"
    if base.exists():
        shutil.rmtree(base)
    res = subprocess.run(
        [str(binary), "-i", str(base)], capture_output=True, text=True, timeout=60, check=False
    )
    if res.returncode != 0:
        raise Skipped(f"haraka -i failed ({res.returncode}): {(res.stdout + res.stderr)[-400:]}")
    port = free_port()
    conf = base / "config"
    smtp_ini = f"listen={HOST}:{port}\n"
    if nodes > 1:
        smtp_ini += f"nodes={nodes}\n"
    files = {
        "smtp.ini": smtp_ini,
        "plugins": "rcpt_to.in_host_list\nqueue/smtp_forward\n",
        "host_list": "bench.example\n",
        "smtp_forward.ini": f"host={HOST}\nport={sink_port}\nenable_tls=false\n",
        "log.ini": "[main]\nlevel=warn\n",
        "me": "haraka-bench.local\n",
    }
    for name, text in files.items():
        (conf / name).write_text(text, encoding="ascii")
    if not (conf / "plugins").exists():
        raise BenchError("haraka -i did not create a config directory")
    return [str(binary), "-c", str(base)], port
