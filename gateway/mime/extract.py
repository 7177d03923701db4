"""Text out of HTML, office documents, PDFs and archives, within caps.

Everything here streams: zip members are inflated in 64 KiB chunks that are counted
before they are used, XML is fed to expat chunk by chunk, and only the text
(capped per part) is kept. A ``.docx`` whose ``document.xml`` inflates to 200 MB
therefore costs a few hundred kilobytes of memory and stops at the inflation cap.

Whatever cannot be read within the caps raises ``Uninspectable``: the caller turns it
into a problem and the message is refused, never passed unread.
"""

from __future__ import annotations

import io
import logging
import time
import zipfile
from collections.abc import Iterator
from html.parser import HTMLParser
from xml.parsers import expat as pyexpat

from gateway.mime import sniff
from gateway.mime.model import InspectionLimits

CHUNK = 64 * 1024


class Uninspectable(Exception):
    """The part cannot be inspected within the caps, or at all; ``str()`` says why."""


class MessageLimit(Uninspectable):
    """A cap of the whole message (time, total text) ran out: stop inspecting at once."""


class Budget:
    """The caps and clock of one inspection, shared by every part of the message."""

    def __init__(self, limits: InspectionLimits, started: float | None = None) -> None:
        self.limits = limits
        self.deadline = (time.monotonic() if started is None else started) + limits.seconds
        self.message_text = 0  # characters kept so far, all parts

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise MessageLimit(f"inspection takes longer than {self.limits.seconds:g} s")

    def part_text(self) -> TextBuffer:
        return TextBuffer(self)


class TextBuffer:
    """Text of one part, refusing to grow past the per-part and per-message caps."""

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self._pieces: list[str] = []
        self._size = 0
        self.limit = budget.limits.max_part_text

    def add(self, text: str) -> None:
        if not text:
            return
        limits = self._budget.limits
        self._size += len(text)
        if self._size > limits.max_part_text:
            raise Uninspectable(f"text exceeds {limits.max_part_text} characters")
        self._budget.message_text += len(text)
        if self._budget.message_text > limits.max_message_text:
            raise MessageLimit(f"its text exceeds {limits.max_message_text} characters")
        self._pieces.append(text)

    def text(self) -> str:
        return "".join(self._pieces)


# --- HTML -------------------------------------------------------------------------

_BLOCK = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "dd",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "tr",
        "ul",
    ]
)
_SKIP = frozenset({"script", "style", "head", "title", "template"})


