"""The last steps before delivery (MOST 16.2), after every filter and header edit.

Outbound (submission): the DKIM signature of the From domain, when it is local and has a
key, added last so nothing after it changes a signed byte. Inbound: the verification
results of the message as it arrived, in one Authentication-Results field named after
``gateway.hostname``, any field claiming that name having been removed first.

Each step is a pipeline ``Verdict``: a transform (the relay records it as
``message_transformed`` naming the rule and the key), or a refusal naming the rule: a
key that exists but cannot be read now is a 451 (never unsigned mail), and a DNS
lookup that fails during verification is ``dkim=temperror``, never a 4xx.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from dataclasses import dataclass

from gateway.pipeline import MessageContext, Verdict, first_header
from gateway.signing import dkim, results
from gateway.signing.keys import KeyStore, KeyStoreError
from gateway.smtp import replies
from gateway.spool import Body, Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StageSettings:
    """What the stage needs of the config (SIGHUP replaces it whole)."""

    hostname: str
    domains: tuple[str, ...]
    dkim_selector: str | None
    verify_inbound: bool
    dns_timeout: float
    dns_resolver: tuple[str, int] | None


class SigningStage:
    def __init__(self, keys: KeyStore, spool: Spool, settings: StageSettings) -> None:
        self.keys = keys
        self.spool = spool
        self.configure(settings)

    def configure(self, settings: StageSettings) -> None:
        self.settings = settings
        self.txt_lookup = dkim.TxtLookup(settings.dns_timeout, settings.dns_resolver)

    async def run(self, ctx: MessageContext) -> Verdict:
        if ctx.listener == "inbound":
            return await self._inbound(ctx)
        return await self._outbound(ctx)

    # -- outbound --------------------------------------------------------------------

    async def _outbound(self, ctx: MessageContext) -> Verdict:
        settings = self.settings
        if settings.dkim_selector is None:
            return Verdict.accept()
        domain = from_domain(ctx.body.headers)
        if domain is None or domain not in settings.domains:
            return Verdict.accept()
        try:
            key = await asyncio.to_thread(self.keys.dkim_key, domain, settings.dkim_selector)
        except KeyStoreError as exc:
            return Verdict.tempfail(replies.SIGNING_UNAVAILABLE, "dkim", str(exc))
        if key is None:
            return Verdict.accept()
        body = ctx.body

        def sign() -> Body:
            field = dkim.signature_field(body.read(), key.domain, key.selector, key.key)
            name, _, value = field.rstrip(b"\r\n").partition(b": ")
            return self.spool.with_header_edits(
                body, [(name.decode(), value.decode("ascii"))], frozenset(), ctx.queue_id
            )

        try:
            signed = await asyncio.to_thread(sign)
        except Exception as exc:  # a message dkimpy cannot read: say so, do not send unsigned
            log.warning("DKIM signing of %s failed: %s", ctx.queue_id, type(exc).__name__)
            return Verdict.reject(replies.CANNOT_SIGN, "dkim", f"cannot sign: {exc}"[:200])
        return Verdict.transform(
            "dkim",
            f"signed d={key.domain} s={key.selector} a={key.algorithm}",
            body=signed,
        )

    # -- inbound ---------------------------------------------------------------------

    async def _inbound(self, ctx: MessageContext) -> Verdict:
        settings = self.settings
        if not settings.verify_inbound:
            return Verdict.accept()
        body = ctx.body
        if b"dkim-signature:" in body.headers.lower():
            found = await asyncio.to_thread(self._verify, body)
        else:  # most mail: nothing to look up, no need to read the body
            found = [results.MethodResult("dkim", "none")]
        value = results.header_value(settings.hostname, found)

        field = b"Authentication-Results: " + value.encode() + b"\r\n"
        _, forged = results.drop_ours(body.headers, settings.hostname)
        if forged:

            def stamp(section: bytes) -> bytes:
                return field + results.drop_ours(section, settings.hostname)[0]

            stamped = await asyncio.to_thread(
                self.spool.with_header_section, body, stamp, ctx.queue_id
            )
        else:
            stamped = body.with_prefix(field)
        summary = "; ".join(str(r) for r in found)
        return Verdict.transform("authentication_results", summary, body=stamped)

    def _verify(self, body: Body) -> list[results.MethodResult]:
        """Blocking: reads the message and looks keys up in DNS."""
        checked = dkim.verify(body.read(), self.txt_lookup)
        if not checked:  # "DKIM-Signature:" was in the text of another field
            return [results.MethodResult("dkim", "none")]
        return [
            results.MethodResult(
                "dkim",
                r.result,
                tuple((k, v) for k, v in (("header.d", r.domain), ("header.s", r.selector)) if v),
                r.reason if r.result != "pass" else None,
            )
            for r in checked
        ]


def from_domain(headers: bytes) -> str | None:
    """The domain of the (first) From address, lower case."""
    value = first_header(headers, b"from")
    if value is None:
        return None
    addresses = [a for _, a in email.utils.getaddresses([value]) if "@" in a]
    return addresses[0].rpartition("@")[2].lower().rstrip(">") if addresses else None
