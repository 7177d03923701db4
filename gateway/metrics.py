"""Prometheus metrics (``[metrics] listen``): what an operator graphs and alerts on.

The counters are derived from the events as they are emitted (one dictionary lookup per
event, on the emitting thread), so the metrics and the log can never tell different
stories and no SMTP code has to know about Prometheus. What the events do not carry
(spool depth, the age of the oldest spooled message, the last finished day's final
chain hash) is read when Prometheus scrapes, on the HTTP server's thread.

Each process builds its own registry: no global state, and tests can start several.
With ``smtp.processes`` > 1 the values live in prometheus-client's multiprocess files
instead (``shared_dir``: one small mmapped file per process and metric kind). Every
process counts its own events there and the primary's endpoint sums them, so the
metrics still tell the log's story. prometheus-client picks that mode when it is first
imported: ``processes.share_metrics`` sets it up before this module is imported.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from gateway.config import ListenAddress
from gateway.events.anchor import DayHash, latest_finished_day

_RULE = re.compile(r"\[([A-Za-z0-9_.]+)\]")
_OUTCOMES = {
    "message_accepted": "accepted",
    "message_rejected": "rejected",
    "message_tempfailed": "tempfailed",
}
_REFUSALS = frozenset(
    {
        "message_rejected",
        "message_tempfailed",
        "mail_rejected",
        "rcpt_rejected",
        "command_rejected",
        "connection_refused",
    }
)
_DELIVERIES = {"delivered": "delivered", "deferred": "deferred", "delivery_failed": "failed"}
# Seconds: a local LMTP answers in milliseconds, a slow smarthost in tens of seconds.
_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The gateway's metrics; :meth:`observe` is an event-log observer.

    ``shared_dir`` (smtp.processes > 1): every process's values, summed from
    prometheus-client's multiprocess files there."""

    def __init__(self, spool_queue: Path, log_dir: Path, shared_dir: Path | None = None) -> None:
        self.shared_dir = shared_dir
        self.registry = CollectorRegistry()
        if shared_dir is not None:
            if not getattr(values.ValueClass, "_multiprocess", False):
                raise RuntimeError(
                    "metrics shared between processes: PROMETHEUS_MULTIPROC_DIR must be set "
                    "before prometheus_client is imported (processes.share_metrics)"
                )
            multiprocess.MultiProcessCollector(self.registry, path=str(shared_dir))
        # Shared, each value is in this process's file and the collector above reads
        # every file: registering the metrics too would count this process twice.
        r = None if shared_dir is not None else self.registry
        self.messages = Counter(
            "mailgate_messages",
            "Messages at the end of DATA, by outcome and listener",
            ["outcome", "listener"],
            registry=r,
        )
        self.refusals = Counter(
            "mailgate_refusals", "Refused connections, commands and messages, by rule", ["rule"],
            registry=r,
        )  # fmt: skip
        self.delivery_seconds = Histogram(
            "mailgate_delivery_seconds",
            "Time one delivery attempt to the next hops took, by result",
            ["result"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.sessions = Gauge(
            "mailgate_sessions_open", "Sessions open now, by listener", ["listener"], registry=r,
            multiprocess_mode="livesum",  # a helper that exited has no session open
        )  # fmt: skip
        self.auth_failures = Counter(
            "mailgate_auth_failures", "Failed logins, by listener", ["listener"], registry=r
        )
        self.events = Counter("mailgate_events", "Events written, by name", ["event"], registry=r)
        self.registry.register(_SpoolCollector(spool_queue))
        self.registry.register(_ChainCollector(log_dir))
        self._server: Any = None

    def observe(self, record: dict[str, Any]) -> None:
        """Count one emitted event."""
        event = record.get("event", "")
        listener = str(record.get("listener") or "none")
        self.events.labels(event).inc()
        if event in _OUTCOMES:
            self.messages.labels(_OUTCOMES[event], listener).inc()
        if event in _REFUSALS:
            found = _RULE.search(str(record.get("reason") or ""))
            self.refusals.labels(found.group(1) if found else "unknown").inc()
        elif event == "session_start":
            self.sessions.labels(listener).inc()
        elif event == "session_end":
            self.sessions.labels(listener).dec()
        elif event == "auth_failure":
            self.auth_failures.labels(listener).inc()
        elif event in _DELIVERIES and isinstance(record.get("duration_s"), int | float):
            self.delivery_seconds.labels(_DELIVERIES[event]).observe(record["duration_s"])

    def process_gone(self, pid: int) -> None:
        """An SMTP helper exited: its open sessions ended with it (its counts stay)."""
        if self.shared_dir is not None:
            multiprocess.mark_process_dead(pid, str(self.shared_dir))

    def start(self, address: ListenAddress) -> None:
        """Serve ``/metrics`` on a daemon thread (prometheus-client's own WSGI server)."""
        self._server, _ = start_http_server(address.port, address.host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _SpoolCollector(Collector):
    """Depth and oldest age of the retry spool, from the files' names and times only."""

    def __init__(self, queue: Path) -> None:
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        depth, oldest = 0, 0.0
        try:
            entries = list(self.queue.glob("*.json"))
        except OSError:
            entries = []
        for entry in entries:
            depth += 1
            try:  # the body is written once, at arrival; the entry at every retry
                arrived = entry.with_suffix(".eml").stat().st_mtime
            except OSError:
                continue
            oldest = max(oldest, now - arrived)
        yield GaugeMetricFamily("mailgate_spool_depth", "Messages waiting for a retry", depth)
        yield GaugeMetricFamily(
            "mailgate_spool_oldest_seconds", "Age of the oldest message in the spool", oldest
        )


class _ChainCollector(Collector):
    """The last finished day's final chain hash: one more copy of it off the box."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._lock = threading.Lock()
        self._cached: tuple[tuple[Any, ...], DayHash | None] | None = None

    def latest(self) -> DayHash | None:
        today = datetime.now(UTC).date()
        try:
            stamp = (today, *sorted((p.name, p.stat().st_mtime) for p in self._days(today)))
        except OSError:
            stamp = (today,)
        with self._lock:
            if self._cached is None or self._cached[0] != stamp:
                self._cached = (stamp, latest_finished_day(self.log_dir, today))
            return self._cached[1]

    def _days(self, today: Any) -> list[Path]:
        from gateway.events.anchor import finished_days

        return [p for _, p in finished_days(self.log_dir, today)[-2:]]

    def collect(self) -> Iterator[InfoMetricFamily]:
        found = self.latest()
        info = InfoMetricFamily(
            "mailgate_log_day_final_hash",
            "Final hash chain value of the last finished day of events (UTC)",
        )
        if found is not None:
            info.add_metric(
                [], {"day": found.day, "seq": str(found.seq), "sha256": found.final_hash}
            )
        yield info
