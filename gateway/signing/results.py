"""The one Authentication-Results header field (RFC 8601) the gateway stamps on inbound
mail, and the removal of any that claims to be ours.

RFC 8601 §5: a field carrying our authserv-id that arrives from outside is a forgery
(or a loop) and is removed before ours is added; fields of other hosts are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FIELD = b"authentication-results"


@dataclass(frozen=True, slots=True)
class MethodResult:
    """``method=result`` with its properties, e.g. ``dkim=pass header.d=x.vn header.s=m``."""

    method: str  # dkim, smime, x-pgp
    result: str
    properties: tuple[tuple[str, str], ...] = ()
    reason: str | None = None

    def __str__(self) -> str:
        text = f"{self.method}={self.result}"
        if self.reason:
            text += f' reason="{_quoted(self.reason)}"'
        for name, value in self.properties:
            text += f" {name}={value}"
        return text


def header_value(authserv_id: str, results: Sequence[MethodResult]) -> str:
    """``HOST; dkim=pass header.d=...; smime=none``, folded for a 78-column header."""
    pieces = [authserv_id, *(str(r) for r in results)]
    return ";\r\n\t".join(pieces)


def is_ours(value: bytes, authserv_id: str) -> bool:
    """Whether a field's value starts with our authserv-id (optionally a version)."""
    first = value.split(b";", 1)[0].strip().split()
    return bool(first) and first[0].decode("ascii", "replace").lower() == authserv_id.lower()


def drop_ours(section: bytes, authserv_id: str) -> tuple[bytes, int]:
    """``section`` without Authentication-Results fields carrying ``authserv_id`` (folded
    lines included), and how many were dropped."""
    lines = section.split(b"\r\n")
    kept: list[bytes] = []
    dropped = 0
    index = 0
    while index < len(lines):
        line = lines[index]
        end = index + 1
        while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
            end += 1
        name, _, rest = line.partition(b":")
        field = lines[index:end]
        if name.strip().lower() == FIELD and is_ours(b" ".join([rest, *field[1:]]), authserv_id):
            dropped += 1
        else:
            kept.extend(field)
        index = end
    return b"\r\n".join(kept), dropped


def _quoted(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c not in '"\\')[:200]
