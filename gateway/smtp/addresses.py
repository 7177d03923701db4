"""Fast path for the envelope addresses nearly every client sends: ``<local@domain>``.

aiosmtpd parses each MAIL/RCPT argument with the ``email`` package's RFC 5322
grammar (and defines a class on every call): about a fifth of the gateway's CPU
per message. Plain dot-atom addresses are checked here with string operations;
anything else (quoted local parts, IDN, source routes) falls back to aiosmtpd.
"""

from __future__ import annotations

import string

# RFC 5322 atext, the characters of an unquoted local part besides "."
_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
_DOMAIN = frozenset(string.ascii_letters + string.digits + "-.")


def _dot_atom(text: str, allowed: frozenset[str]) -> bool:
    return (
        bool(text)
        and text[0] != "."
        and text[-1] != "."
        and ".." not in text
        and all(c in allowed for c in text if c != ".")
    )


def plain_angle_address(arg: str) -> tuple[str, str] | None:
    """``(address, rest)`` for ``<dot.atom@domain> params``, or None to use the full parser."""
    text = arg.lstrip()
    if not text.startswith("<"):
        return None
    end = text.find(">")
    if end < 0:
        return None
    address, rest = text[1:end], text[end + 1 :].lstrip(" \t")
    local, at, domain = address.rpartition("@")
    if not at or "@" in local:
        return None
    if not _dot_atom(local, _ATEXT) or not _dot_atom(domain, _DOMAIN):
        return None
    return address, rest
