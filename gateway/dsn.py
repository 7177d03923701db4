"""Delivery status notifications (RFC 3464) for mail the gateway already accepted.

Once the gateway has answered 250 the sender's client has forgotten the message, so a
recipient that later fails for good (a 5xx from the store or relay, or a spool lifetime
that ran out on 4xx) can only be reported by a bounce. The report is machine-readable
(``message/delivery-status``) so the sender's MTA and mail client can act on it.

The bounce itself must be sent with the null reverse-path (``MAIL FROM:<>``) so that it
can never be bounced again; :func:`is_bounce_worthy` is the other half of that rule.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage, Message, MIMEPart
from email.utils import format_datetime, make_msgid, parseaddr
from io import BytesIO

from gateway.mime.sniff import is_utf8

__all__ = ["FailedRecipient", "build_dsn", "is_bounce_worthy"]

SUBJECT = "Undelivered Mail Returned to Sender"
MAILER_DAEMON = "MAILER-DAEMON"

# Wire policy: CRLF everywhere; 7-bit output (no utf8) so any relay can carry the bounce.
# The generator imposes its policy on every part, and at 78 columns it would turn a long
# diagnostic token into RFC 2047 encoded words, which RFC 3464 readers do not decode; so
# fold only at the RFC 5322 hard limit and keep delivery-status fields below it.
_WIRE = policy.SMTP.clone(max_line_length=998)
_FIELD_MAX = 900


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    """One recipient the gateway gave up on, as the bounce must describe it."""

    recipient: str
    status: str
    diagnostic: str
    remote_mta: str | None
    original_recipient: str | None = None  # the group the sender named, for a member


def is_bounce_worthy(sender: str) -> bool:
    """False for senders that must never get a bounce, so two MTAs cannot loop bounces.

    That is the null reverse-path (``""`` or ``"<>"``) and MAILER-DAEMON, the name
    bounces are sent under (RFC 5321 section 4.5.5; RFC 3464 section 2).
    """
    address = parseaddr(sender.strip())[1]
    if not address or address == "<>":
        return False
    local, _, _ = address.rpartition("@")
    return (local or address).casefold() != MAILER_DAEMON.casefold()


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    queue_id: str,
    arrival: datetime,
    failures: Sequence[FailedRecipient],
    original_headers: bytes,
    now: datetime | None = None,
) -> bytes:
    """The complete bounce message (CRLF) reporting every recipient in ``failures``.

    The result is 7-bit unless ``original_sender`` itself is non-ASCII (then SMTPUTF8
    is needed to reach it anyway and To: is raw UTF-8).

    The caller sends it from the null sender to ``original_sender``. ``arrival`` and ``now``
    should be aware datetimes; naive ones are taken as UTC. Raises ValueError for a sender
    that must not be bounced to, an empty ``failures`` or a malformed status code, since a
    DSN with a wrong machine-readable part is worse than a loud bug.
    """
    if not is_bounce_worthy(original_sender):
        raise ValueError(f"never bounce to {original_sender!r}: null sender or MAILER-DAEMON")
    if not failures:
        raise ValueError("a DSN needs at least one failed recipient")
    for failure in failures:
        _check_status(failure.status)
    sent = _utc(now or datetime.now(UTC))
    arrived = _utc(arrival)

    # An SMTPUTF8 sender can only be reached over SMTPUTF8, so its To: may be raw UTF-8
    # (RFC 6532); encoded words cannot represent an address.
    wire = _WIRE if original_sender.isascii() else _WIRE.clone(utf8=True)
    report = EmailMessage(policy=wire)
    report["From"] = Address("Mail Delivery System", MAILER_DAEMON, reporting_mta)
    report["To"] = original_sender.strip()
    report["Subject"] = SUBJECT
    report["Date"] = format_datetime(sent)
    report["Message-ID"] = make_msgid(domain=reporting_mta)
    report["Auto-Submitted"] = "auto-replied"
    report["MIME-Version"] = "1.0"
    report.set_type("multipart/report")
    report.set_param("report-type", "delivery-status")
    report.preamble = "This is a MIME-encapsulated message.\n"
    report.attach(_explanation(reporting_mta, queue_id, arrived, failures))
    report.attach(_delivery_status(reporting_mta, queue_id, arrived, sent, failures))
    report.attach(_headers_part(original_headers))

    out = BytesIO()
    BytesGenerator(out, policy=wire).flatten(report, linesep="\r\n")
    return out.getvalue()


def _explanation(
    reporting_mta: str, queue_id: str, arrived: datetime, failures: Sequence[FailedRecipient]
) -> MIMEPart:
    """Part 1: what a person reads; carries the diagnostics in full UTF-8."""
    expired = any(f.status.startswith("4.") for f in failures)
    lines = [
        f"This is the mail gateway at {reporting_mta}.",
        "",
        "Your message could not be delivered to the recipients listed below,",
        "and the gateway has stopped trying.",
        "",
        f"Gateway queue id: {queue_id}",
        f"Received:         {format_datetime(arrived)}",
    ]
    if expired:
        lines += [
            "",
            "A 4.x.x status means the receiving server kept refusing the message",
            "temporarily until its time in the gateway's queue ran out.",
        ]
    lines += ["", "Recipients:", ""]
    for failure in failures:
        lines.append(f"<{failure.recipient}>: {failure.status}")
        if failure.remote_mta:
            lines.append(f"    host {failure.remote_mta} said: {failure.diagnostic or '(nothing)'}")
        elif failure.diagnostic:
            lines.append(f"    {failure.diagnostic}")
        lines.append("")
    lines.append("The headers of your message are attached.")
    part = MIMEPart(policy=policy.SMTP)  # QP lines wrap at this policy's 78 columns
    part.set_content("\n".join(lines) + "\n", charset="utf-8", cte="quoted-printable")
    part["Content-Description"] = "Notification"
    return part


def _delivery_status(
    reporting_mta: str,
    queue_id: str,
    arrived: datetime,
    sent: datetime,
    failures: Sequence[FailedRecipient],
) -> Message:
    """Part 2: the RFC 3464 fields, one per-message block then one block per recipient.

    The email package only serialises ``message/delivery-status`` from a list of header
    blocks, so each block is a header-only Message. Fields must be US-ASCII; non-ASCII is
    kept reversibly as RFC 6533 ``\\x{HHHH}`` escapes (the text part has the original).
    """
    per_message = Message(policy=_WIRE)
    per_message["Reporting-MTA"] = f"dns; {_ascii(reporting_mta)}"
    per_message["X-Mailgate-Queue-ID"] = _ascii(queue_id)
    per_message["Arrival-Date"] = format_datetime(arrived)
    blocks = [per_message]
    for failure in failures:
        block = Message(policy=_WIRE)
        address_type = "rfc822" if failure.recipient.isascii() else "utf-8"
        if failure.original_recipient:  # RFC 3464 2.3.1: the address the sender gave
            original_type = "rfc822" if failure.original_recipient.isascii() else "utf-8"
            block["Original-Recipient"] = f"{original_type}; {_ascii(failure.original_recipient)}"
        block["Final-Recipient"] = f"{address_type}; {_ascii(failure.recipient)}"
        block["Action"] = "failed"
        block["Status"] = failure.status
        if failure.remote_mta:
            block["Remote-MTA"] = f"dns; {_ascii(failure.remote_mta)}"
        if failure.diagnostic:
            block["Diagnostic-Code"] = f"smtp; {_ascii(failure.diagnostic)}"
        block["Last-Attempt-Date"] = format_datetime(sent)
        blocks.append(block)
    part = Message(policy=_WIRE)
    part["Content-Type"] = "message/delivery-status"
    part["Content-Description"] = "Delivery report"
    part.set_payload(blocks)
    return part


def _headers_part(original_headers: bytes) -> Message:
    """Part 3: the original header section, byte for byte apart from line endings.

    Headers may hold raw UTF-8 (SMTPUTF8 or sloppy clients); quoted-printable keeps the
    bounce 7-bit clean while ``get_payload(decode=True)`` returns the exact bytes.
    """
    lines = original_headers.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    data = b"\n".join(lines) + b"\n"
    part = Message(policy=_WIRE)
    if data.isascii():
        part["Content-Type"] = "text/rfc822-headers"
        part["Content-Transfer-Encoding"] = "7bit"
        part.set_payload(data.decode("ascii"))
    else:
        part["Content-Type"] = "text/rfc822-headers"
        if is_utf8(data):
            part.set_param("charset", "utf-8")
        part["Content-Transfer-Encoding"] = "quoted-printable"
        part.set_payload(binascii.b2a_qp(data, quotetabs=False, istext=True).decode("ascii"))
    part["Content-Description"] = "Undelivered message headers"
    return part


def _check_status(status: str) -> None:
    """RFC 3463 ``class.subject.detail``; only 4 and 5 make sense in a failure report."""
    pieces = status.split(".")
    ok = (
        len(pieces) == 3
        and pieces[0] in ("4", "5")
        and all(p.isascii() and p.isdigit() and 1 <= len(p) <= 3 for p in pieces[1:])
    )
    if not ok:
        raise ValueError(f"bad enhanced status {status!r}: expected e.g. '5.1.1' or '4.4.7'")


def _ascii(text: str) -> str:
    """One header-safe ASCII line: non-ASCII as RFC 6533 ``\\x{HHHH}``, whitespace collapsed.

    Cut at ``_FIELD_MAX`` (never inside an escape) so no field needs folding.
    """
    out: list[str] = []
    size = 0
    for char in " ".join(text.split()):
        if char == "\\":
            piece = "\\x{5C}"
        elif char.isascii() and char.isprintable():
            piece = char
        else:
            piece = f"\\x{{{ord(char):04X}}}"
        if size + len(piece) > _FIELD_MAX:
            out.append("...")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _utc(moment: datetime) -> datetime:
    """Naive means UTC here: the spool records UTC, never local time."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
