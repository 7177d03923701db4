"""The typed per-connection state the gateway keeps beside aiosmtpd's own.

aiosmtpd's ``Session`` carries the protocol facts (peer, host_name, ssl,
authenticated); the gateway's own facts are declared here instead of being
attributes stuck onto aiosmtpd's object, so a reader finds them all in one place.
"""

from __future__ import annotations

import asyncio

from aiosmtpd.smtp import Session


class GatewaySession(Session):
    """aiosmtpd's Session plus the gateway's fields (``GatewaySMTP._create_session``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.session_id: str | None = None
        self.user: str | None = None  # the authenticated login, once AUTH succeeded
        # Addresses the login may send as (itself and unit mailboxes delegated to it).
        self.sender_identities: frozenset[str] = frozenset()
        self.queue_id: str | None = None  # of the transaction now in DATA
        # RCPTs of this transaction that named a group mailbox (lower case), reset at MAIL.
        self.group_recipients: set[str] = set()

    def carry_over(self, previous: GatewaySession) -> None:
        """After STARTTLS (RFC 3207 4.2) only the id survives, so events stay together."""
        self.session_id = previous.session_id
