"""What the SMTP handlers need from the running gateway, and nothing more.

Handlers depend on this Protocol instead of the whole ``Runtime``, so a test can
hand them a small fake and a reader sees at a glance what SMTP touches.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.auth import Authenticator
    from gateway.config import Config
    from gateway.directory.cache import AcceptedRecipients
    from gateway.directory.mailboxes import Directory
    from gateway.directory.standing import SenderStandings
    from gateway.events.writer import EventLog
    from gateway.mime.model import Inspection, Scan
    from gateway.pipeline import MessageContext
    from gateway.smtp.replies import Reply
    from gateway.spool import Body, Spool


class MessageRelay(Protocol):
    async def handle(self, ctx: MessageContext) -> Reply: ...


class SmtpServices(Protocol):
    log: logging.Logger

    @property
    def config(self) -> Config: ...

    @property
    def events(self) -> EventLog: ...

    @property
    def spool(self) -> Spool: ...

    @property
    def directory(self) -> Directory: ...

    @property
    def accepted_recipients(self) -> AcceptedRecipients: ...

    @property
    def sender_standings(self) -> SenderStandings: ...

    @property
    def relay(self) -> MessageRelay: ...

    @property
    def authenticator(self) -> Authenticator: ...

    async def inspect(self, body: Body, scans: tuple[Scan, ...] = ()) -> Inspection:
        """The one MIME parse of ``body``, off the event loop, with the filters' scans."""

    def track(self, task: asyncio.Task[Reply]) -> None:
        """Keep a relay running after its client left; shutdown waits for it."""
