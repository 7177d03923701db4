"""Anchoring each finished day's final hash off the box.

A hash chain on the same disk proves nothing against someone who can rewrite the whole
disk: they recompute it. So the final hash of every finished day also leaves the machine:

- an RFC 3161 time-stamping authority (``log.timestamp_authority``) signs it; the token
  is kept beside the day as ``events-DAY.tsr`` and ``logs verify`` checks it against the
  day's final hash and the authority's CA (``log.timestamp_ca_file``);
- syslog (``log.syslog``), for sites that ship logs to a central collector;
- the metrics endpoint (:func:`latest_finished_day`).

Tokens are made and checked with the ``openssl ts`` command (OpenSSL 3, a Debian
package the gateway already needs): it is the reference implementation of RFC 3161 and
ESS signing certificates, maintained with OpenSSL itself, where the Python packages for
it (rfc3161ng, asn1crypto-based code) are small and rarely released. Arguments are
passed as lists, never through a shell.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import socket
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from gateway.config import LogSection, SyslogTarget
from gateway.events.chain import last_link_of_day
from gateway.events.search import day_files

TOKEN_SUFFIX = ".tsr"
_OPENSSL_TIMEOUT = 30
_TIME_LINE = re.compile(r"^Time stamp: (.+)$", re.MULTILINE)


class AnchorError(Exception):
    """A time stamp could not be obtained or checked; the message says why, one line."""


@dataclass(frozen=True, slots=True)
class DayHash:
    day: str
    seq: int
    final_hash: str


def token_path(log_dir: Path, day: str) -> Path:
    return log_dir / f"events-{day}{TOKEN_SUFFIX}"


def finished_days(log_dir: Path, today: date) -> list[tuple[date, Path]]:
    return [(d, p) for d, p in day_files(log_dir) if d < today]


def day_hash(day: date, path: Path) -> DayHash | None:
    link = last_link_of_day(path)
    if link is None:
        return None
    return DayHash(day.isoformat(), link.seq, link.chain)


def latest_finished_day(log_dir: Path, today: date) -> DayHash | None:
    """The newest day before ``today`` with a chain, and its final hash (for metrics)."""
    for day, path in reversed(finished_days(log_dir, today)):
        found = day_hash(day, path)
        if found is not None:
            return found
    return None


def request_token(
    authority: str, digest_hex: str, timeout: float, ca_file: Path | None = None
) -> bytes:
    """Ask the authority to time-stamp ``digest_hex`` (sha256); the DER reply, checked."""
    query = _openssl(["ts", "-query", "-digest", digest_hex, "-sha256", "-cert"], b"")
    request = urllib.request.Request(
        authority,
        data=query,
        headers={"Content-Type": "application/timestamp-query"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = response.read(1 << 20)
    except OSError as exc:
        raise AnchorError(f"{authority}: {exc}") from None
    if ca_file is not None:
        check_token(reply, digest_hex, ca_file)
    return reply


def check_token(token: bytes, digest_hex: str, ca_file: Path) -> str:
    """Verify a token against the digest and the CA; returns the time it states."""
    with tempfile.NamedTemporaryFile(suffix=TOKEN_SUFFIX) as handle:
        handle.write(token)
        handle.flush()
        _openssl(
            ["ts", "-verify", "-digest", digest_hex, "-in", handle.name, "-CAfile", str(ca_file)],
            b"",
        )
        text = _openssl(["ts", "-reply", "-in", handle.name, "-text"], b"").decode(
            "utf-8", "replace"
        )
    found = _TIME_LINE.search(text)
    return found.group(1).strip() if found else "unknown time"


def anchor_days(config: LogSection, today: date) -> list[tuple[DayHash, str]]:
    """Time-stamp every finished day that has no token yet; returns (day, what happened).

    One authority failure does not stop the others: each day says its own outcome, and
    the next run tries the missing ones again.
    """
    done: list[tuple[DayHash, str]] = []
    if not config.timestamp_authority:
        return done
    for day, path in finished_days(config.dir, today):
        target = token_path(config.dir, day.isoformat())
        if target.exists():
            continue
        found = day_hash(day, path)
        if found is None:
            continue
        try:
            token = request_token(
                config.timestamp_authority,
                found.final_hash,
                config.timestamp_timeout,
                config.timestamp_ca_file,
            )
        except AnchorError as exc:
            done.append((found, f"failed: {exc}"))
            continue
        partial = target.with_name(target.name + ".tmp")
        partial.write_bytes(token)
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        partial.replace(target)
        done.append((found, "time-stamped"))
    return done


def send_to_syslog(target: SyslogTarget, lines: list[str]) -> None:
    """Each line as one syslog message (facility daemon, ident ``mailgate``)."""
    if not lines:
        return
    handler = syslog_handler(target)
    try:
        for line in lines:
            handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
    finally:
        handler.close()


def syslog_handler(target: SyslogTarget) -> logging.handlers.SysLogHandler:
    facility = logging.handlers.SysLogHandler.LOG_DAEMON
    if target.transport == "unix":
        handler = logging.handlers.SysLogHandler(address=target.address, facility=facility)
    else:
        kind = socket.SOCK_DGRAM if target.transport == "udp" else socket.SOCK_STREAM
        handler = logging.handlers.SysLogHandler(
            address=(target.address, target.port), facility=facility, socktype=kind
        )
    handler.ident = "mailgate: "
    return handler


def day_hash_line(found: DayHash) -> str:
    """What syslog receives for a day: greppable, one line, no secrets."""
    return f"log_day_final_hash day={found.day} seq={found.seq} sha256={found.final_hash}"


def _openssl(args: list[str], data: bytes) -> bytes:
    try:
        done = subprocess.run(
            ["openssl", *args],
            input=data,
            capture_output=True,
            timeout=_OPENSSL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AnchorError(f"openssl {args[0]} {args[1]}: {exc}") from None
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise AnchorError(f"openssl {' '.join(args[:2])}: {why[-1] if why else 'failed'}")
    return done.stdout
