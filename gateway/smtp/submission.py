"""The submission listener: mail clients, AUTH PLAIN/LOGIN required before MAIL FROM.

Credentials are checked against the directory in a worker thread (argon2 is
deliberately slow); failed logins are throttled per address and per client; every
attempt is an event, never with the password. "Must change" does not block AUTH:
SMTP has no way to change a password (MOST 15.2 is shown where the user can act).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import AuthResult, LoginPassword, Session

from gateway.auth_throttle import LoginThrottle
from gateway.smtp import replies
from gateway.smtp.handler import SessionHandler, client_address
from gateway.smtp.replies import Reply
from gateway.smtp.server import NULL_SENDER

if TYPE_CHECKING:
    from gateway.runtime import Runtime
    from gateway.smtp.server import GatewaySMTP

AUTH_OK = "235 2.7.0 Authentication successful"


class SubmissionHandler(SessionHandler):
    """Relays for authenticated users, as themselves or a unit delegated to them."""

    listener = "submission"

    def __init__(self, runtime: Runtime, throttle: LoginThrottle) -> None:
        super().__init__(runtime)
        self.throttle = throttle

    async def authenticate(
        self, server: GatewaySMTP, mechanism: str, credentials: Any
    ) -> AuthResult:
        assert server.session is not None
        if not isinstance(credentials, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = credentials.login.decode("utf-8", "replace").strip().lower()
        password = credentials.password.decode("utf-8", "replace")
        client = client_address(server.session)
        blocked = self.throttle.blocked(login, client)
        if blocked:
            reply = replies.AUTH_THROTTLED.with_rule("auth_throttle")
            self._emit(server, "auth_failure", user=login, code=reply.code, reason=blocked)
            return AuthResult(success=False, handled=False, message=str(reply))
        directory = self.runtime.directory
        mailbox = await asyncio.to_thread(directory.authenticate, login, password)
        if mailbox is None:
            self.throttle.failed(login, client)
            why = await asyncio.to_thread(directory.login_refusal, login)
            reply = replies.AUTH_FAILED.with_rule("auth")
            self._emit(
                server, "auth_failure", user=login, code=reply.code,
                reason=why or "invalid credentials",
            )  # fmt: skip
            return AuthResult(success=False, handled=False, message=str(reply))
        self.throttle.succeeded(login)
        server.session.user = mailbox.address
        self._emit(
            server, "auth_success", mechanism=mechanism, code=235,
            must_change=mailbox.must_change or None,
        )  # fmt: skip
        return AuthResult(success=True, auth_data=mailbox.address, message=AUTH_OK)

    async def check_sender(
        self, server: GatewaySMTP, session: Session, address: str
    ) -> Reply | None:
        """A send-locked mailbox may log in but not send (MIC 6.4.c, 7.1); the sender must
        be the login or a unit mailbox delegated to it (MOST 14.4, MIC 12.3)."""
        user = session.user
        directory = self.runtime.directory
        mailbox = await asyncio.to_thread(directory.get, user)
        if mailbox is None or mailbox.state != "active":
            state = mailbox.state if mailbox else "gone"
            reason = mailbox.lock_reason if mailbox else None
            return replies.SENDING_LOCKED.with_rule("send_lock", f"{state}: {reason or 'locked'}")
        identities = await asyncio.to_thread(directory.sender_identities, user)
        session.sender_identities = identities
        if address == NULL_SENDER or address.lower() not in identities:
            return replies.SENDER_NOT_ALLOWED.with_rule(
                "sender_identity", f"{user} may send as {', '.join(sorted(identities))}"
            )
        return None
