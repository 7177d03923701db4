"""The running gateway: one Runtime object instead of global state.

``serve`` builds it, passes it to every listener, and on SIGHUP swaps in a new
config (and whatever depends on it) with plain assignments; a bad new config
leaves everything as it was.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path

from gateway.auth_throttle import LoginThrottle
from gateway.config import Config, ConfigError, check_ports_free, listeners, load_config
from gateway.delivery import Router
from gateway.directory.cache import AcceptedRecipients
from gateway.directory.mailboxes import Directory
from gateway.events.writer import EventLog
from gateway.filters import sender_identity  # noqa: F401  (registers the filter)
from gateway.pipeline import REGISTRY, EnabledFilter
from gateway.queue import QueueRunner
from gateway.relay import Relay
from gateway.smtp.data import DataLimits
from gateway.smtp.handler import SessionHandler
from gateway.smtp.inbound import InboundHandler
from gateway.smtp.server import ConnectionLimiter, GatewaySMTP, Limits
from gateway.smtp.submission import SubmissionHandler
from gateway.spool import Spool

log = logging.getLogger("gateway")
# require_tls_for_auth = false is an explicit operator choice (loopback tests); aiosmtpd
# would warn about it on every single connection.
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
logging.getLogger("mail.log").setLevel(logging.ERROR)
SHUTDOWN_GRACE_SECONDS = 30.0


def tls_context(config: Config) -> ssl.SSLContext | None:
    if config.smtp.tls_cert is None or config.smtp.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.smtp.tls_cert, config.smtp.tls_key)
    return context


def limits_of(config: Config) -> Limits:
    smtp = config.smtp
    return Limits(
        data=DataLimits(
            max_message_size=smtp.max_message_size,
            max_line_length=smtp.max_line_length,
            max_header_lines=smtp.max_header_lines,
            max_header_bytes=smtp.max_header_bytes,
        ),
        transaction_timeout=smtp.transaction_timeout,
        max_errors=smtp.max_errors,
    )


def enabled_filters(config: Config) -> tuple[EnabledFilter, ...]:
    """The filters to run, in order: the directory's sender rule first (always on); the
    policy-filter issue adds the configurable ones after it."""
    spec = REGISTRY["sender_identity"]
    return (EnabledFilter(spec, spec.config_type()),)


@dataclass(frozen=True, slots=True)
class Listener:
    key: str
    handler: SessionHandler
    implicit_tls: bool


class Runtime:
    """Config, event log, spool, directory, delivery and the relay built on them."""

    def __init__(self, config: Config) -> None:
        self.log = log
        self.config = config
        self.events = EventLog(config.log.dir)
        self.spool = Spool(config.spool_dir)
        self.directory = Directory.for_data_dir(config.gateway.data_dir)
        self.accepted_recipients = AcceptedRecipients()
        self.tls = tls_context(config)
        self.limits = limits_of(config)
        self.limiter = ConnectionLimiter(
            config.smtp.max_connections, config.smtp.max_connections_per_client
        )
        self.throttle = LoginThrottle(
            config.auth.max_failures_per_address,
            config.auth.max_failures_per_client,
            config.auth.failure_window_seconds,
        )
        self.relay = self._relay(config, Router(config))
        self.queue = QueueRunner(lambda: self.relay, lambda: self.config.queue)

    def _relay(self, config: Config, router: Router) -> Relay:
        return Relay(
            config.gateway.hostname,
            router,
            self.spool,
            self.events,
            enabled_filters(config),
            config.queue.retry_min_seconds,
        )

    async def reload(self) -> bool:
        """SIGHUP: take the new config if it is valid, keep the old one otherwise."""
        try:
            new = load_config(self.config.path)
            new_tls = tls_context(new)
        except (ConfigError, ssl.SSLError, OSError) as exc:
            problems = getattr(exc, "problems", [str(exc)])
            self.events.emit("config_rejected", reason="; ".join(problems))
            log.error("config reload refused, keeping the running config: %s", problems)
            return False
        old = self.config
        before, after = dict(listeners(old)), dict(listeners(new))
        restart_needed = sorted(
            k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
        )
        old_router = self.relay.router
        router = old_router if new.delivery == old.delivery else Router(new)
        if new.gateway.data_dir != old.gateway.data_dir or new.log.dir != old.log.dir:
            restart_needed.append("gateway.data_dir/log.dir")
        self.config = new
        self.tls = new_tls
        self.limits = limits_of(new)
        self.limiter.total = new.smtp.max_connections
        self.limiter.per_client = new.smtp.max_connections_per_client
        self.throttle.per_address = new.auth.max_failures_per_address
        self.throttle.per_client = new.auth.max_failures_per_client
        self.throttle.window = new.auth.failure_window_seconds
        self.relay = self._relay(new, router)
        if router is not old_router:
            await old_router.close()
        reason = None
        if restart_needed:
            reason = f"needs a restart to take effect: {', '.join(restart_needed)}"
        self.events.emit("config_reloaded", reason=reason)
        return True

    def listeners(self) -> list[Listener]:
        found = [
            Listener("smtp.inbound_listen", InboundHandler(self), False),
            Listener("smtp.submission_listen", SubmissionHandler(self, self.throttle), False),
        ]
        if self.config.smtp.submission_tls_listen:
            handler = SubmissionHandler(self, self.throttle)
            found.append(Listener("smtp.submission_tls_listen", handler, True))
        return found

    def session_factory(self, listener: Listener) -> GatewaySMTP:
        """A new protocol object per connection, with the config in force right now."""
        config = self.config
        submission = isinstance(listener.handler, SubmissionHandler)
        return GatewaySMTP(
            listener.handler,
            limits=self.limits,
            limiter=self.limiter,
            hostname=config.gateway.hostname,
            ident="ESMTP mailgate",
            tls_context=None if listener.implicit_tls else self.tls,
            data_size_limit=config.smtp.max_message_size,
            enable_SMTPUTF8=True,
            timeout=config.smtp.idle_timeout,
            auth_required=submission,
            auth_require_tls=submission
            and config.smtp.require_tls_for_auth
            and not listener.implicit_tls,
            auth_exclude_mechanism=None if submission else ["LOGIN", "PLAIN"],
        )

    async def close(self) -> None:
        await self.relay.router.close()
        self.directory.close()
        self.events.close()


async def serve(config: Config) -> None:
    """Run the listeners and the queue until SIGTERM/SIGINT."""
    runtime = Runtime(config)
    loop = asyncio.get_running_loop()
    stale = runtime.spool.recover()
    servers = []
    for listener in runtime.listeners():
        address = dict(listeners(config))[listener.key]
        server = await loop.create_server(
            lambda listener=listener: runtime.session_factory(listener),
            address.host,
            address.port,
            ssl=runtime.tls if listener.implicit_tls else None,
            reuse_address=True,
        )
        servers.append(server)
        log.info("%s listening on %s", listener.key, address)
    runtime.events.emit(
        "gateway_start",
        reason=f"listening on {', '.join(str(a) for _, a in listeners(config))}",
        stale_files_removed=stale or None,
    )
    stop, hangup = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup.set)

    async def reloads() -> None:
        while True:
            await hangup.wait()
            hangup.clear()
            await runtime.reload()

    try:
        async with asyncio.TaskGroup() as group:
            workers = [group.create_task(runtime.queue.run()), group.create_task(reloads())]
            await stop.wait()
            for server in servers:
                server.close()
            await _drain_sessions(runtime)
            for worker in workers:
                worker.cancel()
    finally:
        runtime.events.emit("gateway_stop")
        await runtime.close()


async def _drain_sessions(runtime: Runtime) -> None:
    """Give sessions in flight a moment to finish; the rest get no 250 and retry."""
    deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE_SECONDS
    while runtime.limiter.active and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)


def run(config_path: str) -> int:
    """Entry point of ``mailgate serve``: refuse a bad config, else serve until told to stop."""
    try:
        config = load_config(Path(config_path))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}")
        return 2
    problems = check_ports_free(config)
    if problems:
        for problem in problems:
            print(f"config error: {problem}")
        return 2
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
    return 0
