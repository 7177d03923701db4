"""The filter pipeline: MessageContext in, Verdict out.

Filters (``gateway/filters/<name>.py``) register themselves with ``@register``; the
runner calls the enabled ones in configured order and stops at the first
reject or tempfail. A verdict may also *transform* the message: add or remove header
fields, replace the recipients (group expansion) or the body (signing); later filters
and the delivery see the result. A filter that raises gives a tempfail naming it,
never a silent accept: a broken policy must not wave mail through. A message the one
MIME parse cannot read within its caps is refused (5xx): never passed unread.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import email.utils
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from gateway.mime.model import Inspection, Scan, ScanFunction
from gateway.smtp import replies
from gateway.smtp.replies import Reply
from gateway.spool import Body

if TYPE_CHECKING:
    from gateway.directory.mailboxes import Directory
    from gateway.events.writer import EventLog

# The one parse of a body, running the filters' scans beside it.
Inspect = Callable[[Body, tuple[Scan, ...]], Awaitable[Inspection]]

log = logging.getLogger(__name__)


class FilterServices(Protocol):
    """What a filter may act on beyond the message (the rate limit send-locks a mailbox
    and records it); the SMTP handler passes the running gateway's."""

    @property
    def directory(self) -> Directory: ...

    @property
    def events(self) -> EventLog: ...


@dataclass
class MessageContext:
    """Everything a filter may look at; filters share state only through these fields."""

    queue_id: str
    session_id: str
    listener: str  # "inbound", "submission" (STARTTLS) or "submissions" (implicit TLS)
    client: str
    user: str | None
    sender: str
    recipients: list[str]
    body: Body
    received_at: datetime
    # Addresses the authenticated user may send as (itself and delegated unit mailboxes).
    sender_identities: frozenset[str] = frozenset()
    # The one MIME parse (gateway/mime), run at most once, when a filter first asks.
    inspector: Inspect | None = None
    _inspection: asyncio.Future[Inspection] | None = field(default=None, init=False, repr=False)
    # Header field edits the filters asked for, applied to the body before delivery.
    header_edits: list[HeaderEdit] = field(default_factory=list)
    # The directory and event log, for filters that act on a mailbox (None in unit tests).
    services: FilterServices | None = None
    # What the enabled filters want run over the texts where the parse runs (run_filters).
    scans: tuple[Scan, ...] = ()
    # Recipients RCPT found to be group mailboxes (lower case), for the groups filter.
    group_recipients: frozenset[str] = frozenset()
    # The envelope as received, whatever transforms do to ``recipients`` (the events keep it).
    envelope_recipients: tuple[str, ...] = field(default=(), init=False)
    # Set by group expansion: final recipient -> "direct" or the chain of groups.
    delivery_plan: dict[str, str] = field(default_factory=dict)
    # Set by signing when recipients get different bodies (each encrypted to its own key,
    # or plain): (recipients, body) pairs covering ``recipients``; None: ``body`` for all.
    deliveries: list[tuple[tuple[str, ...], Body]] | None = None

    def __post_init__(self) -> None:
        self.envelope_recipients = tuple(self.recipients)

    async def inspection(self) -> Inspection:
        """The parsed message (parts, texts, attachment bytes), computed once and shared:
        filters asking together wait for the same parse. Raises Uninspectable when the
        parse could not read the message within its caps."""
        if self._inspection is None:
            if self.inspector is None:
                raise RuntimeError("no MIME inspector configured")
            self._inspection = asyncio.ensure_future(self.inspector(self.body, self.scans))
        found = await asyncio.shield(self._inspection)
        if found.problems:
            raise Uninspectable("; ".join(found.problems))
        return found

    @cached_property
    def headers(self) -> EmailMessage:
        """The parsed header section (the body is not parsed here)."""
        parser = email.parser.BytesHeaderParser(policy=email.policy.default)
        return parser.parsebytes(self.body.headers)  # type: ignore[return-value]

    @cached_property
    def message_id(self) -> str | None:
        """The Message-ID header, as the sender wrote it (for the event log)."""
        return first_header(self.body.headers, b"message-id")


