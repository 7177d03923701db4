"""The one parse: message bytes in, an ``Inspection`` (part tree, names, decoded sizes,
NFC text) out.

``inspect_body`` is a pure top-level function so that it can run in a worker process
(``pool.py``): it reads a spilled body itself, so 30 MB never crosses a pipe (and long
base64 runs are read back from it a slice at a time, never held whole), and it
never raises: whatever goes wrong becomes a problem ("cannot inspect ..."), which
refuses the message with a 5xx instead of passing it unread.

The structure comes from the standard library's ``email`` feed parser (tolerant of
broken boundaries and bad base64, no regex over MIME); header and parameter values are
decoded here, so that RFC 2047 words in any charset, RFC 2231 parameters and raw UTF-8
(SMTPUTF8, 8BITMIME) all reach the rules as NFC Unicode.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import copy
import dataclasses
import email.headerregistry
import email.utils
import posixpath
import quopri
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from email.feedparser import BufferedSubFile, BytesFeedParser
from email.message import Message
from email.policy import Compat32
from typing import BinaryIO

from gateway.mime import extract, sniff
from gateway.mime.extract import Budget, MessageLimit, Uninspectable
from gateway.mime.model import Inspection, InspectionLimits, Part, Scan, ScanResult, TextSource

# Bytes fed to the parser at a time. Past glibc's mmap threshold (128 KiB, which the
# workers keep for big bodies: pool.py) on purpose: the base64 runs built from a chunk
# are kept until their part is joined, and as mmapped blocks they leave no holes in the
# heap (64 KiB runs left a third copy of a 28 MB message in holes).
CHUNK = 256 * 1024

_OFFICE = frozenset({sniff.DOCX, sniff.XLSX, sniff.PPTX, sniff.ODT, sniff.ODS})
_BY_SUFFIX = {
    ".pdf": sniff.PDF,
    ".docx": sniff.DOCX,
    ".xlsx": sniff.XLSX,
    ".pptx": sniff.PPTX,
    ".odt": sniff.ODT,
    ".ods": sniff.ODS,
    ".zip": sniff.ZIP,
}
# Any header name is read as unstructured text: only its words matter to the rules,
# and the structured parsers raise on the malformed addresses spam is made of.
_UNSTRUCTURED = email.headerregistry.HeaderRegistry(use_default_map=False)


class _RawHeaders(Compat32):
    """compat32, but header values come back as parsed (8-bit bytes as surrogates)
    instead of as ``Header`` objects that replace them with U+FFFD: raw UTF-8 headers
    (SMTPUTF8) must reach the rules as the text they are."""

    def header_fetch_parse(self, name, value):
        return value


_POLICY = _RawHeaders()


class NeedsWorker(Exception):
    """A light (in-thread) inspection met a part that needs the process pool."""


def inspect_body(
    prefix: bytes,
    data: bytes | None,
    path: str | None,
    limits: InspectionLimits,
    scans: tuple[Scan, ...] = (),
) -> Inspection:
    """Inspect ``prefix + data``, or ``prefix`` + the file at ``path``, and run ``scans``
    over the texts (``run_scans``). Never raises."""
    return run_scans(_inspect(prefix, data, path, limits, light=False), scans)


# Body and attachment texts this long are left out of the result once the scans have
# run: an office file's 2 M characters cost ~8 ms to pickle and unpickle.
ELIDE_FROM = 64 * 1024
_ELIDABLE = frozenset({"body", "attachment"})


def run_scans(found: Inspection, scans: tuple[Scan, ...]) -> Inspection:
    """Each filter's scan over the texts, here where they are, and then the long body
    and attachment texts dropped (the filters that read them have their results). A
    scan that raises is recorded as such: its filter then tempfails, never passes. Not
    run on a message with problems: it is refused unread anyway."""
    if not scans or found.problems:
        return found
    results = []
    for scan in scans:
        try:
            results.append(
                ScanResult(scan.name, scan.config, scan.function(found.texts, scan.config))
            )
        except Exception as exc:  # recorded: the filter's check raises it in the gateway
            results.append(ScanResult(scan.name, scan.config, error=f"{type(exc).__name__}: {exc}"))
    kept = tuple(t for t in found.texts if t.kind not in _ELIDABLE or len(t.text) < ELIDE_FROM)
    return dataclasses.replace(
        found, texts=kept, scans=tuple(results), elided=len(found.texts) - len(kept)
    )


def inspect_light(data: bytes, limits: InspectionLimits) -> Inspection | None:
    """Inspect a small in-memory message unless it holds a PDF, office document or
    archive (None then): cheap enough for a thread, where nothing can be killed."""
    try:
        return _inspect(b"", data, None, limits, light=True)
    except NeedsWorker:
        return None


def _inspect(
    prefix: bytes, data: bytes | None, path: str | None, limits: InspectionLimits, light: bool
) -> Inspection:
    walker = _Walker(limits, time.monotonic(), light)
    try:
        simple = _parse_simple(data) if not prefix and data is not None else None
        message = simple or _parse(prefix, data, path)
        walker.message(message, "", 0, 0)
    except NeedsWorker:
        raise
    except MessageLimit as exc:
        walker.problems.append(f"cannot inspect message: {exc}")
    except RecursionError:
        walker.problems.append("cannot inspect message: MIME structure nested too deep")
    except MemoryError:
        walker.problems.append("cannot inspect message: out of memory")
    except OSError as exc:
        walker.problems.append(f"cannot inspect message: cannot read the body ({exc})")
    except Exception as exc:  # a parser bug must refuse the message, never pass it
        walker.problems.append(f"cannot inspect message: {type(exc).__name__}: {exc}")
    return walker.result()


# Runs of base64 lines this long or longer stay in the body (file or bytes) and travel
# through the parser as a short reference (``_Source``): the tree of a 28 MB message
# then holds a few kilobytes instead of the message. Shorter runs travel as text.
REFER_FROM = 32 * 1024

# Consecutive complete lines of nothing but base64 characters, from a line start: never
# a header field (no colon, no leading blank), a continuation, a boundary (those start
# with "--") or a blank line, so no decision the parser takes can differ inside one.
_RUN = re.compile(r"^(?:[A-Za-z0-9+/=]+\r?\n)+", re.MULTILINE)
# Lines as BufferedSubFile cracks them (io.StringIO with newline=""): ended by "\r\n",
# "\r" or "\n"; the last one may have no end.
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_REF_OPEN, _REF_CLOSE = "\ue000", "\ue001"  # never in the parser's input: bytes decode
_REF = re.compile(_REF_OPEN + r"(\d+)" + _REF_CLOSE)  # as ASCII or lone surrogates


class _Source:
    """The body one parse reads (``prefix`` + ``data`` or the file at ``path``) and the
    spans of it that the tree only refers to. Offsets count characters of the parser's
    input, which are bytes (it decodes ASCII with surrogateescape)."""

    def __init__(self, prefix: bytes, data: bytes | None, path: str | None) -> None:
        self.prefix = prefix
        self.data = data
        self.path = path
        self.spans: list[tuple[int, int]] = []

    def refer(self, offset: int, length: int) -> str:
        self.spans.append((offset, length))
        return f"{_REF_OPEN}{len(self.spans) - 1}{_REF_CLOSE}"

    def chunks(self, payload: str, size: int) -> Iterator[bytes]:
        """The payload's bytes with every reference read back, ``size`` at most at a
        time: a part is decoded without its encoded text ever being whole in memory."""
        with contextlib.ExitStack() as stack:
            handle = None
            if self.data is None and self.path is not None and _REF_OPEN in payload:
                handle = stack.enter_context(open(self.path, "rb"))
            start = 0
            for ref in _REF.finditer(payload):
                if ref.start() > start:
                    yield payload[start : ref.start()].encode("ascii", "surrogateescape")
                start = ref.end()
                offset, length = self.spans[int(ref.group(1))]
                while length > 0:
                    step = min(size, length)
                    piece = self._read(handle, offset, step)
                    if len(piece) != step:
                        raise OSError("the body changed while it was inspected")
                    yield piece
                    offset += step
                    length -= step
            if start < len(payload):
                yield payload[start:].encode("ascii", "surrogateescape")

    def pieces(self, payload: str) -> Callable[[int], Iterator[bytes]]:
        return lambda size: self.chunks(payload, size)

    def text(self, payload: str) -> str:
        """The payload as the stock parser would hold it (references read back)."""
        if _REF_OPEN not in payload:
            return payload
        return b"".join(self.chunks(payload, _SLICE)).decode("ascii", "surrogateescape")

    def _read(self, handle: BinaryIO | None, offset: int, length: int) -> bytes:
        out = b""
        edge = len(self.prefix)
        if offset < edge:
            out = self.prefix[offset : offset + length]
            offset, length = edge, length - len(out)
        if length <= 0:
            return out
        if self.data is not None:
            return out + self.data[offset - edge : offset - edge + length]
        if handle is None:
            return out
        handle.seek(offset - edge)
        return out + handle.read(length)


class _Message(Message):
    """A parsed part that knows the ``_Source`` its references point into."""

    source: _Source | None = None


class _Lines(BufferedSubFile):
    """The feed parser's line buffer, but consecutive base64 lines travel as one string
    (line ends kept), and a long run as a reference to where it lies in the body. The
    parser joins a leaf's lines into its payload unchanged, and no decision it takes on
    a line (header, separator, boundary) can differ for such a run: the payload is the
    same string once references are read back (``_Source.text``). Lines are cracked
    with C-speed regexes over each fed chunk, not one Python step per line. A 28 MB
    message's tree holds kilobytes. A preamble or epilogue may hold references too (no
    rule reads them). Relies on ``BufferedSubFile``'s internals (CPython 3.11): tests
    compare trees with the stock buffer."""

    def __init__(self, source: _Source | None) -> None:
        super().__init__()
        self._source = source
        self._pending: list[str] = []  # the last, unfinished line, in pieces
        self._offset = 0  # input characters already pushed as lines

    def push(self, data: str) -> None:
        if "\n" not in data and "\r" not in data:
            self._pending.append(data)
            return
        if self._pending:
            self._pending.append(data)
            data = "".join(self._pending)
            self._pending = []
        # As BufferedSubFile: the last line waits unless it ends with "\n" (a "\r" at
        # the very end may be the first half of "\r\n").
        if data.endswith("\n"):
            end = len(data)
        else:
            head = data[:-1] if data.endswith("\r") else data
            end = max(head.rfind("\n"), head.rfind("\r")) + 1
            self._pending.append(data[end:])
        self._crack(data, end)

    def close(self) -> None:
        tail = "".join(self._pending)
        self._pending = []
        self._crack(tail, len(tail))
        self._closed = True

    def _crack(self, data: str, end: int) -> None:
        lines = self._lines
        source = self._source
        at = 0
        for run in _RUN.finditer(data, 0, end):
            start, stop = run.span()
            if start > at:
                lines.extend(_LINE.findall(data, at, start))
            if source is not None and stop - start >= REFER_FROM:
                eol = 2 if data[stop - 2] == "\r" else 1
                lines.append(
                    source.refer(self._offset + start, stop - start - eol) + data[stop - eol : stop]
                )
            else:
                lines.append(data[start:stop])
            at = stop
        if at < end:
            lines.extend(_LINE.findall(data, at, end))
        self._offset += end


def _parse(prefix: bytes, data: bytes | None, path: str | None) -> Message:
    """Feed the parser in chunks: ``parsebytes`` would first decode all 30 MB into one
    string, and the feed parser splits it into lines again anyway. Long base64 runs
    stay where they are (``_Lines``): read them with ``payload_text`` or ``_decoded``."""
    source = _Source(prefix, data, path)

    def factory(policy: Compat32 = _POLICY) -> _Message:
        message = _Message(policy)
        message.source = source
        return message

    parser = BytesFeedParser(factory, policy=_POLICY)
    parser._input = _Lines(source)  # type: ignore[attr-defined]  # before the first feed
    parser.feed(prefix)
    if data is not None:
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            parser.feed(bytes(view[start : start + CHUNK]))
    elif path is not None:
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                parser.feed(chunk)
    return parser.close()


# A header line the feed parser takes as a field's first line (``headerRE``), less the
# shapes it treats specially: an empty name, a Unix "From " line.
_FIELD_START = re.compile(r"[\041-\071\073-\176]+:")


def _parse_simple(data: bytes) -> Message | None:
    """The tree ``_parse`` gives a small single-part message (CRLF line ends, no
    multipart or message/* type, every header line a field or a continuation), built
    from its header lines directly: the same ``Message``, without the feed parser's
    Python steps per line (a third of a 5 KB message's inspection). None for anything
    else, which the feed parser reads. Tests compare the two on generated and corpus
    messages."""
    end = data.find(b"\r\n\r\n")
    if end <= 0 or len(data) - end - 4 >= REFER_FROM:
        return None  # no header section, or a body that may hold referred base64 runs
    section = data[:end].decode("ascii", "surrogateescape")
    if section.count("\r") != section.count("\r\n") or "\n" in section.replace("\r\n", ""):
        return None  # a lone CR or LF: the parser would cut lines elsewhere
    message = _Message(_POLICY)
    message.source = _Source(b"", data, None)
    field: list[str] = []
    for line in section.split("\r\n"):
        if line[:1] in (" ", "\t"):
            if not field:
                return None  # a continuation first: the parser records a defect
            field.append(line + "\r\n")
            continue
        if not _FIELD_START.match(line):
            return None  # "From ", no name, no colon: the parser's own cases
        if field:
            message.set_raw(*_POLICY.header_source_parse(field))
        field = [line + "\r\n"]
    if field:
        message.set_raw(*_POLICY.header_source_parse(field))
    if message.get_content_maintype() in ("multipart", "message"):
        return None
    message.set_payload(data[end + 4 :].decode("ascii", "surrogateescape"))
    return message


def payload_text(part: Message) -> str | list[Message]:
    """A part's payload as the standard library's parser would hold it: references to
    long base64 runs (``_Lines``) read back from the body. Costs the whole text:
    decoders stream instead (``_decoded``)."""
    raw = part.get_payload()
    source = part.source if isinstance(part, _Message) else None
    if isinstance(raw, str) and source is not None:
        return source.text(raw)
    return raw  # type: ignore[return-value]


class _Walker:
    """Walks the parsed tree once, numbering parts like IMAP (RFC 3501 section 6.4.5)."""

    def __init__(self, limits: InspectionLimits, started: float, light: bool) -> None:
        self.limits = limits
        self.budget = Budget(limits, started)
        self.light = light
        self.parts: list[Part | None] = []
        self.texts: list[TextSource] = []
        self.problems: list[str] = []
        self.attachment_bytes = 0

    def result(self) -> Inspection:
        return Inspection(
            parts=tuple(p for p in self.parts if p is not None),
            texts=tuple(self.texts),
            attachment_bytes=self.attachment_bytes,
            problems=tuple(dict.fromkeys(self.problems)),
        )

    # -- structure ---------------------------------------------------------------

    def message(self, msg: Message, number: str, rfc822: int, depth: int) -> int:
        """A whole message (the top one, or a forwarded one at ``number``): its header
        fields, then its body. Returns the decoded bytes of its leaves."""
        where = _where(rfc822)
        self.headers(msg, where, number or None)
        if msg.get_content_maintype() == "multipart":
            if not msg.is_multipart():
                label = "message" if not number else f"forwarded message {number}"
                self.problems.append(f"cannot inspect {label}{where}: multipart boundary not found")
                return 0
            return self.children(msg, number, rfc822, depth)
        return self.node(msg, _child(number, 1), rfc822, depth + 1)

    def children(self, container: Message, number: str, rfc822: int, depth: int) -> int:
        total = 0
        for index, child in enumerate(container.get_payload(), start=1):
            total += self.node(child, _child(number, index), rfc822, depth + 1)
        return total

    def node(self, part: Message, number: str, rfc822: int, depth: int) -> int:
        limits = self.limits
        self.budget.check_time()
        if len(self.parts) >= limits.max_parts:
            raise MessageLimit(f"more than {limits.max_parts} MIME parts")
        where = _where(rfc822)
        if depth > limits.max_depth:
            self.problems.append(
                f"cannot inspect part {number}{where}: "
                f"MIME structure nested deeper than {limits.max_depth}"
            )
            return 0
        ctype = part.get_content_type()
        maintype = part.get_content_maintype()
        filename = _filename(part)
        disposition = _disposition(part)
        if filename:
            self.add(f"attachment {filename}{where}", filename, "filename", number)

        if maintype == "multipart" or (maintype == "message" and part.is_multipart()):
            index = len(self.parts)
            self.parts.append(None)  # keeps document order; filled in once sizes are known
            if maintype == "multipart":
                if not part.is_multipart():
                    self.problems.append(
                        f"cannot inspect part {number}{where}: multipart boundary not found"
                    )
                    size = 0
                else:
                    size = self.children(part, number, rfc822, depth)
            else:
                size = self.forwarded(part, number, rfc822, depth)
            self.parts[index] = Part(
                number, ctype, None, filename, disposition, size, False, rfc822
            )
            return size

        if ctype == "message/partial":
            self.problems.append(
                f"cannot inspect part {number}{where}: message/partial fragments "
                "join into a message no one here can see"
            )
        payload, size, sniffed = _measured(part, ctype, filename)
        is_attachment = disposition == "attachment" or (maintype != "text" and filename is not None)
        self.parts.append(
            Part(number, ctype, sniffed, filename, disposition, size, is_attachment, rfc822)
        )
        if is_attachment:
            self.attachment_bytes += size
        self.leaf_text(part, payload, number, ctype, sniffed, filename, is_attachment, where)
        return size

    def forwarded(self, part: Message, number: str, rfc822: int, depth: int) -> int:
        """A message/rfc822 part: the forwarded message is inspected like the top one."""
        where = _where(rfc822)
        if rfc822 + 1 > self.limits.max_rfc822_depth:
            self.problems.append(
                f"cannot inspect part {number}{where}: forwarded messages nested deeper "
                f"than {self.limits.max_rfc822_depth}"
            )
            return 0
        inner = part.get_payload(0)
        cte = str(part.get("content-transfer-encoding", "")).strip().lower()
        if cte in ("base64", "quoted-printable") and not inner.keys():
            # Non-conforming but common: the forwarded message itself is encoded, so the
            # parser saw no header fields, only the encoded text. Decode and parse it.
            raw = _decode_transfer(str(payload_text(inner)), cte)
            inner = _parse(b"", raw, None)
        return self.message(inner, number, rfc822 + 1, depth)

    # -- text --------------------------------------------------------------------

    def headers(self, msg: Message, where: str, number: str | None) -> None:
        for name, value in msg.items():
            name = _fix_surrogates(str(name)).strip()
            text = _header_text(value)
            if name.lower() == "subject":
                self.add(f"subject{where}", text, "subject", number)
            else:
                self.add(f"header {name}{where}", text, "header", number)

    def leaf_text(
        self,
        part: Message,
        payload: bytes,
        number: str,
        ctype: str,
        sniffed: str | None,
        filename: str | None,
        is_attachment: bool,
        where: str,
    ) -> None:
        if is_attachment:
            label = f"attachment {filename or 'part ' + number}{where}"
            kind = "attachment"
        else:
            label, kind = f"body{where}", "body"
        how = _text_kind(ctype, sniffed, filename)
        if how is None:
            return
        if self.light and how not in ("plain", "html"):
            raise NeedsWorker(how)
        out = self.budget.part_text()
        try:
            if how in ("plain", "html"):
                text = _decode_text(payload, part.get_content_charset())
                if how == "html":
                    extract.html_text(text, out, self.budget)
                else:
                    out.add(text)
            elif how == sniff.PDF:
                extract.pdf_text(payload, out, self.budget)
            elif how == sniff.ZIP:
                for name in extract.archive_listing(payload, self.budget):
                    self.add(f"{label} member", name, "filename", number)
            else:  # an office document, by content or (then refused as broken) by name
                extract.office_text(payload, how, out, self.budget)
        except MessageLimit:
            raise
        except Uninspectable as exc:
            self.problems.append(f"cannot inspect {label}: {exc}")
            return
        self.add(label, out.text(), kind, number)

    def add(self, location: str, text: str, kind: str, number: str | None) -> None:
        text = _normal(text)
        if text.strip():
            self.texts.append(TextSource(location, text, kind, number or None))


def _child(number: str, index: int) -> str:
    return f"{number}.{index}" if number else str(index)


def _where(rfc822: int) -> str:
    if rfc822 == 0:
        return ""
    if rfc822 == 1:
        return " in forwarded message"
    return f" in forwarded message (level {rfc822})"


def _text_kind(ctype: str, sniffed: str | None, filename: str | None) -> str | None:
    """How to read a leaf's text: by what the bytes are first, then by the name the
    sender gave it, then by the declared type."""
    if sniffed == sniff.PDF or sniffed == sniff.ZIP or sniffed in _OFFICE:
        return sniffed
    suffix = posixpath.splitext(filename.lower())[1] if filename else ""
    if suffix in (".html", ".htm") or (not suffix and ctype == "text/html"):
        return "html"
    if suffix == ".txt" or ctype.startswith("text/"):
        return "html" if ctype == "text/html" else "plain"
    if suffix in _BY_SUFFIX and sniffed is None:
        return _BY_SUFFIX[suffix]  # named a document but is none: its reader says why
    return None


# -- decoding --------------------------------------------------------------------


_SLICE = 4 * 1024 * 1024  # base64 characters decoded at a time when only measuring
_HEAD = 8 * 1024  # base64 characters: 6 KiB decoded, past every magic number sniff reads


def _measured(part: Message, ctype: str, filename: str | None) -> tuple[bytes, int, str | None]:
    """(decoded bytes, their size, sniffed type). A large base64 part that nothing will
    read (not text, a document, a PDF or an archive, by its bytes or by its name) is
    only measured: decoded a slice at a time and dropped, so the worker never holds its
    decoded copy (nor, for runs left in the body, its encoded text). Its bytes come back
    empty."""
    raw = part.get_payload()
    if (
        isinstance(raw, str)
        and (len(raw) > _SLICE or _REF_OPEN in raw)
        and str(part.get("content-transfer-encoding", "")).strip().lower() == "base64"
    ):
        source = part.source if isinstance(part, _Message) else None
        pieces = source.pieces(raw) if source is not None else _slices(raw)
        head = _base64_prefix(_first(pieces(_HEAD), _HEAD))
        sniffed = sniff.sniff(head)
        if (
            not head.startswith(b"MZ")  # the PE header can be anywhere: read it all
            and sniffed != sniff.ZIP
            and _text_kind(ctype, sniffed, filename) is None
        ):
            size = _base64_chunks(pieces(_SLICE), None)
            if size is not None:
                return b"", size, sniffed
    payload = _decoded(part)
    return payload, len(payload), sniff.sniff(payload)


def _slices(text: str) -> Callable[[int], Iterator[bytes]]:
    """``size``-character slices of ``text`` as bytes (the parser's surrogates back to
    the bytes they stand for), for the decoders that take pieces."""

    def pieces(size: int) -> Iterator[bytes]:
        for start in range(0, len(text), size):
            yield text[start : start + size].encode("ascii", "surrogateescape")

    return pieces


def _first(pieces: Iterable[bytes], count: int) -> bytes:
    """The first ``count`` bytes of ``pieces`` that are not line ends."""
    out = b""
    for piece in pieces:
        out += piece.translate(None, b"\r\n")
        if len(out) >= count:
            break
    return out[:count]


def _base64_prefix(data: bytes) -> bytes:
    """The first bytes of a base64 text (whole quads only)."""
    data = data.translate(None, b"\r\n")
    try:
        return binascii.a2b_base64(data[: len(data) - len(data) % 4])
    except (binascii.Error, ValueError):
        return b""


def _base64_size(text: str) -> int | None:
    """Decoded size of a base64 text, decoding one slice at a time (``_base64_chunks``)."""
    return _base64_chunks(_slices(text)(_SLICE), None)


def _base64_chunks(pieces: Iterable[bytes], out: list[bytes] | None) -> int | None:
    """Decoded size of base64 given in pieces, decoding one piece at a time (kept in
    ``out`` if given); None unless it is regular base64 (alphabet and line ends only,
    padding only at the very end), where pieces decode to exactly what the whole would.
    Otherwise the lenient decoder of the whole text decides, as mail readers do."""
    size = 0
    carry = b""
    padded = False
    for chunk in pieces:
        piece = carry + chunk.translate(None, b"\r\n")
        if not piece:
            continue
        if padded:
            return None  # data after the padding
        cut = len(piece) - len(piece) % 4
        carry = piece[cut:]
        if not cut:
            continue
        body = piece[:cut] if carry else piece
        try:
            decoded = binascii.a2b_base64(body, strict_mode=True)
        except (binascii.Error, ValueError):
            return None  # stray characters, bad padding: not regular
        padded = body.endswith(b"=")  # strict mode allows "=" only at the end
        size += len(decoded)
        if out is not None:
            out.append(decoded)
        del body, decoded
    return None if carry else size


def _decoded(part: Message) -> bytes:
    """The part's bytes after its transfer encoding (lenient with bad base64, as mail
    readers are: the rules see what the recipient will see). Base64 left in the body
    (``_Lines``) is decoded straight from it, a slice at a time."""
    raw = part.get_payload()
    source = part.source if isinstance(part, _Message) else None
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    if isinstance(raw, str) and source is not None and _REF_OPEN in raw:
        if cte == "base64":
            out: list[bytes] = []
            if _base64_chunks(source.chunks(raw, _SLICE), out) is not None:
                return b"".join(out)
            del out
        raw = source.text(raw)
        part = copy.copy(part)  # the tree keeps its references
        part.set_payload(raw)
    if cte == "base64" and isinstance(raw, str):
        # a2b_base64 skips line ends itself (the library's decode first splits the
        # payload into lines: ~70 MB more peak for a 28 MB part), and reads an ASCII
        # str as it is (no encoded copy of the text beside it).
        try:
            return binascii.a2b_base64(
                raw if raw.isascii() else raw.encode("ascii", "surrogateescape")
            )
        except (binascii.Error, ValueError):
            pass  # bad padding and the like: the library's lenient decoder below
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _decode_transfer(text: str, cte: str) -> bytes:
    raw = text.encode("ascii", "surrogateescape")
    if cte == "quoted-printable":
        return quopri.decodestring(raw)
    try:
        return base64.b64decode(b"".join(raw.split()) + b"==", validate=False)
    except (binascii.Error, ValueError):
        return raw


def _decode_text(data: bytes, charset: str | None) -> str:
    """Bytes to text by the declared charset; an unknown or missing one falls back to
    UTF-8, then windows-1252, so no part is skipped for its label."""
    if charset:
        try:
            codecs.lookup(charset)
            return data.decode(charset, "replace")
        except (LookupError, ValueError, TypeError, UnicodeError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("windows-1252", "replace")


def _fix_surrogates(text: str) -> str:
    """Raw 8-bit bytes the parser kept as surrogates (SMTPUTF8 headers, unknown RFC 2047
    charsets) are read as UTF-8, else windows-1252."""
    try:
        text.encode("utf-8")  # fails exactly when there are surrogates; at C speed
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # lone surrogates that stand for no byte (UTF-7 and such)
        return text.encode("utf-8", "replace").decode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("windows-1252", "replace")


def _header_text(value: object) -> str:
    """A header field's value with RFC 2047 words decoded, unfolded."""
    unfolded = _fix_surrogates("".join(str(value).splitlines()))
    if "=?" not in unfolded:
        # No encoded word: the header parser would return the text as it is, at ~13 us
        # a field, the largest cost of inspecting ordinary mail.
        return unfolded
    try:
        decoded = str(_UNSTRUCTURED("x-field", unfolded))
    except Exception:  # never let one odd field stop the inspection
        decoded = unfolded
    return _fix_surrogates(decoded)


def _filename(part: Message) -> str | None:
    """Content-Disposition filename or Content-Type name: RFC 2231 parameters
    (``filename*=UTF-8''...``, continuations) via the parser, RFC 2047 words inside
    quotes (what Outlook and Gmail send) decoded here."""
    try:
        name = part.get_filename()
        if name is None:
            name = part.get_param("name")
            if isinstance(name, tuple):
                name = email.utils.collapse_rfc2231_value(name)
    except Exception:
        return None
    if not isinstance(name, str):
        return None
    name = _fix_surrogates(name)
    if "=?" in name:
        name = _header_text(name)
    name = _normal(name).strip()
    return name or None


def _disposition(part: Message) -> str | None:
    value = part.get_content_disposition()
    return value if value in ("attachment", "inline") else None


def _normal(text: str) -> str:
    """What rules compare: NFC (Vietnamese arrives composed and decomposed alike), no
    NUL, one kind of line end."""
    text = _fix_surrogates(text).replace("\x00", "")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return unicodedata.normalize("NFC", text)
