"""Refuse mail marked secret, top secret or most secret (MIC 4.1, MOST 17.1).

A classification is recognised by its *shape*, never by the letters alone: "mật" is
also half of "mật khẩu" (password), "mật độ" (density), "thân mật" (cordial), a given
name, and sentences *about* state secrets are ordinary mail. So a level counts only

- on a stamp line: a line that is the level and nothing else ("TỐI MẬT"), or a
  labelled stamp ("Độ mật: Tối mật"), in the body, in attachment text, at any depth;
- as a subject tag ("[MẬT] ...", "(Tối mật) ...") or a leading subject stamp
  ("TUYỆT MẬT - ...", "MẬT: ...");
- as the value of a classification header field ("X-Classification: TỐI MẬT");
- as a marker in an attachment's file name ("[MẬT] bao-cao.docx", "TOI_MAT_ke-hoach.pdf").

Case rules (not configurable; they are what keeps prose and names out):

- TỐI MẬT and TUYỆT MẬT count in any case wherever a rule's shape puts them;
- the one-word level MẬT counts only in capitals ("MẬT"), except in brackets ("[Mật]")
  or after a label ("Độ mật: mật"): "Mật - xin nghỉ phép" is a person, not a stamp;
- unaccented spellings (aliases: TOI MAT, TUYET MAT) count only in capitals, except in
  brackets or after a label; the one-word alias MAT ("mat" is many words, and
  MAT_DO_DAN_SO is "mật độ dân số") counts only after a label ("DO MAT: MAT") or as a
  classification header value;
- a rule that does not pin the level down (no ``^``/``$`` anchor, no brackets around
  it, no label before it, or a stamp rule open at both ends) only matches two-word
  levels (TỐI MẬT, TUYỆT MẬT, TOI MAT, TUYET MAT).

The rules work on NFC text (the MIME parse normalises; this module does it again for
safety) with invisible format characters (zero-width space, soft hyphen) removed and
dashes unified, and never put the message's content into the reason: only the level,
the kind of marker and where it was found.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from gateway.mime.model import TextSource
from gateway.pipeline import MessageContext, Verdict, register
from gateway.smtp import replies

RULE = "classification"


@dataclass(frozen=True, slots=True)
class Config:
    """The operator-editable rules; the defaults fit Vietnamese official documents
    (Luật Bảo vệ bí mật nhà nước 2018, Nghị định 30/2020 on document format).

    Pattern syntax (``stamp_lines``, ``subject_tags``, ``filename_patterns``): literal
    text, matched case-insensitively, where a space matches any run of spaces (also none)
    and any dash matches any dash; ``{level}`` stands for one of ``levels`` or
    ``aliases`` (under the case rules in the module docstring), ``{LEVEL}`` the same
    written in capitals only, ``{label}`` one of ``labels``. Exactly one level
    placeholder per pattern; ``{label}`` at most once, before it.

    - stamp line: the pattern must be a whole line (decorations such as ``*``, ``-``,
      ``>``, brackets and quotes around it are ignored); ``...`` at its start or end lets
      other text precede or follow on the line after a separator (tab, two spaces,
      ``,`` ``;`` ``|``, or ``.`` after the level).
    - subject tag / file name: found anywhere on word boundaries; ``^`` at the start pins
      it to the start (of the subject after any ``Re:``/``Fwd:``/``TL:`` prefixes, of the
      file name), ``$`` at the end to the end. File names are matched without their
      extension, with ``_`` and ``.`` read as spaces.
    """

    # Canonical names, as they appear in replies and events.
    levels: tuple[str, ...] = ("TUYỆT MẬT", "TỐI MẬT", "MẬT")
    # "SPELLING = LEVEL": unaccented (or other) spellings of a level.
    aliases: tuple[str, ...] = ("TUYET MAT = TUYỆT MẬT", "TOI MAT = TỐI MẬT", "MAT = MẬT")
    # What may introduce a level on a stamp: "Độ mật: Tối mật".
    labels: tuple[str, ...] = (
        "Độ mật",
        "Mức độ mật",
        "Cấp độ mật",
        "Độ bảo mật",
        "Mức độ bảo mật",
        "DO MAT",
        "MUC DO MAT",
        "CAP DO MAT",
    )
    stamp_lines: tuple[str, ...] = ("{level}", "...{label}: {level}...", "...{label} - {level}...")
    subject_tags: tuple[str, ...] = (
        "[{level}]",
        "({level})",
        "^{level}$",
        "^{level}:",
        "^{level} -",
        "^{label}: {level}",
    )
    # Header fields whose value is a classification (any case, aliases included).
    header_fields: tuple[str, ...] = (
        "X-Classification",
        "Classification",
        "Security-Classification",
        "X-Security-Classification",
        "X-Do-Mat",
        "Do-Mat",
    )
    filename_patterns: tuple[str, ...] = (
        "[{level}]",
        "({level})",
        "^{level} -",
        "^{level}$",
        "{LEVEL}",  # two-word levels in capitals anywhere: KE_HOACH_TOI_MAT.pdf
    )


@dataclass(frozen=True, slots=True)
class Finding:
    level: str  # canonical, from Config.levels
    how: str  # "stamp", "subject tag", "header", "file name"
    location: str  # TextSource.location, made safe for a reply line


# --- preparing text ----------------------------------------------------------------

_LINE_BREAKS = "\r\x0b\x0c\x85\u2028\u2029"
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
# Invisible characters that would split a word for a regex but not for a reader.
_INVISIBLE = "\u00ad\u034f\u180e\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff"
_PREPARE = {
    **{ord(c): "\n" for c in _LINE_BREAKS},
    **{ord(c): "-" for c in _DASHES},
    **{ord(c): None for c in _INVISIBLE},
    ord("\uff1a"): ":",  # fullwidth colon
    ord("\ufe55"): ":",
}


_ASCII_PREPARED = "".join(chr(c) for c in _PREPARE if c < 128)  # "\r", "\x0b", "\x0c"
_NEEDS_PREPARING = re.compile("[" + re.escape("".join(map(chr, _PREPARE))) + "]")


def _prepare(text: str) -> str:
    """NFC, one kind of line break and dash, no invisible characters. A megabyte of an
    office file's text is the usual input: translate only when there is something to
    translate (a C-speed search first; translate with a table is ~50 ns a character).
    ``normalize`` returns NFC text as it is, after the same quick check that
    ``is_normalized`` makes, in less time (1.5 against 2.4 ms for 2 M characters).
    ASCII text is NFC already and can hold only a few of the characters to translate."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if text.isascii():
        return text.translate(_PREPARE) if any(c in text for c in _ASCII_PREPARED) else text
    if _NEEDS_PREPARING.search(text):
        text = text.translate(_PREPARE)
    return unicodedata.normalize("NFC", text)


