"""Scan every decoded part with ClamAV's clamd (MOST 15.3, 18.5; MIC 10.2).

Runs only with a ``[filters.clamav]`` section. Each decoded leaf part (attachments,
bodies, parts of forwarded messages) goes to clamd over its INSTREAM protocol, TCP
("HOST:PORT") or a unix socket ("unix:/path"), one connection per part, each exchange
bounded by ``timeout_seconds``.

Decoded parts, not the wire message: 20 MiB of attachments is about 28 MB of base64,
above the 25 MB ``StreamMaxLength`` of Debian's packaged clamd.conf, and peers that
skip what is over their limit pass such mail unscanned. The Inspection carries no
bytes, so this filter decodes the message again, in a worker thread, with the standard
library's feed parser as ``gateway/mime/parse.py`` tunes it: the one deliberate second
decode, paid only when ClamAV is configured, one decoded part in memory at a time.

A virus is refused (554 5.7.1 naming the signature and the part). clamd down, slower
than ``timeout_seconds``, over its size limit or answering anything but OK/FOUND is a
temporary failure (451 4.7.1, recorded as ``message_tempfailed``): never a silent pass.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from email.message import Message

# The one parse's tree builder and decoder (private there; ask for public names).
from gateway.mime import parse as mime_parse
from gateway.pipeline import MessageContext, Verdict, register
from gateway.smtp import replies
from gateway.spool import Body

RULE = "clamav"
CHUNK = 64 * 1024
MAX_REPLY = 4096


@dataclass(frozen=True, slots=True)
class Config:
    # "HOST:PORT" (e.g. "127.0.0.1:3310") or "unix:/run/clamav/clamd.ctl". Required:
    # the empty default only stands for "not written", which validate() cannot tell
    # from an absent section, so a section without it tempfails every message (451).
    address: str = ""
    timeout_seconds: float = 30.0  # per clamd exchange (one part): no answer in time is a 451


class ScannerError(Exception):
    """clamd could not give a clean or infected answer: a temporary failure."""


def parse_address(address: str) -> tuple[str, int] | str:
    """("host", port) for TCP, or the socket path for "unix:/path"; ValueError if neither."""
    if address.startswith("unix:"):
        path = address.removeprefix("unix:")
        if not path.startswith("/"):
            raise ValueError("a unix socket needs an absolute path")
        return path
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT")
    return host, int(port)


def validate(cfg: Config) -> list[str]:
    if not cfg.address:
        return ['address: missing; write e.g. "127.0.0.1:3310" or "unix:/run/clamav/clamd.ctl"']
    try:
        parse_address(cfg.address)
    except ValueError:
        return [
            f'address: expected "HOST:PORT" or "unix:/path", got "{cfg.address}"; '
            'write e.g. "127.0.0.1:3310" or "unix:/run/clamav/clamd.ctl"'
        ]
    return []


def parse(body: Body) -> Message:
    """The MIME tree, by the one parse's tuned feeding (chunks in, long base64 runs left
    in the body and referred to: kilobytes for a 28 MB message, where ``BytesParser``
    takes seven times its size); payloads stay encoded until ``decode`` asks for one.
    Blocking: run it in a thread."""
    if body.in_memory:
        return mime_parse._parse(b"", body.read(), None)
    return mime_parse._parse(body.prefix, None, str(body.path))


def leaves(message: Message) -> list[tuple[str, Message]]:
    """(where, part) of every leaf part, forwarded messages included."""
    found: list[tuple[str, Message]] = []
    _leaves(message, "", found)
    return found


def _leaves(part: Message, number: str, found: list[tuple[str, Message]]) -> None:
    if part.is_multipart():
        for index, child in enumerate(part.get_payload(), 1):  # type: ignore[arg-type]
            _leaves(child, f"{number}.{index}" if number else str(index), found)
        return
    name = part.get_filename()
    found.append((f"attachment {name}" if name else f"part {number or '1'}", part))


def decode(part: Message) -> bytes:
    """A leaf's bytes after base64 / quoted-printable, decoded as the one parse decodes
    them (lenient, as mail readers are). Blocking: run it in a thread."""
    return mime_parse._decoded(part)


async def scan(address: str, data: bytes, timeout: float) -> str | None:
    """The signature clamd finds in ``data``, or None if clean; ScannerError otherwise."""
    try:
        async with asyncio.timeout(timeout):
            return await _exchange(address, data)
    except TimeoutError:
        raise ScannerError(f"clamd at {address} gave no answer within {timeout:g} s") from None
    except OSError as exc:
        raise ScannerError(f"clamd at {address}: {exc.strerror or exc}") from None


async def _exchange(address: str, data: bytes) -> str | None:
    where = parse_address(address)
    if isinstance(where, str):
        reader, writer = await asyncio.open_unix_connection(where)
    else:
        reader, writer = await asyncio.open_connection(*where)
    try:
        sent_error: OSError | None = None
        try:
            writer.write(b"zINSTREAM\0")
            view = memoryview(data)
            for start in range(0, len(view), CHUNK):
                chunk = view[start : start + CHUNK]
                writer.write(struct.pack("!L", len(chunk)))
                writer.write(chunk)
                await writer.drain()
            writer.write(struct.pack("!L", 0))
            await writer.drain()
        except OSError as exc:
            # clamd closes the stream on a size limit; its reason may still be readable.
            sent_error = exc
        try:
            raw = await reader.readuntil(b"\0")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
            partial = getattr(exc, "partial", b"")
            if partial:
                raw = partial
            elif sent_error is not None:
                raise ScannerError(f"clamd closed the stream: {sent_error}") from None
            else:
                raise ScannerError(
                    f"clamd closed the connection without an answer ({exc})"
                ) from None
        return _verdict(raw[:MAX_REPLY].rstrip(b"\0\n").decode("utf-8", "replace"))
    finally:
        # The answer is read (or never will be): no graceful close, which would wait
        # to flush what a hung clamd never reads.
        writer.transport.abort()


def _verdict(answer: str) -> str | None:
    """ "stream: OK" -> None; "stream: NAME FOUND" -> NAME; anything else is an error."""
    _, _, result = answer.partition(": ")
    if answer.endswith(" FOUND") and result:
        return result.removesuffix(" FOUND").strip()
    if result == "OK":
        return None
    raise ScannerError(f"clamd answered {answer!r}")


@register(RULE, Config, default_on=False, validate=validate)
async def check(ctx: MessageContext, cfg: Config) -> Verdict:
    if not cfg.address:
        return Verdict.tempfail(
            replies.SCANNER_UNAVAILABLE, RULE, "filters.clamav.address is not set"
        )
    message = await asyncio.to_thread(parse, ctx.body)
    scanned = 0
    for where, part in leaves(message):
        # One decoded part in memory at a time, besides the tree.
        data = await asyncio.to_thread(decode, part)
        if not data:
            continue
        verdict = await _scan_part(cfg, where, data)
        del data
        if verdict is not None:
            return verdict
        scanned += 1
    if scanned == 0:  # nothing decodable: scan the message as it came, never skip it
        data = await asyncio.to_thread(ctx.body.read)
        return await _scan_part(cfg, "message", data) or Verdict.accept()
    return Verdict.accept()


async def _scan_part(cfg: Config, where: str, data: bytes) -> Verdict | None:
    """None when clean; a reject (virus) or tempfail (no clean answer) otherwise."""
    try:
        signature = await scan(cfg.address, data, cfg.timeout_seconds)
    except ScannerError as exc:
        return Verdict.tempfail(replies.SCANNER_UNAVAILABLE, RULE, f"{exc} ({where})")
    if signature is not None:
        return Verdict.reject(replies.VIRUS_FOUND, RULE, f"{signature} in {where}")
    return None
