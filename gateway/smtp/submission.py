"""The submission listener: mail clients, AUTH PLAIN/LOGIN required before MAIL FROM.

Credentials are checked against the directory in a worker thread (argon2 is
deliberately slow); every attempt is an event, never with the password.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import AuthResult, LoginPassword

from gateway.smtp.handler import SessionHandler

if TYPE_CHECKING:
    from gateway.smtp.server import GatewaySMTP

AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid [auth]"


class SubmissionHandler(SessionHandler):
    """Relays for authenticated users to any domain."""

    listener = "submission"

    async def authenticate(
        self, server: GatewaySMTP, mechanism: str, credentials: Any
    ) -> AuthResult:
        assert server.session is not None
        if not isinstance(credentials, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = credentials.login.decode("utf-8", "replace").strip()
        password = credentials.password.decode("utf-8", "replace")
        mailbox = await asyncio.to_thread(self.runtime.directory.authenticate, login, password)
        if mailbox is None:
            self._emit(server, "auth_failure", user=login, code=535, reason="invalid credentials")
            return AuthResult(success=False, handled=False, message=AUTH_FAILED)
        server.session.user = mailbox.address
        self._emit(server, "auth_success", mechanism=mechanism, code=235)
        return AuthResult(success=True, auth_data=mailbox.address, message=AUTH_OK)
