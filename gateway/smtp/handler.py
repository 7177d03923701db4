"""What every SMTP listener shares: session ids, events, Received headers, end of DATA.

Handlers turn protocol into calls on the gateway's services (relay, spool,
directory, events); the listeners differ only in who may relay and whether AUTH
exists, which ``inbound.py`` and ``submission.py`` decide.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import Envelope

from gateway.events.errors import describe, describe_now
from gateway.filters import groups as group_rules
from gateway.pipeline import MessageContext
from gateway.smtp import replies
from gateway.smtp.replies import Reply
from gateway.smtp.server import NULL_SENDER, peer_host
from gateway.smtp.session import GatewaySession
from gateway.spool import BodyWriter, new_queue_id

if TYPE_CHECKING:
    from gateway.smtp.server import GatewaySMTP
    from gateway.smtp.services import SmtpServices

EXTRA_EXTENSIONS = ("250-PIPELINING", "250-ENHANCEDSTATUSCODES")


def _printable(text: str | None, limit: int = 255) -> str:
    """Client-chosen text made safe for a header: printable ASCII only, bounded."""
    cleaned = "".join(c if " " < c < "\x7f" else "?" for c in (text or "unknown"))
    return cleaned[:limit] or "unknown"


def client_address(session: GatewaySession | None) -> str:
    return peer_host(session.peer) if session else "unknown"


def recipient_key(address: str, local: bool) -> str:
    """The identity two RCPTs share when they name the same mailbox: domains are
    case-insensitive everywhere; our own local parts too (the directory's are)."""
    if local:
        return address.lower()
    part, at, domain = address.rpartition("@")
    return f"{part}{at}{domain.lower()}"


class SessionHandler:
    """aiosmtpd handler hooks common to every listener."""

    def __init__(self, services: SmtpServices, listener: str) -> None:
        self.services = services
        self.listener = listener  # "inbound", "submission" or "submissions" in events

    # -- events ------------------------------------------------------------------------

    def _emit(self, server: GatewaySMTP, event: str, **fields: Any) -> None:
        session = server.session
        fields.setdefault("user", session.user if session else None)
        fields.setdefault("client", client_address(session))
        self.services.events.emit(
            event,
            session=session.session_id if session else None,
            listener=self.listener,
            **fields,
        )

    def _envelope_fields(self, server: GatewaySMTP) -> dict[str, Any]:
        envelope = server.envelope
        return {
            "sender": envelope.mail_from if envelope else None,
            "recipients": list(envelope.rcpt_tos) if envelope and envelope.rcpt_tos else None,
        }

    def on_connect(self, server: GatewaySMTP) -> None:
        assert server.session is not None
        server.session.session_id = secrets.token_hex(6)
        self._emit(server, "session_start", tls=server.session.ssl is not None or None)

    def on_disconnect(self, server: GatewaySMTP) -> None:
        self._emit(server, "session_end")

    def on_refused_connection(self, server: GatewaySMTP, client: str, rule: str) -> None:
        self._emit(server, "connection_refused", client=client, code=421, reason=f"[{rule}]")

    def on_protocol_error(self, server: GatewaySMTP, reason: str) -> None:
        self._emit(server, "protocol_error", reason=reason, **self._envelope_fields(server))

    def on_command_refused(self, server: GatewaySMTP, reply: str) -> None:
        self._emit(server, "command_rejected", code=int(reply[:3]), reason=reply[4:])

    def on_tls_failed(self, server: GatewaySMTP, reason: str) -> None:
        self._emit(server, "tls_failed", reason=reason)

    def on_tls_failed_before_session(self, server: GatewaySMTP, client: str, reason: str) -> None:
        self._emit(server, "tls_failed", client=client, reason=reason)

    def on_auth_refused(self, server: GatewaySMTP, reply: Reply) -> None:
        self._emit(server, "auth_failure", code=reply.code, reason=reply.text)

    def on_mail_refused(self, server: GatewaySMTP, arg: str, reply: Reply) -> None:
        sender = server._getaddr(arg.split(":", 1)[-1])[0] if ":" in arg else None
        self._emit(server, "mail_rejected", sender=sender, code=reply.code, reason=reply.text)

    def on_data_refused(self, server: GatewaySMTP, reply: Reply) -> None:
        assert server.session is not None
        self._emit(
            server,
            "message_rejected",
            queue_id=server.session.queue_id,
            code=reply.code,
            reason=reply.text,
            **self._envelope_fields(server),
        )

    # -- commands ----------------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: GatewaySMTP,
        session: GatewaySession,
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
        session: GatewaySession,
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
        session.group_recipients = set()  # a new transaction: RSET ends the old one
        return str(replies.SENDER_OK)

    async def handle_RCPT(
        self,
        server: GatewaySMTP,
        session: GatewaySession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        config = self.services.config
        if address.lower() == "postmaster":  # RFC 5321 4.5.1: must be accepted bare
            address = f"postmaster@{config.gateway.domains[0]}"
        key = recipient_key(address, config.is_local(address))
        if any(recipient_key(r, config.is_local(r)) == key for r in envelope.rcpt_tos):
            # Named twice: one copy. Counting it twice would also desynchronise LMTP,
            # which answers once per RCPT command.
            return str(replies.RECIPIENT_OK.with_text("Recipient OK (duplicate, one copy)"))
        if len(envelope.rcpt_tos) >= config.smtp.max_recipients:
            return str(replies.TOO_MANY_RECIPIENTS.with_rule("smtp.max_recipients"))
        if "@" in address:
            refusal = await self.check_recipient(session, envelope, address)
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
        self, server: GatewaySMTP, session: GatewaySession, address: str
    ) -> Reply | None:
        """None to accept MAIL FROM, or the refusal naming its rule."""
        return None

    async def check_recipient(
        self, session: GatewaySession, envelope: Envelope, address: str
    ) -> Reply | None:
        """None to accept RCPT TO, or the refusal naming its rule. A local recipient must
        be in the directory and not revoked; locked mailboxes still receive (MIC 7.1).
        A group must accept this sender and have someone to deliver to (filters/groups)."""
        services = self.services
        if not services.config.is_local(address):
            return None
        accepted = services.accepted_recipients
        if address in accepted:  # only mailboxes are remembered: a group's answer
            return None  # depends on the sender
        generation = accepted.generation  # a change seen while we look it up voids it
        groups = services.config.filters.settings("groups")
        sender = "" if envelope.mail_from == NULL_SENDER else envelope.mail_from or ""
        directory = services.directory

        def look_up() -> tuple[bool, Reply | None]:
            mailbox = directory.get(address)
            if mailbox is None or mailbox.state == "revoked":
                return False, replies.NO_SUCH_USER.with_rule("directory", "no such mailbox")
            if mailbox.kind != "group" or groups is None:
                return False, None
            return True, group_rules.rcpt_refusal(directory, mailbox, groups, session.user, sender)

        try:
            is_group, refusal = await asyncio.to_thread(look_up)
        except sqlite3.Error:
            services.log.exception("directory lookup failed")
            services.events.emit("internal_error", reason=f"directory lookup: {describe_now()}")
            return replies.DIRECTORY_UNAVAILABLE.with_rule("directory")
        if refusal is None:
            if is_group:
                session.group_recipients.add(address.lower())
            else:
                accepted.add(address, generation)
        return refusal

    # -- DATA ---------------------------------------------------------------------------

    def begin_data(self, server: GatewaySMTP) -> BodyWriter:
        """A fresh queue id and a body writer (spilling past ``smtp.spill_threshold``)."""
        assert server.session is not None
        queue_id = new_queue_id()
        server.session.queue_id = queue_id
        return self.services.spool.body_writer(queue_id, self.services.config.smtp.spill_threshold)

    def added_fields(self, server: GatewaySMTP, headers: bytes) -> bytes:
        """Header fields this listener adds below Received (submission: Date, Message-ID)."""
        return b""

    def _received(self, server: GatewaySMTP, queue_id: str) -> bytes:
        """Our trace field (RFC 5321 4.4), stamped when the message is complete."""
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
            f"\tby {self.services.config.gateway.hostname} (mailgate) with {protocol}"
            f" id {queue_id}{target};\r\n\t{stamp}\r\n"
        ).encode()

    async def end_data(self, server: GatewaySMTP, writer: BodyWriter, headers: bytes) -> Reply:
        """Relay the message; the relay runs as its own task, so a client that leaves (or
        a server told to stop) cannot cut a delivery in half: it finishes and records
        its outcome, and ``services.track`` lets shutdown wait for it."""
        session, envelope = server.session, server.envelope
        assert session is not None and envelope is not None and session.queue_id is not None
        queue_id = session.queue_id
        prefix = self._received(server, queue_id) + self.added_fields(server, headers)
        try:
            body = await writer.finish(headers, prefix)
        except OSError as exc:
            writer.abort()
            self.services.log.error("spill file for %s failed: %s", queue_id, exc)
            return replies.SPOOL_UNAVAILABLE.with_rule("spool")
        except BaseException:  # the client left while the spill file was being closed
            writer.abort()
            raise
        ctx = MessageContext(
            queue_id=queue_id,
            session_id=session.session_id or "",
            listener=self.listener,
            client=client_address(session),
            user=session.user,
            sender="" if envelope.mail_from == NULL_SENDER else envelope.mail_from or "",
            recipients=list(envelope.rcpt_tos),
            body=body,
            received_at=datetime.now(UTC),
            sender_identities=session.sender_identities,
            group_recipients=frozenset(session.group_recipients),
            inspector=self.services.inspect,
            services=self.services,
        )
        task = asyncio.get_running_loop().create_task(self._relay(ctx))
        self.services.track(task)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                task.add_done_callback(lambda done: self._finished_without_client(ctx, done))
            raise

    async def _relay(self, ctx: MessageContext) -> Reply:
        received = ctx.body  # filters may replace ctx.body: both are ours to drop
        try:
            return await self.services.relay.handle(ctx)
        except Exception as exc:  # never let a bug turn into silence or a 250
            self.services.log.exception("relaying %s failed", ctx.queue_id)
            self.services.events.emit(
                "message_tempfailed",
                session=ctx.session_id,
                queue_id=ctx.queue_id,
                sender=ctx.sender,
                recipients=ctx.recipients,
                code=replies.LOCAL_ERROR.code,
                reason=f"internal error: {describe(exc)}",
                client=ctx.client,
                listener=ctx.listener,
            )
            return replies.LOCAL_ERROR
        finally:
            for body in {id(b): b for b in (received, ctx.body)}.values():
                if body.in_memory:
                    body.discard()
                else:
                    await asyncio.to_thread(body.discard)

    def _finished_without_client(self, ctx: MessageContext, task: asyncio.Task[Reply]) -> None:
        """The client left before hearing the answer: it will likely send again."""
        code = None if task.cancelled() or task.exception() else task.result().code
        self.services.events.emit(
            "client_gone",
            session=ctx.session_id,
            queue_id=ctx.queue_id,
            message_id=ctx.message_id,
            code=code,
            client=ctx.client,
            listener=ctx.listener,
            reason="client left before the reply to DATA; the relay finished without it",
        )

    async def handle_exception(self, error: Exception) -> str:
        """A bug must not leak internals (or secrets) to the client: log it, answer 451."""
        self.services.log.error("SMTP session error", exc_info=error)
        self.services.events.emit(
            "internal_error", listener=self.listener, code=replies.LOCAL_ERROR.code,
            reason=f"SMTP session: {describe(error)}",
        )  # fmt: skip
        return str(replies.LOCAL_ERROR)

    async def authenticate(self, server: GatewaySMTP, mechanism: str, credentials: Any) -> Any:
        raise NotImplementedError("this listener offers no AUTH")