def _filename_text(name: str) -> str:
    base = re.split(r"[/\\]", name)[-1]
    base = re.sub(r"\.[A-Za-z0-9]{1,5}$", "", base)
    return re.sub(r"[_.]+", " ", base)


def _safe_location(location: str) -> str:
    """Where it was found, fit for one reply line: no control characters, bounded."""
    cleaned = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in location)
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= 120 else cleaned[:117] + "..."


# --- compiling the rules -------------------------------------------------------------

_HSPACE = r"[^\S\n]"  # whitespace that does not end the line
# What may surround a stamp on its line: spaces, bullets, quote marks, brackets, boxes.
_DECORATION = r"(?:[^\S\n]|[*_#>|•·◦▪■□●○=~«»\"'“”‘’„\[\](){}<\-\u2500-\u257f])"
_MARK = r"[*_#>|•·«\"“\[(\-]"
_PLACEHOLDER = re.compile(r"\{(level|LEVEL|label)\}")
_SUBJECT_PREFIX = r"(?:" + _HSPACE + r"*(?i:re|fw|fwd|tl|tr|aw|wg|sv|vs|trả lời|chuyển tiếp)"
_SUBJECT_PREFIX += _HSPACE + r"*:)*" + _HSPACE + "*"


@dataclass(frozen=True, slots=True)
class _Form:
    text: str  # NFC, single spaces
    level: str  # canonical
    alias: bool
    words: int


@dataclass(frozen=True, slots=True)
class _Rules:
    forms: dict[str, str]  # casefolded form -> canonical level
    # Any line that can hold a stamp holds the last word of some level form: finding
    # those words first (C speed) spares the stamp rules all the other lines.
    candidates: re.Pattern[str]
    # The same words as an ASCII text can hold them, lower case: for ASCII text (most
    # header fields, much mail) ``lower()`` and substring tests, ~20x the regex's speed.
    ascii_candidates: tuple[str, ...]
    stamp: re.Pattern[str] | None
    subject: re.Pattern[str] | None
    filename: re.Pattern[str] | None
    header: re.Pattern[str]
    header_fields: frozenset[str]


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def _forms(cfg: Config) -> list[_Form]:
    forms = [_Form(_norm(lv), _norm(lv), False, len(lv.split())) for lv in cfg.levels]
    known = {f.text.casefold(): f.text for f in forms}
    for entry in cfg.aliases:
        spelling, _, level = entry.partition("=")
        level = known.get(_norm(level).casefold(), "")
        if spelling.strip() and level:
            forms.append(_Form(_norm(spelling), level, True, len(spelling.split())))
    return sorted(forms, key=lambda f: -len(f.text))


