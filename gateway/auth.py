"""One authenticator for every login (SMTP AUTH now; the IMAP proxy and the password
page next): the throttle, the directory's effective state, the verification, the
cache of verified logins and the login events, in this one place.

argon2id costs 64 MiB and ~80 ms per verification (with the defaults). On the default
thread pool it would queue behind spool fsyncs and Maildir writes (and they behind
it), and the number of hashes in flight is what bounds the memory; so verifications
run on an executor of their own, ``auth.hash_workers`` threads (default: one per
core). Attempts in flight count against the throttle, so opening many connections
at once buys a guesser no extra tries.

Every login, cached or not, reads the mailbox's row afresh (one cheap SQLite read)
and decides by its effective state as of now; a remembered login stands only while
the row's password hash and state fields are what they were when it was proved
(``auth_cache.VerifiedLogins.version``), so a ``mailbox passwd``/``lock``/``revoke``/
``unlock``/``retire`` or a ``maintenance`` run in another process counts at the next
login. What is refused is never remembered, and an unknown address is verified
against a dummy hash: an attempt without the right password always costs one full
verification, whatever the address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.auth_cache import VerifiedLogins
from gateway.auth_throttle import LoginThrottle
from gateway.config import AuthSection
from gateway.directory.lifecycle import effective_state
from gateway.directory.mailboxes import CAN_AUTHENTICATE, Directory, Mailbox, parse_stored
from gateway.directory.passwords import check_password, hash_password
from gateway.smtp import replies
from gateway.smtp.addresses import plain_angle_address
from gateway.smtp.replies import Reply

log = logging.getLogger("gateway.auth")
Emit = Callable[..., object]


def _no_events(event: str, **fields: object) -> None:
    return None


HASH_NICENESS = 10


def _lower_priority() -> None:
    """Each argon2 thread (and the lane threads argon2 starts from it, which inherit it)
    runs at a lower priority than the event loop: under a storm of cold logins the CPU
    goes to mail first, and the logins wait (Linux: niceness is per thread)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICENESS)


