"""The running gateway: one Runtime object instead of global state.

``serve`` builds it, passes it to every listener, and on SIGHUP swaps in a new
config (and whatever depends on it) with plain assignments; a bad new config,
or any error while taking it, leaves everything as it was.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import warnings
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.auth import Authenticator, hash_workers
from gateway.auth_throttle import LoginThrottle
from gateway.config import Config, ConfigError, check_ports_free, listeners, load_config
from gateway.data_lock import DataLock, DataLockError
from gateway.delivery import Router
from gateway.directory.cache import AcceptedRecipients
from gateway.directory.mailboxes import Directory, DirectoryError
from gateway.directory.standing import SenderStandings
from gateway.events.writer import EventLog
from gateway.imap.server import ImapProxy
from gateway.mime.model import Inspection, Scan
from gateway.mime.pool import Inspector
from gateway.pipeline import EnabledFilter
from gateway.processes import (
    HelperMark,
    SmtpHelpers,
    helper_mark,
    per_process,
    report_ready,
    share_metrics,
)
from gateway.queue import QueueRunner
from gateway.relay import Relay, RelaySettings
from gateway.signing.certs import load_certificates, load_crls
from gateway.signing.keys import KeyStore
from gateway.signing.protect import Policy
from gateway.signing.stage import SigningStage, StageSettings
from gateway.smtp import replies
from gateway.smtp.balance import BalancedAcceptor, Board
from gateway.smtp.data import DataLimits
from gateway.smtp.handler import SessionHandler
from gateway.smtp.inbound import InboundHandler
from gateway.smtp.replies import Reply
from gateway.smtp.server import ConnectionLimiter, GatewaySMTP, Limits
from gateway.smtp.submission import SubmissionHandler
from gateway.smtp.tls_accept import ImplicitTLSAcceptor
from gateway.spool import Body, Spool, tag_queue_ids_with_pid
from gateway.tls import server_context
from gateway.web.server import PasswordPage

if TYPE_CHECKING:  # imported when serve starts: see processes.share_metrics
    from gateway.metrics import Metrics

log = logging.getLogger("gateway")
# require_tls_for_auth = false is an explicit operator choice (loopback tests); aiosmtpd
# would warn about it on every single connection.
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
logging.getLogger("mail.log").setLevel(logging.ERROR)
SHUTDOWN_GRACE_SECONDS = 30.0
HELPER_STOP_MARGIN_SECONDS = 5.0  # SMTP helpers get SIGTERM a moment after the primary


def tls_context(config: Config) -> ssl.SSLContext | None:
    if config.smtp.tls_cert is None or config.smtp.tls_key is None:
        return None
    return server_context(config.smtp.tls_cert, config.smtp.tls_key)


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
    """The filters to run, in order (``[filters]``; gateway/filter_config.py)."""
    return config.filters.enabled


def stage_settings(config: Config) -> StageSettings:
    """The signing stage's view of the config ([signing], gateway.hostname/domains)."""
    signing = config.signing
    resolver = signing.dns_resolver
    return StageSettings(
        hostname=config.gateway.hostname,
        domains=config.gateway.domains,
        dkim_selector=signing.dkim.selector if signing.dkim else None,
        verify_inbound=signing.verify_inbound,
        dns_timeout=signing.dns_timeout,
        dns_resolver=(resolver.host, resolver.port) if resolver else None,
        policy=Policy(
            signing.sign_outbound,
            signing.encrypt_subject_tags,
            signing.missing_recipient_key,
            signing.preference,
        ),
        decrypt_inbound=signing.decrypt_inbound,
        trusted=load_certificates(signing.smime_ca_file),
        crls=load_crls(signing.crl_file),
    )


def relay_settings(config: Config) -> RelaySettings:
    return RelaySettings(enabled_filters(config), config.queue.retry_min_seconds)


