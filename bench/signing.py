"""Signing lines (issue 13): 5 KB messages through the whole gateway on submission (AUTH
once per connection, then message after message), each beside the raw primitive measured
in the same run, so the pipeline's overhead shows.

Lines: submission without signing (the path's own cost), DKIM rsa-sha256 and DKIM
ed25519-sha256 (``keys dkim-generate``, ``[signing.dkim]``), S/MIME signing (the sender's
RSA-2048 key and certificate imported), S/MIME encryption (``[encrypt]`` subject, the
recipient's certificate imported) and PGP sign+encrypt (the sender's OpenPGP secret key,
the recipient's public key). Raw, on one core in the same run: ``cryptography``'s RSA-2048
PKCS#1 v1.5 signature of a digest; ``gateway.signing.dkim.signature_field`` (dkimpy's
canonicalisation plus that signature); cryptography's pkcs7 detached signature and
AES-256 envelope of the message; python-gnupg's sign+encrypt with the agent warm.

Targets: DKIM rsa-sha256 through the gateway >= 1,000 msgs/s; S/MIME sign >= 70% of the raw
pkcs7 call's rate; PGP sign+encrypt >= 100 msgs/s.

Run: ``.venv/bin/python bench/signing.py [--messages N] [--processes N]`` (the gateway's
``smtp.processes``); writes ``bench/results/signing.json``. Needs Postfix's smtp-sink as
the next hop.
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
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_DIR, SENDER, log, percentile
from bench.load import drive
from bench.messages import probe_message
from bench.systems import (
    Sink,
    gateway_command,
    gateway_config,
    make_gateway,
    watching_split,
)

PASSWORD = "Bench-Sign-2026!"
DEFAULT_JSON = BENCH_DIR / "results" / "signing.json"
TARGET_DKIM_RSA = 1000.0
TARGET_SMIME_SIGN_SHARE = 0.70
TARGET_PGP = 100.0
RCPT_ADDRESS = "rcpt@bench.example"


@dataclass
class Line:
    name: str
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    refused: int
    raw_per_s: float | None = None  # the primitive alone, same run
    split: list[int] | None = None  # connections per SMTP process (smtp.processes > 1)


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


class Material:
    """Keys and certificates for the S/MIME and PGP lines, made once per run."""

    def __init__(self, folder: Path) -> None:
        from tests.unit.smime_pki import make_ca, make_leaf

        ca = make_ca("Bench CA")
        self.sender = make_leaf(ca, SENDER)
        self.rcpt = make_leaf(ca, RCPT_ADDRESS)
        self.sender_pem = folder / "sender.pem"
        self.sender_pem.write_bytes(self.sender.key_pem() + self.sender.cert_pem())
        self.rcpt_pem = folder / "rcpt.pem"
        self.rcpt_pem.write_bytes(self.rcpt.cert_pem())
        self.gnupg = folder / "gnupg"
        self.gnupg.mkdir(mode=0o700)
        self.sender_asc = folder / "sender.asc"
        self.rcpt_asc = folder / "rcpt.asc"
        for address, path, secret in ((SENDER, self.sender_asc, True),
                                      (RCPT_ADDRESS, self.rcpt_asc, False)):  # fmt: skip
            self._gpg("--passphrase", "", "--quick-gen-key", f"<{address}>", "future-default",
                      "default", "1y")  # fmt: skip
            what = "--export-secret-keys" if secret else "--export"
            path.write_bytes(self._gpg("--passphrase", "", "--armor", what, address))

    def _gpg(self, *args: str) -> bytes:
        command = ["gpg", "--homedir", str(self.gnupg), "--batch", "--pinentry-mode", "loopback"]
        return subprocess.run(
            [*command, *args], check=True, capture_output=True, timeout=120
        ).stdout

    def raw_smime(self) -> dict[str, float]:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.ciphers import algorithms
        from cryptography.hazmat.primitives.serialization import pkcs7

        data = probe_message(5120, 0)[:-3]
        options = [pkcs7.PKCS7Options.DetachedSignature]
        key, cert = self.sender.key, self.sender.cert

        def sign() -> bytes:
            return (
                pkcs7.PKCS7SignatureBuilder().set_data(data)
                .add_signer(cert, key, hashes.SHA256())
                .sign(serialization.Encoding.SMIME, options)
            )  # fmt: skip

        def encrypt() -> bytes:
            return (
                pkcs7.PKCS7EnvelopeBuilder().set_data(data).add_recipient(self.rcpt.cert)
                .set_content_encryption_algorithm(algorithms.AES256)
                .encrypt(serialization.Encoding.SMIME, [])
            )  # fmt: skip

        return {"smime_sign": per_second(sign), "smime_encrypt": per_second(encrypt)}

    def raw_pgp(self) -> float:
        import gnupg

        gpg = gnupg.GPG(gnupghome=str(self.gnupg), options=["--pinentry-mode", "loopback"])
        data = probe_message(5120, 0)[:-3]
        return per_second(
            lambda: gpg.encrypt(
                data, [RCPT_ADDRESS], sign=SENDER, always_trust=True, armor=True, passphrase=""
            ),
            seconds=3.0,
        )


def encrypted_probe(index: int) -> bytes:
    return probe_message(5120, index).replace(b"Subject: ", b"Subject: [encrypt] ", 1)


def run_line(name: str, workdir: Path, messages: int, connections: int, setup: list[list[str]],
             extra_config: str, payload: Callable[[int], bytes] | None = None,
             processes: int = 1) -> Line:  # fmt: skip
    sink = Sink(workdir)
    sink.start()
    server = make_gateway(workdir, sink.port, processes=processes)
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
        server.start()  # with its helpers, when processes > 1
        login = (SENDER, PASSWORD)
        payload = payload or probe_message_for
        drive(submission, 1, 20, payload, 120, login=login)  # the login cache warm
        drive(submission, connections, min(200, messages), payload, 120, login=login)
        watch = watching_split(submission, server.pids()) if processes > 1 else nullcontext([])
        with watch as split:
            result = drive(submission, connections, messages, payload, 600, login=login)
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
        split=split if processes > 1 else None,
    )


def probe_message_for(index: int) -> bytes:
    return probe_message(5120, index)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1, help="smtp.processes of the gateway")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    keep = tempfile.TemporaryDirectory(prefix="bench-signing-keys-")
    material = Material(Path(keep.name))
    raw = raw_rates() | material.raw_smime() | {"pgp_sign_encrypt": material.raw_pgp()}
    log(f"raw: {', '.join(f'{k} {v:,.0f}/s' for k, v in raw.items())}")
    dkim_section = '\n[signing.dkim]\nselector = "mail"\n'
    m = material
    plans = [
        ("submission, no signing", [], "", None, None),
        ("DKIM rsa-sha256", [["keys", "dkim-generate", "bench.example"]], dkim_section,
         raw["dkim_rsa"], None),
        ("DKIM ed25519-sha256",
         [["keys", "dkim-generate", "bench.example", "--algorithm", "ed25519"]], dkim_section,
         raw["dkim_ed25519"], None),
        ("S/MIME sign", [["keys", "import", SENDER, str(m.sender_pem)]], "",
         raw["smime_sign"], None),
        ("S/MIME encrypt", [["keys", "import", RCPT_ADDRESS, str(m.rcpt_pem)]], "",
         raw["smime_encrypt"], encrypted_probe),
        ("PGP sign+encrypt", [["keys", "import", SENDER, str(m.sender_asc)],
                              ["keys", "import", RCPT_ADDRESS, str(m.rcpt_asc)]], "",
         raw["pgp_sign_encrypt"], encrypted_probe),
    ]  # fmt: skip
    lines = []
    for name, setup, extra, primitive, payload in plans:
        with tempfile.TemporaryDirectory(prefix="bench-signing-") as folder:
            log(f"{name} ...")
            count = args.messages if "PGP" not in name else max(200, args.messages // 8)
            line = run_line(name, Path(folder), count, args.connections, setup, extra, payload,
                            args.processes)  # fmt: skip
            line.raw_per_s = primitive
            lines.append(line)
    keep.cleanup()
    print(f"\n{'line':28} {'msgs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'refused':>8} {'raw/s':>9}"
          + ("  connections per process" if args.processes > 1 else ""))  # fmt: skip
    for line in lines:
        raw_text = f"{line.raw_per_s:9,.0f}" if line.raw_per_s else f"{'':>9}"
        split = "  " + "/".join(map(str, line.split)) if line.split else ""
        print(f"{line.name:28} {line.msgs_per_s:9,.0f} {line.p50_ms:8.1f} {line.p99_ms:8.1f}"
              f" {line.refused:8} {raw_text}{split}")  # fmt: skip
    print(f"raw cryptography RSA-2048 sign: {raw['rsa_sign']:,.0f}/s")
    by_name = {line.name: line for line in lines}
    rsa_rate = by_name["DKIM rsa-sha256"].msgs_per_s
    share = by_name["S/MIME sign"].msgs_per_s / raw["smime_sign"]
    pgp_rate = by_name["PGP sign+encrypt"].msgs_per_s
    for text, ok in (
        (f"DKIM rsa-sha256 >= {TARGET_DKIM_RSA:,.0f} msgs/s: {rsa_rate:,.0f}",
         rsa_rate >= TARGET_DKIM_RSA),
        (f"S/MIME sign >= {TARGET_SMIME_SIGN_SHARE:.0%} of raw pkcs7: {share:.0%}",
         share >= TARGET_SMIME_SIGN_SHARE),
        (f"PGP sign+encrypt >= {TARGET_PGP:,.0f} msgs/s: {pgp_rate:,.0f}", pgp_rate >= TARGET_PGP),
    ):  # fmt: skip
        print(f"target {text}: {'PASS' if ok else 'FAIL'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"raw": raw, "lines": [asdict(x) for x in lines]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