def usable_cores() -> int:
    """The cores this process may run on (a container's cpuset, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def hash_workers(settings: AuthSection) -> int:
    """``auth.hash_workers``, or one per usable core."""
    return settings.hash_workers or usable_cores()


@dataclass(frozen=True, slots=True)
class LoginResult:
    """What a login attempt came to; ``user`` is what the event log may show."""

    mailbox: Mailbox | None
    reply: Reply | None  # None on success
    reason: str  # for the event log, never the password
    user: str | None
    cached: bool = False  # proved by the cache, no argon2 run
    proved_hash: str | None = None  # the stored hash the password matched (the page's CAS)


def loggable_user(login: str, known: bool) -> str | None:
    """The attempted name as the event may record it: a password typed into the user
    field must not end up in the log, so only addresses and known mailboxes are kept."""
    if known or plain_angle_address(f"<{login}>") is not None:
        return login
    return None


class Authenticator:
    def __init__(
        self,
        directory: Directory,
        throttle: LoginThrottle,
        settings: AuthSection | None = None,
        password_url: str | None = None,
    ) -> None:
        settings = settings or AuthSection()
        self.password_url = password_url  # the self-service page, when [web] serves it
        self.refuse_must_change = settings.refuse_must_change
        self.directory = directory
        self.throttle = throttle
        self.workers = hash_workers(settings)
        self.params = settings.argon2()
        self.hasher = self.params.hasher()
        self.cache = VerifiedLogins(settings.cache_ttl_seconds, settings.cache_size)
        self._hashing = ThreadPoolExecutor(
            self.workers, thread_name_prefix="argon2", initializer=_lower_priority
        )

    def reconfigure(self, settings: AuthSection, password_url: str | None = None) -> None:
        """SIGHUP: new argon2 parameters (new hashes, upgrades on login), cache limits, the
        page's address and the must-change switch. The pool's size needs a restart."""
        self.password_url = password_url
        self.refuse_must_change = settings.refuse_must_change
        params = settings.argon2()
        if params != self.params:
            self.params, self.hasher = params, params.hasher()
            self.directory.hasher = self.hasher
        self.cache.resize(settings.cache_ttl_seconds, settings.cache_size)

    def forget(self, address: str) -> None:
        """A change made in this process (the password page): drop the login at once."""
        self.cache.forget(address.strip().lower())

    async def login(
        self,
        login: str,
        password: str,
        client: str,
        emit: Emit = _no_events,
        success_code: int | None = None,
    ) -> LoginResult:
        """Check one login and record it as ``auth_success``/``auth_failure`` through
        ``emit`` (the caller adds its session and listener); never the password."""
        result = await self._login(login.strip().lower(), password, client, emit)
        if result.mailbox is None:
            assert result.reply is not None
            emit("auth_failure", user=result.user, code=result.reply.code, reason=result.reason)
        else:
            must_change = result.mailbox.must_change
            emit(
                "auth_success", user=result.mailbox.address, code=success_code,
                must_change=must_change or None,
                reason=self.must_change_notice() if must_change else None,
                cache="hit" if result.cached else "miss",
            )  # fmt: skip
        return result

    def must_change_notice(self) -> str:
        """What a user whose password must change is told (MOST 15.2, MIC 7.3.c)."""
        if self.password_url:
            return f"password must be changed at {self.password_url} (MOST 15.2)"
        return "password must be changed (MOST 15.2): ask the mail operator"

    async def change_password(self, proved: LoginResult, new_password: str) -> bool:
        """The password page: store ``new_password`` for the mailbox ``proved`` logged in
        to and clear "must change". The hash is made on the argon2 pool (bounded memory,
        off the loop); the write only happens if the stored hash is still the one the
        current password matched, so a change made meanwhile (an operator's reset, a
        second tab) is never overwritten. False: it was, nothing changed."""
        assert proved.mailbox is not None and proved.proved_hash is not None
        loop = asyncio.get_running_loop()
        new_hash = await loop.run_in_executor(
            self._hashing, hash_password, new_password, self.hasher
        )
        address = proved.mailbox.address
        done = await asyncio.to_thread(
            self.directory.change_password, address, proved.proved_hash, new_hash
        )
        self.forget(address)
        return done

    async def _login(self, login: str, password: str, client: str, emit: Emit) -> LoginResult:
        blocked = self.throttle.blocked(login, client)
        if blocked:
            reply = replies.AUTH_THROTTLED.with_rule("auth_throttle")
            return LoginResult(None, reply, blocked, loggable_user(login, False))
        self.throttle.begin(login, client)
        try:
            found = await asyncio.to_thread(self.directory.login_record, login)
            mailbox, stored = found if found is not None else (None, None)
            state, why = effective_state(mailbox) if mailbox else ("unknown", None)
            version = self.cache.version(mailbox, stored) if mailbox else b""
            cached = False
            if mailbox is not None and state in CAN_AUTHENTICATE:
                cached = self.cache.proves(mailbox.address, password, version)
            elif mailbox is not None:
                self.cache.forget(mailbox.address)  # a deadline passed since it was proved
            if cached:
                ok, stale = True, False
            else:
                ok, stale = await asyncio.get_running_loop().run_in_executor(
                    self._hashing, check_password, stored, password, self.hasher
                )
        finally:
            self.throttle.end(login, client)
        if not ok or mailbox is None or stored is None:
            self.throttle.failed(login, client)
            reply = replies.AUTH_FAILED.with_rule("auth")
            known = mailbox is not None
            return LoginResult(None, reply, "invalid credentials", loggable_user(login, known))
        if state not in CAN_AUTHENTICATE:
            reason = f"mailbox {state}: {why or 'no reason recorded'}"
            return LoginResult(None, replies.AUTH_MAILBOX_LOCKED.with_rule("auth"), reason, login)
        self.throttle.succeeded(login)
        if stale:
            version, stored = await self._upgrade(mailbox, stored, password, version, emit)
        if not cached:
            self.cache.remember(mailbox.address, password, version)
        if not accessed_lately(mailbox, datetime.now(UTC)):
            await asyncio.to_thread(self.directory.record_access, mailbox.address)
        return LoginResult(mailbox, None, "ok", mailbox.address, cached, stored)

    async def _upgrade(
        self, mailbox: Mailbox, stored: str, password: str, version: bytes, emit: Emit
    ) -> tuple[bytes, str]:
        """Re-hash a password stored with older argon2 parameters, now that we have it.
        A failure costs nothing but the upgrade: the login stands, the next one retries."""
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(self._hashing, hash_password, password, self.hasher)
            done = await asyncio.to_thread(
                self.directory.upgrade_password_hash, mailbox.address, stored, new
            )
        except Exception as exc:
            log.warning("could not upgrade the password hash of %s: %s", mailbox.address, exc)
            return version, stored
        if not done:  # the password changed meanwhile: the old version no longer matches
            return version, stored
        params = self.params
        emit(
            "password_rehashed", user=mailbox.address,
            reason=f"argon2id m={params.memory_kib} KiB t={params.time_cost}"
            f" p={params.parallelism}",
        )  # fmt: skip
        return self.cache.version(mailbox, new), new

    def close(self) -> None:
        self._hashing.shutdown(wait=True, cancel_futures=True)


# Last access feeds the six-month inactivity lock (MOST 13.3), which reads only its date:
# an hour is precise enough (the events keep every login). Writing it at every login
# would be a write transaction per login, and each commit makes the directory caches
# keyed on its data version (sender standings, RCPT) forget everything: at 1,000 users
# logging in every few minutes, once a minute each would still be ~16 commits a second.
ACCESS_RECORD_INTERVAL = timedelta(hours=1)


def accessed_lately(mailbox: Mailbox, now: datetime) -> bool:
    """Whether ``mailbox``'s recorded last access is recent enough to leave as it is."""
    if not mailbox.last_access:
        return False
    try:
        return timedelta(0) <= now - parse_stored(mailbox.last_access) < ACCESS_RECORD_INTERVAL
    except ValueError:
        return False