def _phrase(text: str, space: str) -> str:
    return space.join(re.escape(word) for word in text.split())


def _level_regex(forms: list[_Form], tier: str, capitals: bool, multi_only: bool) -> str:
    """Alternatives for one ``{level}``; tier is "labelled", "bracketed" or "plain"."""
    space = r"[^\S\n]+"
    options = []
    for form in forms:
        if multi_only and form.words < 2:
            continue
        if form.alias and form.words < 2 and tier != "labelled":
            continue  # bare MAT: only after a label
        exact = capitals or (tier == "plain" and (form.alias or form.words < 2))
        body = _phrase(form.text.upper() if exact else form.text, space)
        options.append(body if exact else f"(?i:{body})")
    if not options:
        return r"(?!)"
    return r"(?<!\w)(?:" + "|".join(options) + r")(?!\w)"


def _literal(text: str) -> str:
    out = []
    for chunk in re.split(r"(\s+)", text):
        if not chunk:
            continue
        if chunk.isspace():
            out.append(_HSPACE + "*")
            continue
        body = re.escape(chunk.translate(_PREPARE))
        body = f"(?i:{body})"
        if chunk[0].isalnum() or chunk[0] == "_":
            body = r"(?<!\w)" + body
        if chunk[-1].isalnum() or chunk[-1] == "_":
            body += r"(?!\w)"
        out.append(body)
    return "".join(out)


def _labels_regex(cfg: Config) -> str:
    labels = sorted({_norm(lb) for lb in cfg.labels if lb.strip()}, key=len, reverse=True)
    if not labels:
        return r"(?!)"
    body = "|".join(_phrase(lb, _HSPACE + "+") for lb in labels)
    return r"(?<!\w)(?i:" + body + r")(?!\w)"


def _pattern(pattern: str, context: str, index: int, cfg: Config, forms: list[_Form]) -> str:
    """One rule as a regex with its level in group ``l{index}``; ValueError says why not."""
    text = pattern.strip()
    if context == "stamp":
        open_start, open_end = text.startswith("..."), text.endswith("...")
        text = text.removeprefix("...").removesuffix("...") if len(text) > 3 else ""
        anchored = not (open_start and open_end)
    else:
        open_start, open_end = not text.startswith("^"), not text.endswith("$")
        text = text.removeprefix("^").removesuffix("$")
        anchored = not (open_start and open_end)
    pieces = _PLACEHOLDER.split(text)  # literal, name, literal, name, ...
    names = pieces[1::2]
    levels = [n for n in names if n in ("level", "LEVEL")]
    if len(levels) != 1:
        raise ValueError("needs exactly one {level} or {LEVEL}")
    if names.count("label") > 1 or (
        "label" in names and names.index("label") > names.index(levels[0])
    ):
        raise ValueError("{label} may appear once, before {level}")
    if any(re.search(r"\{\w*\}", piece) for piece in pieces[0::2]):
        raise ValueError("unknown placeholder; use {level}, {LEVEL} or {label}")
    at = pieces.index(levels[0])
    before, after = pieces[at - 1], pieces[at + 1]
    label_at = next((i for i in range(1, at, 2) if pieces[i] == "label"), None)
    labelled = label_at is not None and not re.search(r"\w", "".join(pieces[label_at + 1 : at]))
    bracketed = before.rstrip()[-1:] in ("[", "(") and after.lstrip()[:1] in ("]", ")")
    tier = "labelled" if labelled else "bracketed" if bracketed else "plain"
    pinned = anchored or labelled or bracketed
    regex = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            regex.append(_literal(piece))
        elif piece == "label":
            regex.append(_labels_regex(cfg))
        else:
            level = _level_regex(forms, tier, piece == "LEVEL", not pinned)
            regex.append(f"(?P<l{index}>{level})")
    body = "".join(regex)
    deco = _DECORATION + "*"
    if context == "stamp":
        # Open start: after a separator, with at most a few decorations. Only fixed-width
        # look-behinds here, so a long run of spaces costs a linear scan, not a square one.
        after_separator = r"(?:(?<=[\t,;|])|(?<=[,;|]" + _HSPACE + r")|(?<=" + _HSPACE * 2 + "))"
        start = f"(?:^{deco}|{after_separator}{_MARK}{{0,3}})" if open_start else "^" + deco
        end = (r"(?=" + deco + r"$|[\t,;|.]|" + _HSPACE + "{2})") if open_end else deco + "$"
        return start + body + end
    if context == "subject":
        start = "" if open_start else r"\A" + _SUBJECT_PREFIX
    else:
        start = "" if open_start else r"\A" + _HSPACE + "*"
    end = "" if open_end else _HSPACE + r"*\Z"
    return start + body + end


