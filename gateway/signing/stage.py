"""The last steps before delivery (MOST 16.2), after every filter and header edit.

Outbound (submission): the sender's S/MIME or PGP/MIME signature and the encryption a
subject tag asks for (``protect.py``), then the DKIM signature of the From domain, last,
so nothing after it changes a signed byte. Inbound: the verification results of the
message as it arrived (DKIM, S/MIME, PGP) in one Authentication-Results field named after
``gateway.hostname``, any field claiming that name removed first; with
``signing.decrypt_inbound``, local recipients whose key the gateway holds get the message
decrypted (and its inner signature checked), the others get it as it came.

Each step is a pipeline ``Verdict``: transforms (the relay records each as
``message_transformed`` naming its rule and the keys' fingerprints), or one refusal naming
the rule: temporary trouble is a 451 (never unsigned or plain mail), a key that cannot
serve a 5xx. A DNS lookup that fails during verification is ``dkim=temperror``, never 4xx.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.pipeline import MessageContext, Verdict, addresses_in, first_header
from gateway.signing import dkim, protect, results, smime
from gateway.signing.keys import KeyStore, KeyStoreError
from gateway.smtp import replies
from gateway.spool import Body, Spool

log = logging.getLogger(__name__)
SIGNED_OR_ENCRYPTED = (b"multipart/signed", b"multipart/encrypted", b"pkcs7-mime")
INLINE_BELOW = 64 * 1024  # bytes of an in-memory body signed on the loop
# Bodies for groups of recipients, and what the event says of them.
Protected = tuple[list[tuple[tuple[str, ...], Body]], str]


@dataclass(frozen=True, slots=True)
class StageSettings:
    """What the stage needs of the config (SIGHUP replaces it whole)."""

    hostname: str
    domains: tuple[str, ...]
    dkim_selector: str | None
    verify_inbound: bool
    dns_timeout: float
    dns_resolver: tuple[str, int] | None
    policy: protect.Policy = field(
        default_factory=lambda: protect.Policy(True, ("[encrypt]",), "reject", "smime")
    )
    decrypt_inbound: bool = False
    trusted: tuple[x509.Certificate, ...] = ()  # S/MIME trust anchors (signing.smime_ca_file)
    crls: tuple[x509.CertificateRevocationList, ...] = ()


class SigningStage:
    def __init__(self, keys: KeyStore, spool: Spool, settings: StageSettings) -> None:
        self.keys = keys
        self.spool = spool
        self.configure(settings)

    def configure(self, settings: StageSettings) -> None:
        self.settings = settings
        self.txt_lookup = dkim.TxtLookup(settings.dns_timeout, settings.dns_resolver)

    async def run(self, ctx: MessageContext) -> list[Verdict]:
        """Transforms to apply in order, or a single refusal."""
        if ctx.listener == "inbound":
            return await self._inbound(ctx)
        return await self._outbound(ctx)

    # -- outbound --------------------------------------------------------------------

    async def _outbound(self, ctx: MessageContext) -> list[Verdict]:
        verdicts: list[Verdict] = []
        groups: list[tuple[tuple[str, ...], Body]] = [(tuple(ctx.recipients), ctx.body)]
        headers = ctx.body.headers
        sender = from_address(headers)
        policy = self.settings.policy
        local_sender = sender if sender and self._is_local(sender) else None
        subject = first_header(headers, b"subject")
        encrypt = protect.subject_asks_encryption(subject, policy.encrypt_subject_tags)
        if not encrypt and not (
            policy.sign_outbound and local_sender and self.keys.may_hold(local_sender)
        ):  # most mail: no key to sign with, no encryption asked: no thread, no lookups
            dkim_verdict = await self._dkim(ctx, groups)
            return [dkim_verdict] if dkim_verdict is not None else []

        def make_plan() -> protect.Plan:
            return protect.plan(self.keys, policy, local_sender, subject, ctx.recipients)

        def apply_plan(the_plan: protect.Plan) -> Protected | None:
            """Sign, encrypt and store, in one go: a thread hop per step cost the loop as
            much as a small message's signature."""
            if the_plan.changes_nothing:
                return None
            applied = protect.apply(self.keys, the_plan, ctx.body.read(), ctx.recipients)
            bodies = [
                (tuple(recipients), self.spool.new_body(data, ctx.queue_id))
                for recipients, data in applied.groups
            ]
            return bodies, applied.summary

        # A small S/MIME signature (~0.5 ms with RSA-2048) is made on the loop, as DKIM's
        # is: in a thread the S/MIME line was slower in each of 7 A/B pairs (380-501
        # against 446-577 msgs/s, 14:27-14:35 UTC). Not with a keyring (the plan may ask
        # gpg: milliseconds), not for encryption, big bodies or big keys.
        small = ctx.body.in_memory and ctx.body.size < INLINE_BELOW
        try:
            if not encrypt and small and not self.keys.has_keyring():
                the_plan = make_plan()  # a stat per message, a file read per new certificate
                if _cheap_to_sign(the_plan):
                    protected = apply_plan(the_plan)
                else:
                    protected = await asyncio.to_thread(apply_plan, the_plan)
            else:
                protected = await asyncio.to_thread(lambda: apply_plan(make_plan()))
            if protected is not None:
                groups = protected[0]
                verdicts.append(self._transform("signing", protected[1], groups))
        except protect.Refused as exc:
            reply = replies.ENCRYPTION_REFUSED if exc.rule == "encryption" else replies.CANNOT_SIGN
            return [Verdict.reject(reply, exc.rule, exc.reason)]
        except protect.Unavailable as exc:
            return [Verdict.tempfail(replies.SIGNING_UNAVAILABLE, exc.rule, exc.reason)]
        dkim_verdict = await self._dkim(ctx, groups)
        if dkim_verdict is not None:
            verdicts.append(dkim_verdict)
        return verdicts

    def _is_local(self, address: str) -> bool:
        return address.rpartition("@")[2].lower() in self.settings.domains

    @staticmethod
    def _transform(rule: str, reason: str, groups: list[tuple[tuple[str, ...], Body]]) -> Verdict:
        if len(groups) == 1:
            return Verdict.transform(rule, reason, body=groups[0][1])
        return Verdict.transform(rule, reason, body=groups[0][1], deliveries=groups)

    async def _dkim(
        self, ctx: MessageContext, groups: list[tuple[tuple[str, ...], Body]]
    ) -> Verdict | None:
        """Sign every body last; None when the domain signs nothing."""
        selector = self.settings.dkim_selector
        domain = from_domain(ctx.body.headers)
        if selector is None or domain is None or domain not in self.settings.domains:
            return None
        try:
            key = self.keys.dkim_key(domain, selector)  # a stat and a cache hit: inline
        except KeyStoreError as exc:
            return Verdict.tempfail(replies.SIGNING_UNAVAILABLE, "dkim", str(exc))
        if key is None:
            return None

        def sign(body: Body) -> Body:
            field = dkim.signature_field(body.read(), key.domain, key.selector, key.key)
            name, _, value = field.rstrip(b"\r\n").partition(b": ")
            return self.spool.with_header_edits(
                body, [(name.decode(), value.decode("ascii"))], frozenset(), ctx.queue_id
            )

        try:
            signed = []
            for recipients, body in groups:
                # As the MIME parse does (mime/pool.py): a small message in memory is
                # signed on the loop (~0.4 ms); a thread would cost more in handoffs and
                # GIL contention than it saves (so did the RSA operation alone in a thread,
                # though cryptography releases the GIL for it). Bigger ones go to a thread.
                small = body.in_memory and body.size < INLINE_BELOW
                signed.append(
                    (recipients, sign(body) if small else await asyncio.to_thread(sign, body))
                )
        except Exception as exc:  # a message dkimpy cannot read: say so, do not send unsigned
            log.warning("DKIM signing of %s failed: %s", ctx.queue_id, type(exc).__name__)
            return Verdict.reject(replies.CANNOT_SIGN, "dkim", f"cannot sign: {exc}"[:200])
        for _, body in groups:  # the unsigned copies made on the way
            if body is not ctx.body:
                await asyncio.to_thread(body.discard) if body.path else body.discard()
        reason = f"signed d={key.domain} s={key.selector} a={key.algorithm}"
        return self._transform("dkim", reason, signed)

    # -- inbound ---------------------------------------------------------------------

    async def _inbound(self, ctx: MessageContext) -> list[Verdict]:
        settings = self.settings
        if not settings.verify_inbound:
            return []
        body = ctx.body
        lowered = body.headers.lower()
        needs_body = b"dkim-signature:" in lowered or any(k in lowered for k in SIGNED_OR_ENCRYPTED)
        if not needs_body:  # most mail: nothing to look up, no need to read the body
            examined = Examined([results.MethodResult("dkim", "none")])
        else:
            local = [r for r in ctx.recipients if self._is_local(r)]
            examined = await asyncio.to_thread(self._examine, body, local)
        verdicts = []
        groups: list[tuple[tuple[str, ...], Body]] = []
        for recipients, data, found in examined.groups:
            source = Body.from_bytes(data)
            groups.append((recipients, await self._stamp(source, found, ctx.queue_id)))
        rest = tuple(r for r in ctx.recipients if not any(r in g for g, _, _ in examined.groups))
        if rest or not groups:
            groups.append(
                (
                    rest or tuple(ctx.recipients),
                    await self._stamp(body, examined.found, ctx.queue_id),
                )
            )
        if examined.notes:
            verdicts.append(Verdict.transform("decryption", "; ".join(examined.notes)))
        summary = "; ".join(str(r) for r in examined.found)
        verdicts.append(self._transform("authentication_results", summary, groups))
        return verdicts

    async def _stamp(self, body: Body, found: list[results.MethodResult], queue_id: str) -> Body:
        hostname = self.settings.hostname
        field = (
            b"Authentication-Results: " + results.header_value(hostname, found).encode() + b"\r\n"
        )
        _, forged = results.drop_ours(body.headers, hostname)
        if not forged:
            return body.with_prefix(field)

        def stamp(section: bytes) -> bytes:
            return field + results.drop_ours(section, hostname)[0]

        return await asyncio.to_thread(self.spool.with_header_section, body, stamp, queue_id)

    def _examine(self, body: Body, local: list[str]) -> Examined:
        """Blocking: reads the message, looks keys up in DNS, runs openssl and gpg."""
        message = body.read()
        found = self._dkim_results(message)
        found += self._signature_results(message)
        examined = Examined(found)
        if self.settings.decrypt_inbound and local:
            try:
                self._decrypt(message, local, examined)
            except Exception as exc:  # keys unreadable, gpg gone: delivered as it came
                log.warning("inbound decryption failed: %s", type(exc).__name__)
                examined.groups.clear()
                examined.notes.append(f"not decrypted: {type(exc).__name__}")
        return examined

    def _dkim_results(self, message: bytes) -> list[results.MethodResult]:
        try:
            checked = dkim.verify(message, self.txt_lookup)
        except Exception as exc:  # a header section dkimpy cannot parse
            return [results.MethodResult("dkim", "permerror", reason=type(exc).__name__)]
        if not checked:
            return [results.MethodResult("dkim", "none")]
        return [
            results.MethodResult(
                "dkim", r.result,
                tuple((k, v) for k, v in (("header.d", r.domain), ("header.s", r.selector)) if v),
                r.reason if r.result != "pass" else None,
            )
            for r in checked
        ]  # fmt: skip

    def _signature_results(self, message: bytes) -> list[results.MethodResult]:
        """smime= and x-pgp= for a signed message (nothing for one that is not). A check
        that could not run is ``temperror``: the message is still delivered, stamped."""
        if smime.is_signed(message):
            try:
                checked = smime.verify(message, self.settings.trusted, crls=self.settings.crls)
            except smime.SmimeTemporaryError as exc:
                return [results.MethodResult("smime", "temperror", reason=str(exc))]
            except Exception as exc:
                return [results.MethodResult("smime", "permerror", reason=type(exc).__name__)]
            return [smime_result(checked)]
        if _pgp_signed(message) and self.keys.has_keyring():
            try:
                return [pgp_result(self.keys.keyring().verify(message))]
            except Exception as exc:
                return [results.MethodResult("x-pgp", "temperror", reason=type(exc).__name__)]
        return []

    def _decrypt(self, message: bytes, local: list[str], examined: Examined) -> None:
        """Local recipients holding the key get the plaintext, its inner signature checked."""
        outer_dkim = [r for r in examined.found if r.method == "dkim"]
        if smime.is_encrypted(message):
            for recipient in local:
                bundles = [b for b in self.keys.smime_bundles(recipient) if b.key is not None]
                for bundle in bundles:
                    try:
                        plain = smime.decrypt(message, bundle)
                    except smime.SmimeError:
                        continue
                    inner = self._signature_results(plain) or [
                        results.MethodResult("smime", "none")
                    ]
                    examined.add(recipient, plain, outer_dkim + inner)
                    fingerprint = smime_fingerprint(bundle)
                    examined.notes.append(f"S/MIME for {recipient} with {fingerprint}")
                    break
        elif _pgp_encrypted(message) and self.keys.has_keyring():
            keyring = self.keys.keyring()
            holders = [r for r in local if keyring.signing_key(r) is not None or any(
                k.secret for k in keyring.keys(r))]  # fmt: skip
            if not holders:
                return
            try:
                decrypted = keyring.decrypt(message)
            except Exception as exc:  # not for our keys, or broken: delivered as it came
                examined.notes.append(f"PGP not decrypted: {type(exc).__name__}")
                return
            inner = [pgp_result(decrypted.verification)] if decrypted.signed else []
            for recipient in holders:
                examined.add(recipient, decrypted.message, outer_dkim + inner)
            examined.notes.append("PGP for " + ", ".join(holders))