@dataclass(frozen=True, slots=True)
class Listener:
    key: str  # the config key of its address
    name: str  # as events show it
    handler: SessionHandler
    implicit_tls: bool
    limiter: ConnectionLimiter


class Runtime:
    """Config, event log, spool, directory, delivery and the relay built on them.

    It is what the SMTP handlers see as ``SmtpServices`` (gateway/smtp/services.py).
    """

    def __init__(
        self, config: Config, directory: Directory | None = None, processes: int | None = None
    ) -> None:
        self.log = log
        # Fixed at start: the number of processes serving SMTP (smtp.processes, or what
        # the primary told a helper); each enforces its share of the limits kept in
        # memory (gateway/processes.py).
        self.processes = processes or config.smtp.processes
        config = per_process(config, self.processes)
        self.config = config
        self.events = EventLog(config.log.dir)
        self.spool = Spool(config.spool_dir)
        self.directory = directory or Directory.for_data_dir(config.gateway.data_dir)
        self.accepted_recipients = AcceptedRecipients(version=self.directory.data_version)
        self.sender_standings = SenderStandings(self.directory)
        self.tls = tls_context(config)
        self.limits = limits_of(config)
        self.connections = ConnectionLimiter(
            config.smtp.max_connections,
            config.smtp.max_connections_per_client,
            total_key="smtp.max_connections",
        )
        self.throttle = LoginThrottle(
            config.auth.max_failures_per_address,
            config.auth.max_failures_per_client,
            config.auth.failure_window_seconds,
        )
        self.authenticator = Authenticator(
            self.directory, self.throttle, config.auth, config.password_url
        )
        self.directory.hasher = self.authenticator.hasher  # new and reset passwords alike
        self.inspector = Inspector()  # the one MIME parse, on threads and worker processes
        self.keys = KeyStore(config.gateway.data_dir)
        # The primary's /metrics (``_start_observers``); imported late on purpose.
        self.metrics: Metrics | None = None
        self.keys.gpg_timeout = config.signing.gpg_timeout
        self.relay = Relay(
            config.gateway.hostname,
            Router(config),
            self.spool,
            self.events,
            enabled_filters(config),
            config.queue.retry_min_seconds,
            SigningStage(self.keys, self.spool, stage_settings(config)),
        )
        self.queue = QueueRunner(lambda: self.relay, lambda: self.config.queue)
        self._in_flight: set[asyncio.Task[Reply]] = set()
        self._sessions: weakref.WeakSet[GatewaySMTP] = weakref.WeakSet()
        self._retired_routers: set[asyncio.Task[Any]] = set()
        self._listeners = self._make_listeners()

    async def inspect(self, body: Body, scans: tuple[Scan, ...] = ()) -> Inspection:
        return await self.inspector.inspect(body, scans=scans)

    # -- relays that outlive their session ---------------------------------------------

    def track(self, task: asyncio.Task[Reply]) -> None:
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def finish_relays(self, deadline: float) -> None:
        """Let relays in flight end (they have the delivery timeout); past ``deadline``
        cancel them, and each records ``relay_cancelled``: its sender got no 250."""
        loop = asyncio.get_running_loop()
        while self._in_flight and loop.time() < deadline:
            await asyncio.wait(set(self._in_flight), timeout=max(deadline - loop.time(), 0))
        for task in list(self._in_flight):
            task.cancel()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=5)

    # -- SIGHUP ----------------------------------------------------------------------------

    async def reload(self) -> bool:
        """SIGHUP: take the new config if it is valid, keep the old one on *any* error."""
        try:
            new = per_process(load_config(self.config.path), self.processes)
            new_tls = tls_context(new)
            same_hops = new.delivery == self.config.delivery and new.delivery.tls_ca_file is None
            # A CA file may have been replaced at the same path: a new router reads it.
            router = self.relay.router if same_hops else Router(new)
            settings = relay_settings(new)
            signing = stage_settings(new)
        except Exception as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [_describe(exc)]
            self.events.emit("config_rejected", reason="; ".join(problems))
            log.error("config reload refused, keeping the running config: %s", problems)
            return False
        old = self.config
        before, after = dict(listeners(old)), dict(listeners(new))
        restart_needed = sorted(
            k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
        )
        if new.gateway.data_dir != old.gateway.data_dir or new.log.dir != old.log.dir:
            restart_needed.append("gateway.data_dir/log.dir")
        if new.smtp.processes != self.processes:
            restart_needed.append("smtp.processes")
        if hash_workers(new.auth) != self.authenticator.workers:
            restart_needed.append("auth.hash_workers")
        if (new.log.syslog, new.log.syslog_events) != (old.log.syslog, old.log.syslog_events):
            restart_needed.append("log.syslog")
        old_router = self.relay.router
        self.config = new
        self.accepted_recipients.clear()
        self.tls = new_tls
        self.limits = limits_of(new)
        self.connections.total = new.smtp.max_connections
        self.connections.per_client = new.smtp.max_connections_per_client
        for listener in self._listeners:
            listener.limiter.total = new.smtp.max_connections_per_listener
        self.throttle.per_address = new.auth.max_failures_per_address
        self.throttle.per_client = new.auth.max_failures_per_client
        self.throttle.window = new.auth.failure_window_seconds
        self.authenticator.reconfigure(new.auth, new.password_url)
        router.use_config(new)  # a kept router must route by the new gateway.domains
        self.relay.reconfigure(new.gateway.hostname, router, settings)
        if self.relay.signing is not None:
            self.relay.signing.configure(signing)
        if router is not old_router:
            # Deliveries in flight still use the old pool; it closes their connections
            # when they come back instead of keeping them.
            closing = asyncio.get_running_loop().create_task(old_router.close())
            self._retired_routers.add(closing)
            closing.add_done_callback(self._retired_routers.discard)
        reason = None
        if restart_needed:
            reason = f"needs a restart to take effect: {', '.join(restart_needed)}"
        self.events.emit("config_reloaded", reason=reason)
        return True

    # -- listeners -------------------------------------------------------------------------

    def _make_listeners(self) -> list[Listener]:
        cap = self.config.smtp.max_connections_per_listener

        def limiter(key: str) -> ConnectionLimiter:
            return ConnectionLimiter(
                cap, total_key="smtp.max_connections_per_listener", parent=self.connections
            )

        found = [
            Listener(
                "smtp.inbound_listen",
                "inbound",
                InboundHandler(self, "inbound"),
                False,
                limiter("inbound"),
            ),
            Listener(
                "smtp.submission_listen",
                "submission",
                SubmissionHandler(self, "submission"),
                False,
                limiter("submission"),
            ),
        ]
        if self.config.smtp.submission_tls_listen:
            found.append(
                Listener(
                    "smtp.submission_tls_listen",
                    "submissions",
                    SubmissionHandler(self, "submissions"),
                    True,
                    limiter("submissions"),
                )
            )
        return found

    def listeners(self) -> list[Listener]:
        return list(self._listeners)

    def session_factory(self, listener: Listener) -> GatewaySMTP:
        """A new protocol object per connection, with the config in force right now."""
        config = self.config
        submission = isinstance(listener.handler, SubmissionHandler)
        session = GatewaySMTP(
            listener.handler,
            limits=self.limits,
            limiter=listener.limiter,
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
        self._sessions.add(session)
        return session

    def close_idle_sessions(self) -> int:
        """At shutdown, sessions between transactions get 421 and are closed now, so a
        client keeping its connection open does not hold the shutdown for the whole grace
        (RFC 5321 3.8); those in a transaction get the grace to finish it."""
        closed = 0
        goodbye = f"{replies.SHUTTING_DOWN}\r\n".encode()
        for session in list(self._sessions):
            envelope = session.envelope
            in_transaction = envelope is not None and envelope.mail_from is not None
            if session.transport is None or session.relaying or in_transaction:
                continue
            session.transport.write(goodbye)
            session.transport.close()
            closed += 1
        return closed

    def close_sessions(self) -> int:
        """Past the shutdown grace: close what is still connected (none of it holds a 250
        it has not been told; relays run on their own and were waited for)."""
        closed = 0
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
                closed += 1
        return closed

    def protocol_factory(self, listener: Listener) -> Any:
        """What ``create_server`` calls per accepted socket."""
        if not listener.implicit_tls:
            return lambda: self.session_factory(listener)

        def current_tls() -> ssl.SSLContext:
            assert self.tls is not None  # config validation: implicit TLS needs a cert
            return self.tls

        return lambda: ImplicitTLSAcceptor(lambda: self.session_factory(listener), current_tls)

    @property
    def active_sessions(self) -> int:
        return self.connections.active

    def master_password(self) -> str:
        """The store's IMAP master password (ImapServices), read at each login so a
        rotated file takes effect without a restart; never logged."""
        assert self.config.imap is not None
        path = self.config.imap.upstream_master_password_file
        return path.read_text(encoding="utf-8").strip("\r\n")

    async def close(self, primary: bool = True) -> None:
        """``primary``: also stop the gpg-agent, which the SMTP helpers share with it (a
        helper that exits or is replaced must not stop it under the others)."""
        await self.relay.router.close()
        self.authenticator.close()  # no argon2 thread left reading the directory
        self.keys.close(stop_agent=primary)
        self.inspector.close()
        self.directory.close()
        self.events.close()


def _describe(exc: BaseException) -> str:
    """One line for an unexpected error: its type and message, never a traceback."""
    return f"{type(exc).__name__}: {exc}"


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Client misbehaviour that asyncio reports (a reset mid-TLS, say) gets one line;
    anything else keeps asyncio's full report."""
    exc = context.get("exception")
    if isinstance(exc, OSError):
        log.info("%s: %s", context.get("message", "connection error"), _describe(exc))
        return
    loop.default_exception_handler(context)


def _start_observers(runtime: Runtime, config: Config, primary: bool) -> list[Any]:
    """Metrics and the syslog copy of events, fed by the event log; returns their closers.

    Both are fixed at start (a change of ``[metrics]`` or ``log.syslog`` needs a restart).
    Every process counts its own events; with smtp.processes > 1 into files the
    primary's endpoint sums (``processes.share_metrics``). The syslog copy runs in every
    process too, since each writes its own events.
    """
    closers: list[Any] = []
    if config.metrics is not None:
        shared = None
        if runtime.processes > 1:
            shared = share_metrics(config.gateway.data_dir, primary)
        if primary or shared is not None:
            from gateway.metrics import Metrics

            metrics = Metrics(runtime.spool.queue, config.log.dir, shared)
            if primary:
                metrics.start(config.metrics.listen)
                runtime.metrics = metrics
                log.info("metrics.listen on %s", config.metrics.listen)
            runtime.events.observers.append(metrics.observe)
            closers.append(metrics.close)
    if config.log.syslog is not None and config.log.syslog_events:
        from gateway.events.forward import SyslogForwarder

        forwarder = SyslogForwarder(config.log.syslog)
        runtime.events.observers.append(forwarder)
        closers.append(forwarder.close)
    return closers


LISTEN_BACKLOG = 100  # asyncio's create_server default


class _Listening(Protocol):
    def close(self) -> None: ...


@dataclass
class SmtpListeners:
    """What serves the SMTP ports; with smtp.processes > 1 also the connection board
    and the listening sockets the helpers share (by listener key and index)."""

    servers: list[_Listening]
    board: Board | None = None
    sockets: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        for server in self.servers:
            server.close()


async def _bind_smtp(runtime: Runtime, config: Config, helper: HelperMark | None) -> SmtpListeners:
    """The SMTP listeners. With smtp.processes > 1 the primary binds each port once and
    every process accepts from that same socket, the least loaded first
    (gateway/smtp/balance.py); a helper takes the sockets its primary passed it."""
    loop = asyncio.get_running_loop()
    addresses = dict(listeners(config))
    by_key = {listener.key: listener for listener in runtime.listeners()}
    if runtime.processes <= 1:
        servers: list[_Listening] = []
        for key, listener in by_key.items():
            address = addresses[key]
            server = await loop.create_server(
                runtime.protocol_factory(listener), address.host, address.port,
                reuse_address=True,
            )  # fmt: skip
            servers.append(server)
            log.info("%s listening on %s", key, address)
        return SmtpListeners(servers)
    if helper is None:
        board = Board.create(runtime.processes)
        sockets: dict[str, int] = {}
        for key in by_key:
            address = addresses[key]
            # asyncio's own binding (address families, SO_REUSEADDR), kept as duplicates.
            bound = await loop.create_server(
                asyncio.Protocol, address.host, address.port,
                reuse_address=True, start_serving=False,
            )  # fmt: skip
            for index, transport_socket in enumerate(bound.sockets):
                listening = socket.socket(fileno=os.dup(transport_socket.fileno()))
                listening.listen(LISTEN_BACKLOG)  # start_serving=False bound it only
                sockets[f"{key}/{index}"] = listening.detach()
            bound.close()
    else:
        board = Board.attach(helper.board_fd, helper.processes, helper.slot)
        sockets = dict(helper.sockets)
    runtime.connections.on_change = board.report
    acceptors: list[_Listening] = []
    for name, fd in sockets.items():
        key = name.rsplit("/", 1)[0]
        acceptor = BalancedAcceptor(
            socket.socket(fileno=os.dup(fd)), runtime.protocol_factory(by_key[key]), board
        )
        acceptor.start()
        acceptors.append(acceptor)
        log.info("%s listening on %s (shared by %d processes)", key, addresses[key],
                 runtime.processes)  # fmt: skip
    return SmtpListeners(acceptors, board, sockets)


async def serve(
    config: Config,
    directory: Directory | None = None,
    *,
    helper: HelperMark | None = None,
    lock_fd: int | None = None,
) -> None:
    """Run the listeners and the queue until SIGTERM/SIGINT.

    ``helper`` (its primary's PID and ready pipe) makes this an SMTP helper: the SMTP
    listeners only, no spool recovery, queue, IMAP, password page or metrics
    (gateway/processes.py).
    The primary starts the helpers after binding its own listeners; they inherit
    ``lock_fd``, the data_dir lock.
    """
    primary = helper is None
    runtime = Runtime(config, directory, helper.processes if helper else None)
    if runtime.processes > 1:
        tag_queue_ids_with_pid()  # the processes share the spool
    observers = _start_observers(runtime, config, primary)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_exception_handler)
    # Signals first: once a port answers, a reload (SIGHUP) or a stop may come at once,
    # and SIGHUP's default action would kill the gateway.
    stop, hangup = asyncio.Event(), asyncio.Event()
    helpers: SmtpHelpers | None = None

    def on_hangup() -> None:
        hangup.set()
        if helpers is not None:
            helpers.send(signal.SIGHUP)  # each reloads its own config, as this one does

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    stale = runtime.spool.recover() if primary else 0  # a helper would delete others' mail
    smtp_listeners = await _bind_smtp(runtime, config, helper)
    imap: ImapProxy | None = None
    password_page: PasswordPage | None = None
    if primary:
        if config.imap is not None:
            imap = ImapProxy(runtime)
            for bound in await imap.start():
                log.info("%s listening", bound)
        if config.web is not None:
            password_page = PasswordPage(runtime)
            log.info("%s listening", await password_page.start())
        if runtime.processes > 1:
            inherit = (lock_fd,) if lock_fd is not None else ()
            gone = runtime.metrics.process_gone if runtime.metrics is not None else None
            assert smtp_listeners.board is not None  # processes > 1 share a board
            helpers = SmtpHelpers(
                config.path, runtime.processes - 1, runtime.events,
                smtp_listeners.board, smtp_listeners.sockets, inherit, exited=gone,
            )  # fmt: skip
        runtime.events.emit(
            "gateway_start",
            reason=f"listening on {', '.join(str(a) for _, a in listeners(config))}",
            stale_files_removed=stale or None,
        )
    else:
        smtp = ", ".join(str(a) for key, a in listeners(config) if key.startswith("smtp."))
        runtime.events.emit(
            "gateway_start", reason=f"SMTP helper of PID {helper.primary}: listening on {smtp}"
        )
    if helper is not None:
        report_ready(helper)  # from now on a SIGHUP reloads instead of killing

    async def reloads() -> None:
        while True:
            await hangup.wait()
            hangup.clear()
            try:
                await runtime.reload()
            except Exception as exc:  # reload catches everything; this is the last net
                log.exception("config reload failed")
                runtime.events.emit("config_rejected", reason=_describe(exc))

    try:
        async with asyncio.TaskGroup() as group:
            queue = group.create_task(runtime.queue.run()) if primary else None
            reloader = group.create_task(reloads())
            watcher = group.create_task(imap.watch_locks()) if imap else None
            keeper = group.create_task(helpers.run()) if helpers else None
            await stop.wait()
            if helpers is not None:
                helpers.terminate()  # they shut down as this process does, in parallel
            smtp_listeners.close()
            if imap is not None:
                await imap.close()
            if password_page is not None:
                await password_page.close()
            deadline = loop.time() + SHUTDOWN_GRACE_SECONDS
            runtime.queue.stop()  # attempts under way finish: cutting one could double it
            runtime.close_idle_sessions()
            await _drain_sessions(runtime, deadline)
            await runtime.finish_relays(deadline)
            if queue is not None:
                await asyncio.wait({queue}, timeout=max(deadline - loop.time(), 0.1))
            runtime.close_sessions()
            if helpers is not None:
                # Their grace started a moment after ours; past it (and a margin), SIGKILL.
                await helpers.wait(deadline + HELPER_STOP_MARGIN_SECONDS)
            for task in (queue, reloader, watcher, keeper):
                if task is not None:
                    task.cancel()
    finally:
        runtime.events.emit("gateway_stop")
        for close in observers:
            close()
        await runtime.close(primary)