def _combine(
    patterns: Sequence[str], context: str, cfg: Config, forms: list[_Form]
) -> re.Pattern[str] | None:
    parts = [_pattern(p, context, i, cfg, forms) for i, p in enumerate(patterns)]
    if not parts:
        return None
    return re.compile("|".join(f"(?:{p})" for p in parts), re.MULTILINE)


@lru_cache(maxsize=8)
def _rules(cfg: Config) -> _Rules:
    forms = _forms(cfg)
    header = (
        r"\A" + _HSPACE + r"*(?:" + _labels_regex(cfg) + _HSPACE + r"*[:\-]" + _HSPACE + r"*)?"
        r"(?P<l0>" + _level_regex(forms, "labelled", False, False) + r")"
        r"\s*(?:[;,(/].*)?\Z"
    )
    last_words = sorted({f.text.split()[-1] for f in forms}, key=len, reverse=True)
    return _Rules(
        forms={f.text.casefold(): f.level for f in forms},
        candidates=re.compile("|".join(map(re.escape, last_words)), re.IGNORECASE),
        ascii_candidates=tuple(v for word in last_words for v in _ascii_forms(word)),
        stamp=_combine(cfg.stamp_lines, "stamp", cfg, forms),
        subject=_combine(cfg.subject_tags, "subject", cfg, forms),
        filename=_combine(cfg.filename_patterns, "filename", cfg, forms),
        header=re.compile(header, re.DOTALL),
        header_fields=frozenset(f.strip().casefold() for f in cfg.header_fields),
    )


def _ascii_forms(word: str) -> list[str]:
    """Every lower-case ASCII string that ``word`` matches under ``re.IGNORECASE``
    (none if a letter of it matches no ASCII character). Asked of the regex engine
    itself, letter by letter, so its Unicode equivalences (``ſ`` is an ``s``, the Kelvin
    sign a ``k``) hold here too."""
    choices = []
    for char in word:
        pattern = re.compile(re.escape(char), re.IGNORECASE)
        matched = sorted({chr(a).lower() for a in range(128) if pattern.fullmatch(chr(a))})
        if not matched:
            return []
        choices.append(matched)
    return ["".join(letters) for letters in itertools.product(*choices)]


# --- matching ------------------------------------------------------------------------


def _has_candidate(text: str, rules: _Rules) -> bool:
    """Whether ``text`` holds the last word of some level (``rules.candidates``)."""
    if text.isascii():
        lowered = text.lower()
        return any(word in lowered for word in rules.ascii_candidates)
    return rules.candidates.search(text) is not None


def _level_of(match: re.Match[str], rules: _Rules) -> str:
    found = next(v for k, v in match.groupdict().items() if k.startswith("l") and v)
    return rules.forms[" ".join(found.split()).casefold()]


_HEADER_NAMED = re.compile(r"(?<!\w)header:?\s+([!-9;-~]+)", re.IGNORECASE)


def _header_value(source: TextSource, text: str, fields: frozenset[str]) -> str | None:
    """The value of a classification header field, or None. The parse names the field
    in the location ("header X-Classification", also after a forwarded message's
    prefix) or in the text ("X-Classification: ...")."""
    named = _HEADER_NAMED.findall(source.location)
    if named and named[-1].casefold() in fields:
        repeated = re.match(r"\s*" + re.escape(named[-1]) + r"\s*:", text, re.IGNORECASE)
        return text[repeated.end() :] if repeated else text
    field = re.match(r"\s*([!-9;-~]+)\s*:(.*)\Z", text, re.DOTALL)
    if field and field.group(1).casefold() in fields:
        return field.group(2)
    return None


def _find_in(source: TextSource, rules: _Rules) -> Finding | None:
    text = _prepare(source.text)
    if not _has_candidate(text, rules):
        return None  # every rule needs a level's last word: most texts have none
    if source.kind == "header":
        value = _header_value(source, text, rules.header_fields)
        match = rules.header.match(value.strip()) if value is not None else None
        how = "header"
    elif source.kind == "subject":
        match = rules.subject.search(" ".join(text.split())) if rules.subject else None
        how = "subject tag"
    elif source.kind == "filename":
        name = " ".join(_filename_text(text).split())
        match = rules.filename.search(name) if rules.filename else None
        how = "file name"
    else:  # body, attachment, and any kind the parse may add later: stamps
        match = _stamp(text, rules) if rules.stamp else None
        how = "stamp"
    if match is None:
        return None
    return Finding(_level_of(match, rules), how, _safe_location(source.location))


