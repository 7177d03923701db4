"""Mailbox address generator: the naming rule of MIC Art. 5.

Pure functions, no database: the caller says which addresses are unavailable
(taken, or revoked but still reserved) through a predicate, so the directory
keeps the only SQL (STYLE.md section 1).

- Unit mailbox (MIC 5.1): the unit symbol, characters not valid in an address
  replaced by ``_`` (``PTTH&TTĐT`` -> ``ptth_ttdt``).
- Personal mailbox (MIC 5.3): initials of the family and middle names plus the
  given name, Vietnamese without diacritics (``Đỗ Văn Bê`` -> ``dvbe``).
- Collisions (MIC 5.4): the first registrant gets the plain form; later ones a
  reordering of the name's parts, or ``hovaten.tendonvi`` (``dvbe.cntt``).

Every local part produced is lower-case ASCII letters and digits, with at most
one ``.`` between two non-empty atoms (an RFC 5321 dot-atom), and at most
:data:`MAX_LOCAL_PART` characters.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Callable, Iterator

MAX_LOCAL_PART = 64  # RFC 5321 section 4.5.3.1.1
MAX_ARRANGEMENTS = 720  # 6!: every order of a name of up to six words
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
# đ/Đ have no Unicode decomposition, so NFD alone would drop them. Ð (U+00D0, eth)
# and Ɖ (U+0189) are look-alikes that legacy Vietnamese input methods produce for Đ.
_D_LETTERS = {"đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "ɖ": "d", "Ɖ": "D"}


def fold_vietnamese(text: str) -> str:
    """Vietnamese without diacritics (tiếng Việt không dấu, MIC 5.3), as ASCII.

    Works on NFC and NFD input alike: đ/Đ become d/D, every combining mark (the
    vowel marks of ă â ê ô ơ ư and the five tones) is stripped after NFD. Any
    Unicode whitespace becomes a plain space so words stay apart; any other
    character still outside ASCII is dropped.
    """
    out: list[str] = []
    for ch in unicodedata.normalize("NFD", text):
        if ch in _D_LETTERS:
            out.append(_D_LETTERS[ch])
        elif ch.isascii():
            out.append(ch)
        elif ch.isspace():
            out.append(" ")
        # combining marks and anything else outside ASCII: dropped
    return "".join(out)


def name_parts(full_name: str) -> list[str]:
    """Words of a full name (NFC, whitespace-normalised), family name first.

    Raises ValueError for an empty name or one without any letter, since no
    address (MIC 5.3) can be built from it.
    """
    words = unicodedata.normalize("NFC", full_name).split()
    if not words:
        raise ValueError("full name is empty")
    if not any(ch.isalpha() for word in words for ch in word):
        raise ValueError(f"full name has no letters: {full_name.strip()!r}")
    return words


def _pieces(full_name: str) -> tuple[list[str], str]:
    """(initials of family and middle names, given name), folded and lower-case.

    Words with neither letters nor digits (a stray ``-``) are skipped. A word
    whose letters do not fold to ASCII (say, Chinese characters) is refused
    rather than silently dropped, which would give someone else's initials.
    The given name is truncated so the plain form fits in MAX_LOCAL_PART.
    """
    folded: list[str] = []
    for word in name_parts(full_name):
        ascii_word = "".join(ch for ch in fold_vietnamese(word) if ch in _ALNUM).lower()
        if ascii_word:
            folded.append(ascii_word)
        elif any(ch.isalpha() for ch in word):
            raise ValueError(
                f"name word {word!r} has no letters that can be written without "
                "diacritics; enter a Latin transliteration"
            )
    if not folded:
        raise ValueError(f"full name has no usable letters: {full_name.strip()!r}")
    initials = [word[0] for word in folded[:-1]]
    if len(initials) >= MAX_LOCAL_PART:
        raise ValueError(f"full name has too many words ({len(folded)}) for an address")
    given = folded[-1][: MAX_LOCAL_PART - len(initials)]
    return initials, given


def base_local_part(full_name: str) -> str:
    """The plain personal local part of MIC 5.3: ``Đỗ Văn Bê`` -> ``dvbe``.

    Initials of the family and middle names followed by the whole given name,
    folded and lower-cased; a one-word name gives that word (``Hùng`` -> ``hung``).
    A given name that would push the local part past 64 characters is cut at the
    end (RFC 5321 limit); apostrophes and hyphens inside a word (``H'Hen``) are
    dropped.
    """
    initials, given = _pieces(full_name)
    return "".join(initials) + given


def unit_symbol(text: str) -> str:
    """A unit symbol as a local part (MIC 5.1): ``PTTH&TTĐT`` -> ``ptth_ttdt``.

    Folded and lower-cased; anything other than an ASCII letter or digit becomes
    ``_`` (conservative: ``.``, ``-`` and ``+`` too), runs of ``_`` collapse and
    ``_`` is stripped at both ends. Cut to 64 characters. Raises ValueError when
    nothing is left.
    """
    out: list[str] = []
    for ch in unicodedata.normalize("NFD", text):
        if unicodedata.combining(ch):
            continue  # a vowel or tone mark of the preceding letter
        ch = _D_LETTERS.get(ch, ch)
        out.append(ch.lower() if ch in _ALNUM else "_")
    symbol = "_".join(part for part in "".join(out).split("_") if part)
    symbol = symbol[:MAX_LOCAL_PART].rstrip("_")
    if not symbol:
        raise ValueError(f"unit symbol has no letters or digits: {text.strip()!r}")
    return symbol


def _arrangements(initials: list[str], given: str) -> Iterator[str]:
    """Orders of the name's parts, the plain form first (see :func:`candidates`)."""
    k = len(initials)
    # The given name last, then first, then at each inner position: it stays whole
    # and, at an end of the address, recognisable. Orders are made lazily: a long
    # name has k! of them and the caller stops after MAX_ARRANGEMENTS.
    for position in [k, *range(k)]:
        for order in itertools.permutations(range(k)):
            parts = [initials[i] for i in order]
            parts.insert(position, given)
            yield "".join(parts)


def candidates(full_name: str, unit: str | None = None) -> Iterator[str]:
    """Personal local parts in the order MIC 5.4 prescribes, without repeats.

    1. The plain form of MIC 5.3 (``dvbe``).
    2. Other orders of the parts (the initials, each one letter, and the whole
       given name), grouped by where the given name sits: last, then first, then
       each inner position left to right; within a group the initials follow
       ``itertools.permutations`` of their positions in the name. For ``Đỗ Văn
       Bê``: ``dvbe vdbe bedv bevd dbev vbed``. At most MAX_ARRANGEMENTS orders
       are tried, so a name of seven or more words gets only the first ones.
    3. With ``unit``: ``<plain>.<unit_symbol(unit)>`` (``dvbe.cntt``), the plain
       part cut if the two together exceed 64 characters.
    4. ``<plain>2``, ``<plain>3``, ... without end, so a caller always gets one.

    A form equal to an earlier one is skipped (``Nguyễn Ngọc Ngạn`` has two equal
    initials). Bad names or units raise ValueError here, not at first ``next()``.
    """
    initials, given = _pieces(full_name)
    symbol = unit_symbol(unit) if unit is not None else None
    return _generate(initials, given, symbol)


def _generate(initials: list[str], given: str, symbol: str | None) -> Iterator[str]:
    plain = "".join(initials) + given
    seen: set[str] = set()
    forms = itertools.islice(_arrangements(initials, given), MAX_ARRANGEMENTS)
    if symbol is not None:
        head = plain[: max(1, MAX_LOCAL_PART - 1 - len(symbol))]
        forms = itertools.chain(forms, [f"{head}.{symbol[: MAX_LOCAL_PART - 1 - len(head)]}"])
    numbered = (plain[: MAX_LOCAL_PART - len(str(n))] + str(n) for n in itertools.count(2))
    for form in itertools.chain(forms, numbered):
        if form not in seen:
            seen.add(form)
            yield form


def suggest(
    full_name: str,
    domain: str,
    unavailable: Callable[[str], bool],
    unit: str | None = None,
) -> str:
    """The first candidate address whose ``local@domain`` is not unavailable.

    ``unavailable`` receives the full lower-case address and must say True for
    addresses in use and for revoked ones still reserved, so MIC 5.4 never hands
    out a taken address. Returns the local part only.
    """
    domain = domain.strip().lower()
    if not domain or "@" in domain:
        raise ValueError(f"domain must be a bare domain name, got {domain!r}")
    for local in candidates(full_name, unit):
        if not unavailable(f"{local}@{domain}"):
            return local
    raise AssertionError("unreachable: candidates() never runs dry")
