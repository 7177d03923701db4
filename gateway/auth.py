"""One authenticator for every login (SMTP AUTH now; the IMAP proxy and the password
page next): the throttle, the directory's verdict, the slow hash on its own threads.

argon2id costs 64 MiB and ~80 ms per verification. On the default thread pool it
would queue behind spool fsyncs and Maildir writes (and they behind it), and one
hash per core in flight is what bounds the memory; so verifications run on a small
executor of their own. Attempts in flight count against the throttle, so opening
many connections at once buys a guesser no extra tries.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gateway.auth_throttle import LoginThrottle
from gateway.directory.lifecycle import effective_state
from gateway.directory.mailboxes import CAN_AUTHENTICATE, Directory, Mailbox
from gateway.smtp import replies
from gateway.smtp.addresses import plain_angle_address
from gateway.smtp.replies import Reply

HASH_WORKERS = 2


@dataclass(frozen=True, slots=True)
class LoginResult:
    """What a login attempt came to; ``user`` is what the event log may show."""

    mailbox: Mailbox | None
    reply: Reply | None  # None on success
    reason: str  # for the event log, never the password
    user: str | None


def loggable_user(login: str, known: bool) -> str | None:
    """The attempted name as the event may record it: a password typed into the user
    field must not end up in the log, so only addresses and known mailboxes are kept."""
    if known or plain_angle_address(f"<{login}>") is not None:
        return login
    return None


class Authenticator:
    def __init__(self, directory: Directory, throttle: LoginThrottle) -> None:
        self.directory = directory
        self.throttle = throttle
        self._hashing = ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="argon2")

    async def login(self, login: str, password: str, client: str) -> LoginResult:
        login = login.strip().lower()
        blocked = self.throttle.blocked(login, client)
        if blocked:
            reply = replies.AUTH_THROTTLED.with_rule("auth_throttle")
            return LoginResult(None, reply, blocked, loggable_user(login, False))
        loop = asyncio.get_running_loop()
        self.throttle.begin(login, client)
        try:
            owner = await loop.run_in_executor(
                self._hashing, self.directory.password_owner, login, password
            )
        finally:
            self.throttle.end(login, client)
        if owner is None:
            self.throttle.failed(login, client)
            known = await asyncio.to_thread(self.directory.get, login) is not None
            reply = replies.AUTH_FAILED.with_rule("auth")
            return LoginResult(None, reply, "invalid credentials", loggable_user(login, known))
        state, why = effective_state(owner)
        if state not in CAN_AUTHENTICATE:
            reason = f"mailbox {state}: {why or 'no reason recorded'}"
            return LoginResult(None, replies.AUTH_MAILBOX_LOCKED.with_rule("auth"), reason, login)
        self.throttle.succeeded(login)
        await asyncio.to_thread(self.directory.record_access, owner.address)
        return LoginResult(owner, None, "ok", owner.address)

    def close(self) -> None:
        self._hashing.shutdown(wait=True, cancel_futures=True)
