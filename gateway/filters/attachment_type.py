"""Refuse executables and scripts, by name and by content (MOST 15.3, 18.5; MIC 10.2).

A sender chooses both the file name and the declared type, so a part is refused when
any of these says "runs when opened":

- its name ends in a blocked extension (``setup.exe``, ``HOP-DONG.PDF.JS``), read the way
  Windows reads it: trailing dots and spaces dropped, invisible format characters
  ignored, any case;
- its bytes are an executable whatever its name (``MZ`` + PE header named ``.pdf``,
  ELF, Mach-O, a ``#!`` script attached as a file), from ``gateway/mime/sniff.py``;
- its name hides the real extension: a document extension followed by a blocked one
  (``hop-dong.pdf.exe``, also with a run of spaces between), or a right-to-left
  override (U+202E) that makes ``hop-dong\\u202efdp.exe`` display as ``hop-dongexe.pdf``;
- it is a zip whose member list (from the one MIME parse) names such a file.

The reason names the file; a name with control characters is shown escaped.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from gateway.mime import sniff
from gateway.mime.model import Inspection
from gateway.pipeline import MessageContext, Verdict, register
from gateway.smtp import replies

RULE = "attachment_type"
MEMBER = " member"  # the location suffix the MIME parse gives zip member names

# Directional controls: no file name needs them, and they make one name display as another.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


@dataclass(frozen=True, slots=True)
class Config:
    """Operator-editable lists; extensions are written without the dot, any case."""

    extensions: tuple[str, ...] = (
        # Windows programs and installers
        "exe", "com", "scr", "pif", "cpl", "dll", "sys", "drv", "ocx", "msi", "msp", "mst",
        "msc", "appx", "msix", "appxbundle", "msixbundle", "application", "gadget",
        # Windows scripts and script hosts
        "bat", "cmd", "js", "jse", "vbs", "vbe", "wsf", "wsh", "wsc", "ps1", "ps1xml",
        "ps2", "psc1", "psm1", "hta", "sct", "inf", "reg", "scf", "shs",
        # shortcuts and links that run things
        "lnk", "url", "website", "settingcontent-ms", "library-ms",
        # disk images that mount with a click (and carry any of the above)
        "iso", "img", "vhd", "vhdx",
        # Java, macOS, Unix (not "bin": generic data files use it; ELF is caught by content)
        "jar", "jnlp", "class", "app", "command", "pkg", "dmg", "sh", "csh", "ksh", "run",
        "elf", "deb", "rpm", "apk",
        # Office add-ins
        "xll", "wll", "xlam", "ppam",
    )  # fmt: skip
    # What sniff.py calls executables; a part whose bytes are one is refused by content.
    sniffed_types: tuple[str, ...] = (
        sniff.PE,
        sniff.ELF,
        sniff.MACHO,
        sniff.JAVA_CLASS,
        sniff.SCRIPT,
    )
    # Extensions people open without fear: one of these before a blocked extension
    # ("hop-dong.pdf.exe") is a disguise, and the reason says so.
    document_extensions: tuple[str, ...] = (
        "pdf", "doc", "docx", "docm", "xls", "xlsx", "xlsm", "ppt", "pptx", "pptm",
        "odt", "ods", "odp", "rtf", "txt", "csv", "xml", "html", "htm", "jpg", "jpeg",
        "png", "gif", "bmp", "tif", "tiff", "mp3", "mp4", "avi", "zip", "rar", "7z",
    )  # fmt: skip
    check_archive_members: bool = True  # names inside zip attachments
    refuse_bidi_names: bool = True  # any right-to-left/left-to-right override in a name


def validate(cfg: Config) -> list[str]:
    problems = []
    for key in ("extensions", "document_extensions"):
        for value in getattr(cfg, key):
            bare = value.strip().lstrip(".")
            if not bare or any(c.isspace() or c in "/\\" for c in bare):
                problems.append(
                    f'{key}: "{value}" is not a file extension; write it without the dot, '
                    'e.g. "exe"'
                )
    for value in cfg.sniffed_types:
        if "/" not in value or value != value.strip():
            problems.append(
                f'sniffed_types: "{value}" is not a media type; write e.g. "{sniff.PE}"'
            )
    return problems


def _ext(value: str) -> str:
    return unicodedata.normalize("NFKC", value).strip().lstrip(".").casefold()


def _visible(name: str) -> str:
    """The name as Windows reads it: format characters (zero-width, bidi) gone,
    trailing dots and spaces dropped."""
    kept = "".join(c for c in name if unicodedata.category(c) != "Cf")
    return kept.rstrip(" .\t")


def _shown(name: str) -> str:
    """The name for a reply or event: control and format characters escaped, a run of
    spaces shown as its count, at most 120 characters."""
    out = "".join(
        f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cc", "Cf") else c for c in name
    )
    out = re.sub(r" {3,}", lambda m: f" [{len(m.group())} spaces] ", out)
    return out if len(out) <= 120 else out[:117] + "..."


def name_problem(name: str, cfg: Config, blocked: frozenset[str]) -> str | None:
    """Why a file name is refused, or None."""
    if cfg.refuse_bidi_names and any(c in _BIDI for c in name):
        return "file name with a direction override hiding its real extension"
    visible = _visible(name)
    base = visible.replace("\\", "/").rsplit("/", 1)[-1]  # zip members carry folders
    pieces = base.split(".")
    if len(pieces) < 2:
        return None
    last = _ext(pieces[-1])
    if last not in blocked:
        return None
    if len(pieces) >= 3:
        before = _ext(pieces[-2])
        documents = {_ext(e) for e in cfg.document_extensions}
        if before in documents:
            return f"double extension .{before}.{last}"
    return f"blocked file type .{last}"


@lru_cache(maxsize=8)
def _normalised(cfg: Config) -> tuple[frozenset[str], frozenset[str]]:
    """The blocked extensions and sniffed types as compared: once per config, not per
    message (NFKC over the whole list cost a 5 KB message a few tens of microseconds)."""
    blocked = frozenset(_ext(e) for e in cfg.extensions)
    return blocked, frozenset(t.strip().lower() for t in cfg.sniffed_types)


def find(inspection: Inspection, cfg: Config) -> str | None:
    """The first refusal reason for a message, ``"{why}: {filename}"``, or None."""
    blocked, types = _normalised(cfg)
    for part in inspection.parts:
        name = part.filename
        if name:
            why = name_problem(name, cfg, blocked)
            if why:
                return f"{why}: {_shown(name)}"
        # Text bodies are read, not run: a pasted "#!/bin/sh" in the message text is
        # prose; the same bytes attached (or in a binary part) are a program.
        is_leaf = not part.content_type.startswith(("multipart/", "message/"))
        carried = part.is_attachment or name or not part.content_type.startswith("text/")
        if is_leaf and carried and part.sniffed_type and part.sniffed_type.lower() in types:
            label = _shown(name) if name else f"part {part.path}"
            return f"executable content ({part.sniffed_type}): {label}"
    if cfg.check_archive_members:
        for text in inspection.texts:
            if text.kind != "filename" or not text.location.endswith(MEMBER):
                continue
            why = name_problem(text.text, cfg, blocked)
            if why:
                archive = text.location[: -len(MEMBER)].removeprefix("attachment ")
                return f"{why} in archive {_shown(archive)}: {_shown(text.text)}"
    return None


@register(RULE, Config, validate=validate)
async def check(ctx: MessageContext, cfg: Config) -> Verdict:
    why = find(await ctx.inspection(), cfg)
    if why is None:
        return Verdict.accept()
    return Verdict.reject(replies.BLOCKED_ATTACHMENT, RULE, why)