def _stamp(text: str, rules: _Rules) -> re.Match[str] | None:
    """The first stamp line in ``text``. Stamp rules are line rules (nothing in them
    crosses a line end), so only the lines holding a level's last word are tried, one
    at a time: a megabyte of prose costs one C-speed scan, not a regex at every line."""
    assert rules.stamp is not None
    if len(text) < 4096:
        return rules.stamp.search(text)
    tried = -1
    for hit in rules.candidates.finditer(text):
        start = text.rfind("\n", 0, hit.start()) + 1
        if start <= tried:
            continue  # this line was tried already
        end = text.find("\n", hit.end())
        end = len(text) if end < 0 else end
        tried = start
        found = rules.stamp.search(text, start, end)
        if found is not None:
            return found
    return None


def find_marker(texts: Sequence[TextSource], cfg: Config) -> Finding | None:
    """The first classification marker in ``texts`` (in their order), or None."""
    rules = _rules(cfg)
    for source in texts:
        finding = _find_in(source, rules)
        if finding is not None:
            return finding
    return None


# --- config check and the filter -----------------------------------------------------

_FIELD_NAME = re.compile(r"[!-9;-~]+")


def validate(cfg: Config) -> list[str]:
    """Problems beyond the field types, as "key: problem; fix" (filter_config names the
    table). A rule that cannot compile must stop the config, never pass mail unread."""
    problems: list[str] = []
    seen: set[str] = set()
    for i, level in enumerate(cfg.levels):
        key = _norm(level).casefold()
        if not key:
            problems.append(f'levels[{i}]: empty; remove it or write a level such as "TỐI MẬT"')
        elif key in seen:
            problems.append(f"levels[{i}]: {level!r} is listed twice; list each level once")
        seen.add(key)
    if not cfg.levels:
        problems.append('levels: empty; list at least one level, e.g. ["MẬT"]')
    for i, entry in enumerate(cfg.aliases):
        spelling, eq, level = entry.partition("=")
        if not eq or not spelling.strip():
            problems.append(
                f'aliases[{i}]: {entry!r} is not "SPELLING = LEVEL"; e.g. "TOI MAT = TỐI MẬT"'
            )
        elif _norm(level).casefold() not in seen:
            problems.append(
                f"aliases[{i}]: {level.strip()!r} is not one of levels; name a level from levels"
            )
    for i, label in enumerate(cfg.labels):
        if not label.strip():
            problems.append(f'labels[{i}]: empty; remove it or write a label such as "Độ mật"')
    for i, name in enumerate(cfg.header_fields):
        if not _FIELD_NAME.fullmatch(name.strip()):
            problems.append(
                f"header_fields[{i}]: {name!r} is not a header field name; "
                'write the name alone, e.g. "X-Classification"'
            )
    if problems:
        return problems  # the patterns below need the levels and aliases
    forms = _forms(cfg)
    for key, context in (
        ("stamp_lines", "stamp"),
        ("subject_tags", "subject"),
        ("filename_patterns", "filename"),
    ):
        for i, pattern in enumerate(getattr(cfg, key)):
            try:
                re.compile(_pattern(pattern, context, 0, cfg, forms))
            except (ValueError, re.error) as exc:
                problems.append(
                    f"{key}[{i}]: {pattern!r}: {exc}; see the pattern syntax in the README, "
                    'e.g. "[{level}]"'
                )
    return problems


# Texts larger than this are matched off the event loop (a 16 MiB text takes a while).
_INLINE_CHARS = 256 * 1024


@register(RULE, Config, validate=validate, scan=find_marker)
async def check(ctx: MessageContext, cfg: Config) -> Verdict:
    inspection = await ctx.inspection()
    done = inspection.scan(RULE, cfg)
    if done is not None:  # matched in the parse's worker, beside the texts
        if done.error is not None:
            raise RuntimeError(f"classification scan failed: {done.error}")
        finding = done.value if isinstance(done.value, Finding) else None
    elif inspection.elided:
        raise RuntimeError("texts were left out, but not for these rules")
    elif sum(len(t.text) for t in inspection.texts) <= _INLINE_CHARS:
        finding = find_marker(inspection.texts, cfg)
    else:
        finding = await asyncio.to_thread(find_marker, inspection.texts, cfg)
    if finding is None:
        return Verdict.accept()
    return Verdict.reject(
        replies.CLASSIFIED,
        rule=RULE,
        reason=f"{finding.level} {finding.how} in {finding.location}",
    )
