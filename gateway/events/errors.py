"""One line for an internal error in an event: its type and where it was raised.

The exception's message is left out on purpose: it may quote what the code was holding
(a credential being decoded, a header, a path with a user name), and events must never
carry secrets. The type and the innermost gateway frame are enough to find the bug; the
full traceback goes to the debugging log.
"""

from __future__ import annotations

import traceback
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


def describe(exc: BaseException) -> str:
    """``KeyError at gateway/queue.py:97 (attempt)``, naming the last frame in our code."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    ours = [f for f in frames if _inside(f.filename)]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return type(exc).__name__
    return f"{type(exc).__name__} at {_short(frame.filename)}:{frame.lineno} ({frame.name})"


def _inside(filename: str) -> bool:
    try:
        Path(filename).resolve().relative_to(_PACKAGE)
    except ValueError:
        return False
    return True


def _short(filename: str) -> str:
    path = Path(filename).resolve()
    try:
        return str(path.relative_to(_PACKAGE.parent))
    except ValueError:
        return path.name


def describe_now() -> str:
    """:func:`describe` for the exception being handled (inside an ``except`` block)."""
    import sys

    exc = sys.exc_info()[1]
    return describe(exc) if exc is not None else "unknown error"
