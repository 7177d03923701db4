"""What both SMTP listeners share: session ids, events, Received headers, end of DATA.

Handlers turn protocol into calls on the Runtime (relay, spool, events); the
two listeners differ only in who may relay and whether AUTH exists, which
``inbound.py`` and ``submission.py`` decide.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import Envelope, Session

from gateway.pipeline import MessageContext
from gateway.smtp import replies
from gateway.smtp.replies import Reply
from gateway.smtp.server import NULL_SENDER
from gateway.spool import Body, BodyWriter, new_queue_id

if TYPE_CHECKING:
    from gateway.runtime import Runtime
    from gateway.smtp.server import GatewaySMTP

EXTRA_EXTENSIONS = ("250-PIPELINING", "250-ENHANCEDSTATUSCODES")


def _printable(text: str | None, limit: int = 255) -> str:
    """Client-chosen text made safe for a header: printable ASCII only, bounded."""
    cleaned = "".join(c if " " < c < "\x7f" else "?" for c in (text or "unknown"))
    return cleaned[:limit] or "unknown"


def client_address(session: Session) -> str:
    return str(session.peer[0]) if session.peer else "unknown"


class SessionHandler:
    """aiosmtpd handler hooks common to both listeners."""

    listener = "smtp"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    # -- lifecycle events --------------------------------------------------------------

    def _emit(self, server: GatewaySMTP, event: str, **fields: Any) -> None:
        session = server.session
        fields.setdefault("user", getattr(session, "user", None))
        self.runtime.events.emit(
            event,
            session=getattr(session, "session_id", None),
            client=client_address(session) if session else None,
            listener=self.listener,
            **fields,
        )

    def on_connect(self, server: GatewaySMTP) -> None:
        assert server.session is not None
        server.session.session_id = secrets.token_hex(6)
        server.session.user = None
        self._emit(server, "session_start", tls=server.session.ssl is not None or None)

    def on_disconnect(self, server: GatewaySMTP) -> None:
        self._emit(server, "session_end")

    def on_refused_connection(self, server: GatewaySMTP, client: str) -> None:
        self._emit(server, "connection_refused", code=421, reason="connection limit")

    def on_protocol_error(self, server: GatewaySMTP, reason: str) -> None:
        envelope = server.envelope
        self._emit(
            server,
            "protocol_error",
            reason=reason,
            sender=envelope.mail_from if envelope else None,
            recipients=list(envelope.rcpt_tos) if envelope and envelope.rcpt_tos else None,
        )

    def on_data_refused(self, server: GatewaySMTP, reply: Reply) -> None:
        envelope = server.envelope
        assert envelope is not None
        self._emit(
            server,
            "message_rejected",
            queue_id=getattr(server, "queue_id", None),
            sender=envelope.mail_from,
            recipients=list(envelope.rcpt_tos),
            code=reply.code,
            reason=reply.text,
        )

    # -- commands ----------------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: GatewaySMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd prints "250-AUTH " even with every mechanism excluded (inbound).
        kept = [r for r in responses[:-1] if r.strip() != "250-AUTH"]
        return [*kept, *EXTRA_EXTENSIONS, responses[-1]]

    async def handle_MAIL(
        self,
        server: GatewaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        refusal = await self.check_sender(server, session, address)
        if refusal is not None:
            self._emit(
                server, "mail_rejected", sender=address, code=refusal.code, reason=refusal.text
            )
            return str(refusal)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return str(replies.SENDER_OK)

    async def handle_RCPT(
        self,
        server: GatewaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        config = self.runtime.config
        if len(envelope.rcpt_tos) >= config.smtp.max_recipients:
            return str(replies.TOO_MANY_RECIPIENTS.with_rule("smtp.max_recipients"))
        if address.lower() == "postmaster":  # RFC 5321 4.5.1: must be accepted bare
            address = f"postmaster@{config.gateway.domains[0]}"
        if "@" in address:
            refusal = await self.check_recipient(session, address)
        else:
            refusal = replies.BAD_ADDRESS.with_rule("rcpt", "LOCALPART@DOMAIN expected")
        if refusal is not None:
            self._emit(
                server,
                "rcpt_rejected",
                sender=envelope.mail_from,
                recipients=[address],
                code=refusal.code,
                reason=refusal.text,
            )
            return str(refusal)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return str(replies.RECIPIENT_OK)

    async def check_sender(
        self, server: GatewaySMTP, session: Session, address: str
    ) -> Reply | None:
        """None to accept MAIL FROM, or the refusal naming its rule."""
        return None

    async def check_recipient(self, session: Session, address: str) -> Reply | None:
        """None to accept RCPT TO, or the refusal naming its rule. A local recipient must
        be in the directory and not revoked; locked mailboxes still receive (MIC 7.1)."""
        if not self.runtime.config.is_local(address):
            return None
        accepted = self.runtime.accepted_recipients
        if address in accepted:
            return None
        try:
            known = await asyncio.to_thread(self.runtime.directory.accepts_mail, address)
        except sqlite3.Error:
            self.runtime.log.exception("directory lookup failed")
            return replies.DIRECTORY_UNAVAILABLE.with_rule("directory")
        if not known:
            return replies.NO_SUCH_USER.with_rule("directory", "no such mailbox")
        accepted.add(address)
        return None

    # -- DATA ---------------------------------------------------------------------------

    def begin_data(self, server: GatewaySMTP) -> BodyWriter:
        """Open the body with our Received: header (RFC 5321 4.4) and a fresh queue id."""
        assert server.session is not None and server.envelope is not None
        config = self.runtime.config
        queue_id = new_queue_id()
        server.queue_id = queue_id
        writer = self.runtime.spool.body_writer(queue_id, config.smtp.spill_threshold)
        writer.write(self._received(server, queue_id))
        return writer

    def _received(self, server: GatewaySMTP, queue_id: str) -> bytes:
        session, envelope = server.session, server.envelope
        assert session is not None and envelope is not None
        protocol = "UTF8SMTP" if envelope.smtp_utf8 else "ESMTP"
        if not session.extended_smtp:
            protocol = "SMTP"
        if session.ssl is not None or server.transport.get_extra_info("sslcontext"):
            protocol += "S"
        if session.authenticated:
            protocol += "A"
        recipients = envelope.rcpt_tos
        target = f"\r\n\tfor <{_printable(recipients[0])}>" if len(recipients) == 1 else ""
        stamp = format_datetime(datetime.now(UTC))
        return (
            f"Received: from {_printable(session.host_name)} ([{client_address(session)}])\r\n"
            f"\tby {self.runtime.config.gateway.hostname} (mailgate) with {protocol}"
            f" id {queue_id}{target};\r\n\t{stamp}\r\n"
        ).encode()

    async def end_data(self, server: GatewaySMTP, body: Body) -> Reply:
        assert server.session is not None and server.envelope is not None
        envelope = server.envelope
        ctx = MessageContext(
            queue_id=server.queue_id,
            session_id=server.session.session_id,
            listener=self.listener,
            client=client_address(server.session),
            user=server.session.user,
            sender="" if envelope.mail_from == NULL_SENDER else envelope.mail_from or "",
            recipients=list(envelope.rcpt_tos),
            body=body,
            received_at=datetime.now(UTC),
            sender_identities=getattr(server.session, "sender_identities", frozenset()),
        )
        try:
            return await self.runtime.relay.handle(ctx)
        except Exception as exc:  # never let a bug turn into silence or a 250
            self.runtime.log.exception("relaying %s failed", ctx.queue_id)
            self._emit(
                server,
                "message_tempfailed",
                queue_id=ctx.queue_id,
                sender=ctx.sender,
                recipients=ctx.recipients,
                code=replies.LOCAL_ERROR.code,
                reason=f"internal error: {type(exc).__name__}",
            )
            return replies.LOCAL_ERROR

    async def handle_exception(self, error: Exception) -> str:
        """A bug must not leak internals (or secrets) to the client: log it, answer 451."""
        self.runtime.log.error("SMTP session error", exc_info=error)
        return str(replies.LOCAL_ERROR)

    async def authenticate(self, server: GatewaySMTP, mechanism: str, credentials: Any) -> Any:
        raise NotImplementedError("this listener offers no AUTH")