def first_header(section: bytes, name: bytes) -> str | None:
    """The first ``name`` field of a raw header section, unfolded (RFC 5322 2.2.3), or None.

    Every message needs its Message-ID for the events; the ``email`` parser costs a
    twentieth of the relay's CPU for it, this scan almost nothing. Filters that need
    real parsing use ``MessageContext.headers``.
    """
    return next(_fields(section, name), None) or None


def header_values(section: bytes, name: bytes) -> list[str]:
    """Every ``name`` field of a raw header section, unfolded, in order."""
    return list(_fields(section, name))


def _fields(section: bytes, name: bytes) -> Iterator[str]:
    """Also ``Name :`` (blanks before the colon, RFC 5322 4.5's obsolete syntax, which
    mail readers still show): a ``From :`` field must not slip past the From: checks."""
    name = name.lower()
    lines = section.split(b"\r\n")
    for index, line in enumerate(lines):
        if line[: len(name)].lower() != name:
            continue
        rest = line[len(name) :].lstrip(b" \t")
        if rest[:1] != b":":
            continue
        value = [rest[1:]]
        for follower in lines[index + 1 :]:
            if follower[:1] not in (b" ", b"\t"):
                break
            value.append(follower)
        yield b"".join(value).decode("utf-8", "replace").strip()


# ``Name <local@domain>`` or ``local@domain``, with no quotes, comments, groups, lists,
# routes or escapes: what most mail carries, and what the email package's address parser
# (a Python step per character) reads the same way. Anything else goes to that parser.
_PLAIN_ADDRESS = r"[^\s\"(),:;<>@\[\]\\]+@[^\s\"(),:;<>@\[\]\\]+"
_PLAIN_FIELD = re.compile(
    r"[ \t]*(?:[^\"(),:;<>@\[\]\\]*<(" + _PLAIN_ADDRESS + r")>|(" + _PLAIN_ADDRESS + r"))[ \t]*"
)


def addresses_in(values: list[str]) -> list[str]:
    """Every address in these field values, lower case, as ``email.utils.getaddresses``
    reads them (an empty string for one it cannot read); one plain value is read with
    one regex instead (tests compare the two)."""
    if len(values) == 1:
        plain = _PLAIN_FIELD.fullmatch(values[0])
        if plain is not None:
            return [(plain.group(1) or plain.group(2)).lower()]
    return [address.lower() for _, address in email.utils.getaddresses(values)]


class Uninspectable(Exception):
    """The message cannot be read within the inspection caps: refuse it (5xx)."""


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """Add ``name: value`` on top of the header section, or (value None) remove every
    ``name`` field."""

    name: str
    value: str | None = None


class Action(Enum):
    ACCEPT = "accept"
    TRANSFORM = "transform"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reply: Reply | None = None
    rule: str | None = None
    reason: str | None = None
    header_edits: tuple[HeaderEdit, ...] = ()
    recipients: tuple[str, ...] | None = None  # replaces the recipient list when set
    body: Body | None = None  # replaces the body when set
    routes: dict[str, str] | None = None  # how each new recipient was reached
    deliveries: tuple[tuple[tuple[str, ...], Body], ...] | None = None  # per-recipient bodies

    @classmethod
    def accept(cls) -> Verdict:
        return cls(Action.ACCEPT)

    @classmethod
    def transform(
        cls,
        rule: str,
        reason: str,
        *,
        header_edits: Sequence[HeaderEdit] = (),
        recipients: Sequence[str] | None = None,
        body: Body | None = None,
        routes: dict[str, str] | None = None,
        deliveries: Sequence[tuple[Sequence[str], Body]] | None = None,
    ) -> Verdict:
        """Accept, changed: later filters and the delivery see the change."""
        return cls(
            Action.TRANSFORM,
            rule=rule,
            reason=reason,
            header_edits=tuple(header_edits),
            recipients=None if recipients is None else tuple(recipients),
            body=body,
            routes=routes,
            deliveries=None if deliveries is None else tuple((tuple(r), b) for r, b in deliveries),
        )

    @classmethod
    def reject(cls, reply: Reply, rule: str, reason: str) -> Verdict:
        return cls(Action.REJECT, reply.with_rule(rule, reason), rule, reason)

    @classmethod
    def tempfail(cls, reply: Reply, rule: str, reason: str) -> Verdict:
        return cls(Action.TEMPFAIL, reply.with_rule(rule, reason), rule, reason)


