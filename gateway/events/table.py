"""Events as an aligned table for people: time in UTC and local time, event, who, code, reason.

Every value comes from the log, and a log holds what strangers sent (addresses, message
ids, reply texts): control characters, bidi overrides and line breaks are shown escaped,
long values are cut with "…", and widths count what a terminal shows (combining marks
take no column, wide characters two), so one hostile field can neither break the
layout nor forge a line. Columns have fixed widths so rows print as they are found
(``| head`` stays fast); the reason is last and cut at :data:`REASON_WIDTH`.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Any

__all__ = ["REASON_WIDTH", "clean", "fit", "header", "local_zone_name", "row", "width"]

TIME_WIDTH = 19  # 2026-11-25 08:00:00
EVENT_WIDTH = 23  # the longest name the gateway writes (password_change_refused)
WHO_WIDTH = 52
CODE_WIDTH = 4
REASON_WIDTH = 160
_GAP = "  "


def clean(value: Any) -> str:
    """One printable line: control, format and separator characters escaped."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    out: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if char == " " or category[0] not in "CZ":
            out.append(char)
        elif category == "Zs":
            out.append(" ")
        else:  # Cc, Cf (bidi overrides, zero-width), Cs, Co, Cn, Zl, Zp
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def width(text: str) -> int:
    """Columns ``text`` takes on a terminal."""
    return sum(_char_width(c) for c in text)


def fit(text: str, columns: int, pad: bool = True) -> str:
    """``text`` cut to ``columns`` (ending in "…" when cut), padded with spaces if ``pad``."""
    used, kept = 0, []
    if width(text) > columns:
        columns -= 1
        for char in text:
            w = _char_width(char)
            if used + w > columns:
                break
            kept.append(char)
            used += w
        text, used = "".join(kept) + "…", used + 1
    else:
        used = width(text)
    return text + " " * (columns - used) if pad else text


def local_zone_name() -> str:
    """The local zone's offset as the header shows it, e.g. ``UTC+07:00``."""
    offset = datetime.now().astimezone().strftime("%z")
    return f"UTC{offset[:3]}:{offset[3:]}" if offset else "local"


def header() -> str:
    cells = [
        fit("TIME (UTC)", TIME_WIDTH),
        fit(f"LOCAL ({local_zone_name()})", TIME_WIDTH),
        fit("EVENT", EVENT_WIDTH),
        fit("SENDER → RECIPIENTS", WHO_WIDTH),
        fit("CODE", CODE_WIDTH),
        "REASON",
    ]
    return _GAP.join(cells)


def times(record: dict[str, Any]) -> tuple[str, str]:
    """The event's time in UTC and in local time; an unreadable ``ts`` shown as written."""
    value = record.get("ts")
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raw = fit(clean(value), TIME_WIDTH)
        return raw, fit("", TIME_WIDTH)
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%d %H:%M:%S"), moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _addresses(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [clean(v) if isinstance(v, str) else clean(repr(v)) for v in value]
    return [] if value is None else [clean(value)]


def who(record: dict[str, Any]) -> str:
    """``sender → recipients`` (``<>`` for the null sender); else the user or the client."""
    sender = record.get("sender")
    recipients = _addresses(record.get("recipients")) + _addresses(record.get("recipient"))
    if sender is not None or recipients:
        left = "<>" if sender == "" else clean(sender)
        shown = ", ".join(clean(r) for r in recipients[:3])
        if len(recipients) > 3:
            shown += f" (+{len(recipients) - 3})"
        return f"{left} → {shown}" if recipients else left
    if record.get("user"):
        return f"user {clean(record['user'])}"
    if record.get("client"):
        return f"client {clean(record['client'])}"
    return ""


def row(record: dict[str, Any]) -> str:
    """One table line for ``record``; never more than one line, whatever it holds."""
    utc, local = times(record)
    cells = [
        fit(utc, TIME_WIDTH),
        fit(local, TIME_WIDTH),
        fit(clean(record.get("event", "-")), EVENT_WIDTH),
        fit(who(record), WHO_WIDTH),
        fit(clean(record.get("code", "")), CODE_WIDTH),
        fit(clean(record.get("reason", "")), REASON_WIDTH, pad=False),
    ]
    return _GAP.join(cells).rstrip()
