"""What the one MIME parse yields: plain, picklable values the filters read.

The parse runs in a worker process (``gateway/mime/pool.py``) and crosses back as
these frozen dataclasses; filters never see ``email.message`` objects, so no filter
can trigger a second parse or a lazy decode on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class InspectionLimits:
    """Caps that keep one message from costing more than its share of memory and CPU.

    Past a cap the part cannot be inspected, and the message is refused (5xx naming
    the rule): a part is never passed unread.
    """

    max_parts: int = 5000  # MIME parts per message, all depths
    max_depth: int = 64  # nesting of multiparts and message/rfc822
    max_rfc822_depth: int = 16  # forwarded messages within forwarded messages
    max_part_text: int = 4 * 1024 * 1024  # characters of text kept per part
    max_message_text: int = 16 * 1024 * 1024  # characters of text kept per message
    max_inflated_member: int = 64 * 1024 * 1024  # bytes one archive member may inflate to
    max_inflated_total: int = 128 * 1024 * 1024  # bytes all members of a part may inflate to
    max_archive_members: int = 10_000
    seconds: float = 60.0  # wall-clock budget for the whole inspection
    # Address space of one pool worker (RLIMIT_AS): past it an allocation fails with
    # MemoryError (a problem) instead of the OOM killer picking a process. 0: no cap.
    worker_memory: int = 448 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Part:
    """One leaf or container of the MIME tree."""

    path: str  # position in the tree: "1", "1.2", "1.2.1" (RFC 3501 section numbering)
    content_type: str  # as declared, lower case ("application/octet-stream")
    sniffed_type: str | None  # from the decoded bytes' magic ("application/zip"), if known
    filename: str | None  # RFC 2231 / RFC 2047 decoded, NFC; None if the part has none
    disposition: str | None  # "attachment", "inline" or None
    decoded_size: int  # bytes after base64/quoted-printable decoding
    is_attachment: bool  # counts towards the attachment cap (MIC 8.3.b)
    rfc822_depth: int = 0  # 0 in the message itself, 1 inside a forwarded message...


@dataclass(frozen=True, slots=True)
class TextSource:
    """Text found in the message, NFC-normalised, with where it was found."""

    location: str  # for replies and events: "subject", "body", "attachment bao-cao.docx"...
    text: str
    kind: str  # "subject", "header", "body", "filename", "attachment"
    part: str | None = None  # Part.path it came from, if any


# A filter's reading of the texts, run where the parse runs (gateway/pipeline.py
# ``register(scan=...)``): a top-level function, so that it can be sent to a worker.
ScanFunction = Callable[[Sequence[TextSource], Any], object]


@dataclass(frozen=True, slots=True)
class Scan:
    """What a filter asks the parse to run over the texts: ``function(texts, config)``."""

    name: str  # the filter's name
    function: ScanFunction
    config: Any  # the filter's settings (frozen, picklable)


@dataclass(frozen=True, slots=True)
class ScanResult:
    name: str
    config: Any  # the settings it ran with: a filter uses a result only for its own
    value: object = None
    error: str | None = None  # the scan raised: the filter must not pass the message


@dataclass(frozen=True, slots=True)
class Inspection:
    parts: tuple[Part, ...]
    texts: tuple[TextSource, ...]
    attachment_bytes: int  # decoded bytes of every attachment part, all depths
    # Why some part could not be inspected within the caps or at all; non-empty means
    # the message must be refused ("cannot inspect ...").
    problems: tuple[str, ...] = field(default_factory=tuple)
    # Scans that ran beside the parse. Once they have, long body and attachment texts
    # are left out of ``texts`` (``elided`` counts them): megabytes of an office file's
    # text need not cross to the gateway's process when the one rule reading them is done.
    scans: tuple[ScanResult, ...] = ()
    elided: int = 0

    def scan(self, name: str, config: object) -> ScanResult | None:
        """The result of filter ``name``'s scan with these settings, if it ran."""
        return next((r for r in self.scans if r.name == name and r.config == config), None)