FilterCheck = Callable[[MessageContext, Any], Awaitable[Verdict]]


Validate = Callable[[Any], list[str]]


@dataclass(frozen=True, slots=True)
class FilterSpec:
    name: str
    config_type: type
    check: FilterCheck
    default_on: bool = True  # runs with no [filters.NAME] section at all
    always: bool = False  # not configurable: runs first, whatever the config says
    # Checks beyond the field types (e.g. patterns that must compile): "key: problem; fix".
    validate: Validate | None = None
    # ``scan(texts, config)``, run beside the parse (in its worker) so that long texts
    # need not cross to this process; the check reads ``Inspection.scan(name, config)``.
    scan: ScanFunction | None = None


REGISTRY: dict[str, FilterSpec] = {}


def register(
    name: str,
    config_type: type,
    *,
    default_on: bool = True,
    always: bool = False,
    validate: Validate | None = None,
    scan: ScanFunction | None = None,
) -> Callable[[FilterCheck], FilterCheck]:
    """Class-free registration: one name for module, config table and registry entry.
    Registration order (gateway/filters/__init__.py) is the default run order."""

    def decorate(check: FilterCheck) -> FilterCheck:
        REGISTRY[name] = FilterSpec(name, config_type, check, default_on, always, validate, scan)
        return check

    return decorate


@dataclass(frozen=True, slots=True)
class EnabledFilter:
    spec: FilterSpec
    config: Any


Transformed = Callable[[MessageContext, Verdict], None]


async def run_filters(
    ctx: MessageContext,
    enabled: Sequence[EnabledFilter],
    on_transform: Transformed | None = None,
) -> Verdict:
    """Run filters in order; the first reject or tempfail wins. Transforms are applied
    to ``ctx`` as they come (``on_transform`` records each one)."""
    ctx.scans = tuple(
        Scan(item.spec.name, item.spec.scan, item.config)
        for item in enabled
        if item.spec.scan is not None
    )
    for item in enabled:
        try:
            verdict = await item.spec.check(ctx, item.config)
        except Uninspectable as exc:
            return Verdict.reject(replies.CANNOT_INSPECT, "inspection", str(exc))
        except Exception:
            log.exception("filter %s failed on %s", item.spec.name, ctx.queue_id)
            return Verdict.tempfail(replies.LOCAL_ERROR, item.spec.name, "filter error")
        if verdict.action is Action.TRANSFORM:
            apply_transform(ctx, verdict)
            if on_transform is not None:
                on_transform(ctx, verdict)
        elif verdict.action is not Action.ACCEPT:
            return verdict
    return Verdict.accept()


def apply_transform(ctx: MessageContext, verdict: Verdict) -> None:
    ctx.header_edits.extend(verdict.header_edits)
    if verdict.recipients is not None:
        ctx.recipients = list(verdict.recipients)
    if verdict.routes is not None:
        ctx.delivery_plan = dict(verdict.routes)
    if verdict.deliveries is not None:
        ctx.deliveries = [(r, b) for r, b in verdict.deliveries]
    if verdict.body is not None:
        ctx.body = verdict.body
        ctx._inspection = None  # a new body is a new message to inspect
        ctx.__dict__.pop("headers", None)
        ctx.__dict__.pop("message_id", None)
