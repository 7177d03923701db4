"""The submission listeners (STARTTLS and implicit TLS): mail clients, AUTH PLAIN/LOGIN
required before MAIL FROM.

Credentials go to the shared Authenticator (throttle, directory, cache, argon2 on its
own threads), which records every attempt as an event, never with the password. "Must change" does
not block AUTH: SMTP has no way to change a password (MOST 15.2 is shown where the
user can act). As an MSA may (RFC 6409 8.2, 8.3), a missing Date: or Message-ID:
is added, so the stored mail and its events have both.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import AuthResult, LoginPassword

from gateway.pipeline import first_header
from gateway.smtp import replies
from gateway.smtp.handler import SessionHandler, client_address
from gateway.smtp.replies import Reply
from gateway.smtp.server import NULL_SENDER
from gateway.smtp.session import GatewaySession

if TYPE_CHECKING:
    from gateway.smtp.server import GatewaySMTP

AUTH_OK = "235 2.7.0 Authentication successful"


class SubmissionHandler(SessionHandler):
    """Relays for authenticated users, as themselves or a unit delegated to them."""

    async def authenticate(
        self, server: GatewaySMTP, mechanism: str, credentials: Any
    ) -> AuthResult:
        assert server.session is not None
        if not isinstance(credentials, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = credentials.login.decode("utf-8", "replace")
        password = credentials.password.decode("utf-8", "replace")
        client = client_address(server.session)

        def emit(event: str, **fields: Any) -> None:
            self._emit(server, event, mechanism=mechanism, **fields)

        result = await self.services.authenticator.login(
            login, password, client, emit, success_code=235
        )
        if result.mailbox is None:
            assert result.reply is not None
            return AuthResult(success=False, handled=False, message=str(result.reply))
        authenticator = self.services.authenticator
        if result.mailbox.must_change and authenticator.refuse_must_change:
            notice = authenticator.must_change_notice()
            reply = replies.AUTH_MUST_CHANGE.with_rule("auth.refuse_must_change", notice)
            emit("login_refused", user=result.mailbox.address, code=reply.code,
                 reason=f"[auth.refuse_must_change] {notice}")  # fmt: skip
            return AuthResult(success=False, handled=False, message=str(reply))
        server.session.user = result.mailbox.address
        return AuthResult(success=True, auth_data=result.mailbox.address, message=AUTH_OK)

    async def check_sender(
        self, server: GatewaySMTP, session: GatewaySession, address: str
    ) -> Reply | None:
        """A send-locked mailbox may log in but not send (MIC 6.4.c, 7.1); the sender must
        be the login or a unit mailbox delegated to it (MOST 14.4, MIC 12.3)."""
        user = session.user
        assert user is not None
        standing = await self.services.sender_standings.of(user)
        if standing.state != "active":
            # By the dates as of now, not the last maintenance run: a departure recorded
            # for today stops sending at once (MIC 6.4.c).
            reason = f"{standing.state}: {standing.reason or 'locked'}"
            return replies.SENDING_LOCKED.with_rule("send_lock", reason)
        identities = standing.identities
        session.sender_identities = identities
        if address == NULL_SENDER or address.lower() not in identities:
            return replies.SENDER_NOT_ALLOWED.with_rule(
                "sender_identity", f"{user} may send as {', '.join(sorted(identities))}"
            )
        return None

    def added_fields(self, server: GatewaySMTP, headers: bytes) -> bytes:
        added = b""
        if first_header(headers, b"date") is None:
            added += f"Date: {format_datetime(datetime.now(UTC))}\r\n".encode()
        if first_header(headers, b"message-id") is None:
            assert server.session is not None
            unique = f"{server.session.queue_id}.{secrets.token_hex(4)}"
            hostname = self.services.config.gateway.hostname
            added += f"Message-ID: <{unique}@{hostname}>\r\n".encode()
        return added