@dataclass
class Examined:
    """What inbound verification found, and the decrypted copies for some recipients."""

    found: list[results.MethodResult]
    groups: list[tuple[tuple[str, ...], bytes, list[results.MethodResult]]] = field(
        default_factory=list
    )
    notes: list[str] = field(default_factory=list)

    def add(self, recipient: str, data: bytes, found: list[results.MethodResult]) -> None:
        for index, (recipients, existing, same) in enumerate(self.groups):
            if existing == data and same == found:
                self.groups[index] = ((*recipients, recipient), existing, same)
                return
        self.groups.append(((recipient,), data, found))


def smime_fingerprint(bundle: Any) -> str:
    from gateway.signing.certs import fingerprint

    return fingerprint(bundle.certificate)[:16]


def smime_result(checked: smime.Verification) -> results.MethodResult:
    props: tuple[tuple[str, str], ...] = ()
    if checked.signer is not None and checked.signer.addresses:
        props = (("smime.smime-identifier", sorted(checked.signer.addresses)[0]),)
    reason = checked.reason if checked.status != "pass" else None
    return results.MethodResult("smime", checked.status, props, reason)


def pgp_result(checked: Any) -> results.MethodResult:
    props: tuple[tuple[str, str], ...] = ()
    if checked.fingerprint:
        props = (("x-pgp.fingerprint", checked.fingerprint),)
    reason = checked.reason if checked.status != "pass" else None
    return results.MethodResult("x-pgp", checked.status, props, reason)


def _pgp_signed(message: bytes) -> bool:
    from gateway.signing import pgp

    return pgp.is_signed(message)


def _pgp_encrypted(message: bytes) -> bool:
    from gateway.signing import pgp

    return pgp.is_encrypted(message)


def _cheap_to_sign(the_plan: protect.Plan) -> bool:
    """Nothing to do, or one S/MIME signature with an EC key or RSA of 2048 bits or less."""
    if the_plan.changes_nothing:
        return True
    if the_plan.encrypt or the_plan.signer is None or the_plan.signer[0] != "smime":
        return False
    key = the_plan.signer[1].key
    return not isinstance(key, rsa.RSAPrivateKey) or key.key_size <= 2048


def from_address(headers: bytes) -> str | None:
    """The (first) From address, lower case."""
    value = first_header(headers, b"from")
    if value is None:
        return None
    addresses = [a for a in addresses_in([value]) if "@" in a]
    return addresses[0].strip("<>") if addresses else None


def from_domain(headers: bytes) -> str | None:
    """The domain of the (first) From address, lower case."""
    address = from_address(headers)
    return address.rpartition("@")[2] if address else None