class _HTMLText(HTMLParser):
    """What a reader sees: character data outside script/style, a line per block, and
    alt/title texts (an image's alt is shown when images are blocked)."""

    def __init__(self, out: TextBuffer) -> None:
        super().__init__(convert_charrefs=True)
        self._out = out
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skipping += 1
            return
        for name, value in attrs:
            if name in ("alt", "title") and value:
                self._out.add(f" {value} ")
        if tag in _BLOCK:
            self._out.add("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _SKIP:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK:
            self._out.add("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._out.add(data)


def html_text(html: str, out: TextBuffer, budget: Budget) -> None:
    """HTML to text with the standard library's tolerant tokenizer (no regex over HTML)."""
    parser = _HTMLText(out)
    for start in range(0, len(html), CHUNK):
        budget.check_time()
        parser.feed(html[start : start + CHUNK])
    parser.close()


# --- zip --------------------------------------------------------------------------


class _Archive:
    """A zip opened for bounded reading: declared sizes checked before anything is
    inflated, inflated bytes counted while reading (zipfile never returns more than
    the declared size, and checks the CRC at the end)."""

    def __init__(self, data: bytes, budget: Budget) -> None:
        self._budget = budget
        limits = budget.limits
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            raise Uninspectable(f"broken zip archive ({exc})") from None
        if len(infos) > limits.max_archive_members:
            raise Uninspectable(f"more than {limits.max_archive_members} archive members")
        total = 0
        for info in infos:
            if info.file_size > limits.max_inflated_member:
                raise Uninspectable(
                    f"{info.filename} inflates past {limits.max_inflated_member} bytes"
                )
            total += info.file_size
            if total > limits.max_inflated_total:
                raise Uninspectable(
                    f"archive members inflate past {limits.max_inflated_total} bytes"
                )
        self.infos = infos
        self.inflated = 0

    def chunks(self, info: zipfile.ZipInfo) -> Iterator[bytes]:
        limits = self._budget.limits
        if info.flag_bits & 0x1:
            raise Uninspectable(f"{info.filename} is encrypted")
        member = 0
        try:
            with self.zip.open(info) as handle:
                while chunk := handle.read(CHUNK):
                    member += len(chunk)
                    self.inflated += len(chunk)
                    if member > limits.max_inflated_member:
                        raise Uninspectable(
                            f"{info.filename} inflates past {limits.max_inflated_member} bytes"
                        )
                    if self.inflated > limits.max_inflated_total:
                        raise Uninspectable(
                            f"archive members inflate past {limits.max_inflated_total} bytes"
                        )
                    self._budget.check_time()
                    yield chunk
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise Uninspectable(f"{info.filename}: broken zip member ({exc})") from None
        except RuntimeError as exc:  # zipfile: encrypted / needs a password
            raise Uninspectable(f"{info.filename}: {exc}") from None

    def drain(self, info: zipfile.ZipInfo) -> None:
        """Inflate a member only to count it and check its CRC."""
        for _ in self.chunks(info):
            pass


def archive_listing(data: bytes, budget: Budget) -> list[str]:
    """Member names of a plain zip, after inflating every member within the caps
    (a bomb is refused here, so nothing downstream ever unpacks it)."""
    archive = _Archive(data, budget)
    names = []
    for info in archive.infos:
        if not info.is_dir():
            archive.drain(info)
        names.append(info.filename)
    return names


# --- office documents (OOXML and ODF: zip + XML) ----------------------------------

# Element names as expat reports them with namespace processing: "uri local".
_OOXML_TEXT = frozenset({"t", "delText"})  # w:t, a:t, spreadsheet t; tracked deletions
_OOXML_BREAK = frozenset({"p", "br", "cr", "si", "tr", "row"})
_ODF_OFFICE = "urn:oasis:names:tc:opendocument:xmlns:office:1.0"
_ODF_TEXT = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
_ODF_BREAK = frozenset({"p", "h", "line-break", "list-item"})
_ODF_SPACES = f"{_ODF_TEXT} c"

# What an element does to the text: nothing on start (_NONE, _BREAK: ends a line on
# end), opens a scope whose character data is text (OOXML t, ODF office:body), adds a
# tab or spaces on start. Decided once per distinct name, then a dict lookup.
_NONE, _BREAK, _OPEN, _TAB, _SPACES = range(5)


def _ooxml_kind(name: str) -> int:
    local = name.rpartition(" ")[2]
    if local in _OOXML_TEXT:
        return _OPEN
    if local == "tab":
        return _TAB
    if local in _OOXML_BREAK:
        return _BREAK
    return _NONE


def _odf_kind(name: str) -> int:
    uri, _, local = name.rpartition(" ")
    if uri == _ODF_OFFICE and local == "body":
        return _OPEN
    if uri == _ODF_TEXT:
        if local == "s":
            return _SPACES
        if local == "tab":
            return _TAB
        if local in _ODF_BREAK:
            return _BREAK
    return _NONE


class _Forbidden(Exception):
    pass


def _forbid_doctype(*args: object) -> None:
    # Office XML never has a DOCTYPE; an entity bomb or an external entity needs one.
    raise _Forbidden("DOCTYPE")


def _forbid_entity(*args: object) -> None:
    raise _Forbidden("entity declaration")


def _xml_text(chunks: Iterator[bytes], odf: bool, out: TextBuffer) -> None:
    """Character data of the text elements, with expat bound directly: small handlers
    and no SAX layer (a dict lookup per element, one call per text run). OOXML keeps
    text in ``t`` elements (any namespace: ``_ooxml_text``); ODF anywhere in
    office:body. The bench's 1 MiB .docx (2 M characters): ~30 ms with SAX, ~20 here,
    of which expat's own parse is ~9 and inflating ~3."""
    parser = pyexpat.ParserCreate(namespace_separator=" ")
    parser.buffer_text = True  # one call per text run, not one per line or entity
    parser.buffer_size = CHUNK
    parser.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _forbid_doctype
    parser.EntityDeclHandler = _forbid_entity
    parser.ExternalEntityRefHandler = _forbid_entity
    classify = _odf_kind if odf else _ooxml_kind
    kinds: dict[str, int] = {}
    add = out.add
    inside = 0  # OOXML: depth of text elements; ODF: of office:body

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal inside
        kind = kinds.get(name)
        if kind is None:
            kind = kinds[name] = classify(name)
        if kind <= _BREAK:
            return
        if kind == _OPEN:
            inside += 1
        elif odf and not inside:
            return
        elif kind == _TAB:
            add("\t")
        else:  # ODF text:s, c spaces
            count = attrs.get(_ODF_SPACES, "1")
            add(" " * min(int(count) if count.isdigit() else 1, 1000))

    def end(name: str) -> None:
        nonlocal inside
        kind = kinds.get(name)
        if kind == _OPEN:
            inside -= 1
        elif kind == _BREAK and (inside or not odf):
            add("\n")

    def characters(data: str) -> None:
        if inside > 0:
            add(data)

    if odf:
        parser.StartElementHandler = start
        parser.EndElementHandler = end
        parser.CharacterDataHandler = characters
        for chunk in chunks:
            parser.Parse(chunk, False)
        parser.Parse(b"", True)
        return
    _ooxml_text(parser, chunks, out)


def _ooxml_text(parser: pyexpat.XMLParserType, chunks: Iterator[bytes], out: TextBuffer) -> None:
    """OOXML with no start handler at all: character data is collected by the list's
    own ``append`` (no Python frame) and an end tag decides: kept at the end of a text
    element, dropped at any other. In OOXML nothing but markup separates a ``t`` from
    what precedes it, so the text is the same, but for the whitespace of a
    pretty-printed file just before a ``t``, which comes along."""
    cap = out.limit
    pending: list[str] = []
    kinds: dict[str, int] = {}
    add = out.add

    def end(name: str) -> None:
        kind = kinds.get(name)
        if kind is None:
            kind = kinds[name] = _ooxml_kind(name)
        if kind == _OPEN:
            if pending:
                add(pending[0] if len(pending) == 1 else "".join(pending))
                pending.clear()
            return
        if pending:
            pending.clear()
        if kind == _TAB:
            add("\t")
        elif kind == _BREAK:
            add("\n")

    parser.EndElementHandler = end
    parser.CharacterDataHandler = pending.append
    for chunk in chunks:
        parser.Parse(chunk, False)
        # Character data outside any end tag waits here: never more than a part's text.
        if len(pending) > 8 and sum(map(len, pending)) > cap:
            raise Uninspectable(f"text exceeds {cap} characters")
    parser.Parse(b"", True)


def _office_members(kind: str, names: list[str]) -> list[str]:
    """The members that hold a document's text, in reading order."""

    def numbered(prefix: str) -> list[str]:
        found = [n for n in names if n.startswith(prefix) and n.endswith(".xml")]

        def key(n: str) -> tuple[int, str]:
            digits = "".join(c for c in n[len(prefix) :] if c.isdigit())
            return (int(digits) if digits else 0, n)

        return sorted(found, key=key)

    if kind == sniff.DOCX:
        first = ["word/document.xml"]
        rest = [
            n
            for n in names
            if n.startswith("word/")
            and n.count("/") == 1
            and n.endswith(".xml")
            and n[5:].startswith(("header", "footer", "footnotes", "endnotes", "comments"))
        ]
        return first + sorted(rest)
    if kind == sniff.XLSX:
        return ["xl/sharedStrings.xml", *numbered("xl/worksheets/sheet")]
    if kind == sniff.PPTX:
        return [*numbered("ppt/slides/slide"), *numbered("ppt/notesSlides/notesSlide")]
    return ["content.xml"]  # ODF


def office_text(data: bytes, kind: str, out: TextBuffer, budget: Budget) -> None:
    """Text of a .docx/.xlsx/.pptx/.odt/.ods; ``kind`` is the sniffed type."""
    archive = _Archive(data, budget)
    names = [info.filename for info in archive.infos]
    present = {info.filename: info for info in archive.infos}
    for name in _office_members(kind, names):
        info = present.get(name)
        if info is None:
            continue
        try:
            _xml_text(archive.chunks(info), kind in (sniff.ODT, sniff.ODS), out)
        except _Forbidden as exc:
            raise Uninspectable(f"{name}: forbidden XML construct ({exc})") from None
        except pyexpat.ExpatError as exc:
            raise Uninspectable(f"{name}: broken XML ({exc})") from None
        out.add("\n")


# --- PDF --------------------------------------------------------------------------

logging.getLogger("pypdf").setLevel(logging.ERROR)  # malformed PDFs are expected here


def pdf_text(data: bytes, out: TextBuffer, budget: Budget) -> None:
    """Text of every page, with pypdf's decompression limits set to ours."""
    import pypdf
    from pypdf.errors import LimitReachedError

    cap = budget.limits.max_inflated_member
    settings = {
        "maximum_declared_stream_length": cap,
        "array_based_stream_maximum_output_length": cap,
        "jbig2_maximum_output_length": cap,
        "lzw_maximum_output_length": cap,
        "run_length_maximum_output_length": cap,
        "zlib_maximum_output_length": cap,
        "brotli_maximum_output_length": cap,
    }
    try:
        with pypdf.apply_configuration(**settings):
            reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted and not reader.decrypt(""):
                raise Uninspectable("the PDF is encrypted")
            for page in reader.pages:
                budget.check_time()
                out.add(page.extract_text() or "")
                out.add("\n")
    except (Uninspectable, MemoryError):
        raise
    except LimitReachedError as exc:
        raise Uninspectable(f"a PDF stream inflates past {cap} bytes ({exc})") from None
    except RecursionError:
        raise Uninspectable("PDF objects nested too deep") from None
    except Exception as exc:  # pypdf raises many kinds on broken files
        raise Uninspectable(f"broken PDF ({type(exc).__name__}: {exc})") from None