async def _drain_sessions(runtime: Runtime, deadline: float) -> None:
    """Give sessions in flight a moment to finish; the rest get no 250 and retry."""
    loop = asyncio.get_running_loop()
    while runtime.active_sessions and loop.time() < deadline:
        await asyncio.sleep(0.1)


def run(config_path: str) -> int:
    """Entry point of ``mailgate serve``: refuse a bad config, else serve until told to stop.

    An SMTP helper (started by the primary, gateway/processes.py) takes neither the
    port check nor the data_dir lock: the primary holds both for it.
    """
    helper = helper_mark()
    try:
        config = load_config(Path(config_path))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}")
        return 2
    problems = check_ports_free(config) if helper is None else []
    if problems:
        for problem in problems:
            print(f"config error: {problem}")
        return 2
    try:
        directory = Directory.open_existing(
            config.gateway.data_dir, config.path, config.auth.argon2().hasher()
        )
    except DirectoryError as exc:
        print(f"cannot start: {exc}")
        return 2
    if helper is not None:
        _run_loop(serve(config, directory, helper=helper))
        return 0
    lock = DataLock(config.gateway.data_dir)
    try:
        lock.acquire()
    except DataLockError as exc:
        print(f"cannot start: {exc}")
        directory.close()
        return 2
    try:
        _run_loop(serve(config, directory, lock_fd=lock.fileno()))
    finally:
        lock.release()
    return 0


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when installed (faster sockets), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
