"""IMAP proxy figures: a 10 MB FETCH through the proxy against Dovecot directly, and logins
per second through the proxy, in the same run.

A private Dovecot (the tests' ``PrivateDovecot``: master user, trusted loopback) holds
one ~10 MB message; the same imaplib client fetches it ``--fetches`` times straight from
Dovecot and through ``mailgate serve``'s proxy, alternating, and the ratio of the median
rates is the target (>= 0.9 of direct). Logins: ``--clients`` threads log in and out
``--logins`` times each through the proxy; the first login of each user is a cold argon2
verification, the rest hit the login cache, and both rates are printed.

Run: ``.venv/bin/python bench/imap.py [--fetches N] [--clients N] [--logins N]``.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_DIR, HOST, free_port, log
from bench.memory import tree_cpu_seconds
from bench.systems import ProcessServer, Sink, gateway_command, gateway_config, make_gateway
from tests.integration.dovecot import PrivateDovecot

MIB = 1024 * 1024
USERS = {f"user{n:02d}@bench.example": f"Kx7-{n:02d}-Lop-Vuot-2026" for n in range(16)}
READER = "user00@bench.example"
DEFAULT_JSON = BENCH_DIR / "results" / "imap.json"
FETCHES_PER_SAMPLE = 10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fetches", type=int, default=6, help="FETCHes per path (median kept)")
    p.add_argument("--clients", type=int, default=16, help="parallel login threads")
    p.add_argument("--logins", type=int, default=20, help="logins per thread")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    return p.parse_args(argv)


def big_message() -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@other.org", READER, "10 MB"
    message.set_content("Kèm theo bản đồ.")
    message.add_attachment(
        os.urandom(7 * MIB + MIB // 2), maintype="application", subtype="octet-stream",
        filename="map.bin",
    )  # fmt: skip
    return message.as_bytes()


def fetch_rate(port: int, user: str, password: str) -> tuple[float, int]:
    """MiB/s of FETCHing the newest message FETCHES_PER_SAMPLE times in one session
    (login and SELECT not timed)."""
    with imaplib.IMAP4(HOST, port, timeout=60) as client:
        client.login(user, password)
        _, data = client.select("INBOX", readonly=True)
        start = time.perf_counter()
        for _ in range(FETCHES_PER_SAMPLE):  # one FETCH takes milliseconds: too short alone
            _, parts = client.fetch(data[0], "(BODY.PEEK[])")
        took = time.perf_counter() - start
        client.logout()
    size = len(parts[0][1])
    return size * FETCHES_PER_SAMPLE / MIB / took, size


def login_storm(port: int, clients: int, rounds: int) -> tuple[float, float]:
    """(cold logins/s for the first round, warm logins/s for the rest)."""
    users = list(USERS.items())[:clients]
    barrier = threading.Barrier(len(users))
    times: list[list[float]] = [[] for _ in users]

    def work(index: int, user: str, password: str) -> None:
        barrier.wait()
        for _ in range(rounds):
            start = time.perf_counter()
            with imaplib.IMAP4(HOST, port, timeout=60) as client:
                client.login(user, password)
                client.logout()
            times[index].append(time.perf_counter() - start)

    threads = [threading.Thread(target=work, args=(i, u, p)) for i, (u, p) in enumerate(users)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cold_wall = max(t[0] for t in times)
    warm = sum(len(t) - 1 for t in times)
    return len(users) / cold_wall, warm / max(wall - cold_wall, 1e-9)


def start_proxy(workdir: Path, dovecot: PrivateDovecot, sink: Sink) -> tuple[ProcessServer, int]:
    gateway = make_gateway(workdir, sink.port)
    config = gateway_config(gateway)
    secret = workdir / "imap-master"
    secret.write_text(dovecot.master_password + "\n", encoding="utf-8")
    secret.chmod(0o600)
    port = free_port()
    config.write_text(
        config.read_text(encoding="utf-8")
        + f'\n[imap]\nlisten = "{HOST}:{port}"\nupstream = "{HOST}:{dovecot.imap_port}"\n'
        f'upstream_master_user = "{dovecot.master_user}"\n'
        f'upstream_master_password_file = "{secret}"\nrequire_tls_for_auth = false\n'
        # the storm comes from one address: let its logins in flight through the throttle
        "\n[auth]\nmax_failures_per_client = 1000\n",
        encoding="utf-8",
    )
    for user, password in USERS.items():
        subprocess.run(
            [*gateway_command(), "-c", str(config), "mailbox", "add", user, "--name", user,
             "--password", password],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    gateway.start()
    return gateway, port


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-imap-"))
    (tmp / "dovecot").mkdir()
    with PrivateDovecot(tmp / "dovecot", USERS) as dovecot:
        with smtplib.LMTP(HOST, dovecot.lmtp_port) as lmtp:
            lmtp.sendmail("a@other.org", [READER], big_message())
        sink = Sink(tmp)
        sink.start()
        gateway, port = start_proxy(tmp / "gateway", dovecot, sink)
        try:
            direct, proxied = [], []
            size = 0
            proxy_cpu = 0.0
            for _ in range(args.fetches):
                rate, size = fetch_rate(dovecot.imap_port, READER, USERS[READER])
                direct.append(rate)
                cpu0 = tree_cpu_seconds(gateway.pids())
                proxied.append(fetch_rate(port, READER, USERS[READER])[0])
                proxy_cpu += tree_cpu_seconds(gateway.pids()) - cpu0
            cold, warm = login_storm(port, args.clients, args.logins)
        finally:
            gateway.stop()
            sink.stop()
    ratio = statistics.median(proxied) / statistics.median(direct)
    doc = {
        "message_bytes": size,
        "fetch_direct_mib_s": statistics.median(direct),
        "fetch_proxied_mib_s": statistics.median(proxied),
        "fetch_ratio": ratio,
        "proxy_cpu_ms_per_mib": proxy_cpu * 1000 / (args.fetches * FETCHES_PER_SAMPLE * size / MIB),
        "fetch_target_met": ratio >= 0.9,
        "cold_logins_per_s": cold,
        "warm_logins_per_s": warm,
        "clients": args.clients,
    }
    log(f"FETCH of {size / MIB:.1f} MiB: direct {doc['fetch_direct_mib_s']:.0f} MiB/s,"
        f" proxied {doc['fetch_proxied_mib_s']:.0f} MiB/s, ratio {ratio:.2f}"
        f" ({'PASS' if ratio >= 0.9 else 'FAIL'} >= 0.9); the proxy's CPU:"
        f" {doc['proxy_cpu_ms_per_mib']:.2f} ms per MiB")  # fmt: skip
    log(f"logins through the proxy, {args.clients} clients: {cold:.1f}/s cold (argon2),"
        f" {warm:.0f}/s warm (login cache)")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
