"""The inbound listener: mail from other MTAs, for our own domains only, no AUTH."""

from __future__ import annotations

from aiosmtpd.smtp import Envelope

from gateway.smtp import replies
from gateway.smtp.handler import SessionHandler
from gateway.smtp.replies import Reply
from gateway.smtp.session import GatewaySession


class InboundHandler(SessionHandler):
    """Accepts only local-domain recipients: anything else would make us an open relay."""

    async def check_recipient(
        self, session: GatewaySession, envelope: Envelope, address: str
    ) -> Reply | None:
        if not self.services.config.is_local(address):
            return replies.RELAY_DENIED.with_rule("relay", "not a local domain")
        return await super().check_recipient(session, envelope, address)
