"""KNOWN_EVENTS stays the list of what the code emits (``logs search --event`` trusts it)."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway
from gateway.events.names import KNOWN_EVENTS

EMITTERS = {"emit", "_emit", "_emit_end"}


def emitted_names() -> dict[str, str]:
    """Each event name passed as a literal to an emit call under gateway/, with where."""
    found: dict[str, str] = {}
    root = Path(gateway.__file__).parent
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            if name not in EMITTERS:
                continue
            for arg in node.args[:2]:  # emit("x", ...) or _emit(server, "x", ...)
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.setdefault(arg.value, f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_every_emitted_event_is_known() -> None:
    unknown = {n: where for n, where in emitted_names().items() if n not in KNOWN_EVENTS}
    assert unknown == {}, "add these to gateway/events/names.py"


def test_the_scan_finds_the_emitters() -> None:
    """Guards the guard: a scan that found nothing would pass the test above vacuously."""
    assert {"gateway_start", "auth_failure", "mailbox_added", "log_purged"} <= set(emitted_names())


def test_names_are_unique_lowercase_words() -> None:
    assert len(set(KNOWN_EVENTS)) == len(KNOWN_EVENTS)
    assert all(n.isascii() and n.replace("_", "").isalpha() and n.islower() for n in KNOWN_EVENTS)
