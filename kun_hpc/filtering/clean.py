"""Text cleaning before segmentation: what it may change, precisely.

In order:

1. ``fix_unicode``: ftfy repairs mojibake and broken Unicode (``ftfy.fix_text``; it also applies NFC).
   Chinese typography is left alone: curly quotes stay curly and full-width punctuation (，。！)
   stays full-width (ftfy's ``uncurl_quotes`` and ``fix_character_width`` are off). ftfy also deletes
   the C0 controls but ``\\t``, ``\\n``, ``\\r``, ``\\f`` (so ``\\v`` and U+001C-U+001E vanish
   rather than break lines) and reads U+0085 as the cp1252 ellipsis.
2. ``t2s``: OpenCC converts Traditional to Simplified Chinese (off by default).
3. Line breaks (``\\r\\n``, ``\\r``, ``\\v``, ``\\f``, U+001C-U+001E, U+0085, U+2028, U+2029) become ``\\n``.
4. Every other control (Cc) and format (Cf: zero-width spaces, BOM, bidi marks, soft hyphens) character is
   removed (tabs stay).
5. Runs of horizontal whitespace (tabs, U+3000, no-break spaces) become one space; each line is
   stripped; empty lines go. Paragraphs (the lines) end up separated by a single ``\\n``.

Steps 3-5 only delete or replace characters that are whitespace, Cc or Cf, so ``canon(clean(x)) ==
canon(fixed(x))`` where :func:`canon` drops exactly those characters and :meth:`Cleaner.fixed` applies
steps 1-2 only. The tests check that on the real corpora; anything else cleaning loses is a bug.

Steps 3-4 are :func:`strip_controls`, which the LLM stages also apply to what the models write (issue 12:
model output held ``\\x07``, ``\\x0b``, ``\\x1c``). Step 5 is not applied there: it would defeat Kun's
whitespace-run rule and flatten an answer's paragraphs.

Damage that cleaning cannot undo is found, not cleaned: :func:`find_damage` names the first U+FFFD (an
earlier decoder replaced bytes it could not read; ftfy also writes one for mojibake that lost bytes), unpaired
surrogate or noncharacter in a text; the filter rejects such documents as ``damaged_text`` (issue 12).
"""

from __future__ import annotations

import re
import sys
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from kun_hpc.text_libraries import t2s_converter, versions

_LINE_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_HSPACE = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r" ?\n[ \n]*")
# Text made only of these (ASCII but "&", CJK ideographs and punctuation, full-width forms, general
# punctuation such as “”…—) is left unchanged by ftfy with our settings, so ftfy is skipped for it; the tests
# check that claim on the real corpora. Anything else (Latin-1, "&", compatibility ideographs, ...) goes
# through ftfy.
_PLAIN = re.compile(
    "[\n\t\x20-\x25\x27-\x7e\u2010-\u2027\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff01-\uff5e]*"
)


@lru_cache(maxsize=1)
def _invisible() -> re.Pattern[str]:
    """Every Cc and Cf code point but ``\\n`` and ``\\t`` (built once per process, ~0.2 s)."""
    cat = unicodedata.category
    codes = [c for c in range(sys.maxunicode + 1) if cat(chr(c)) in ("Cc", "Cf") and c not in (9, 10)]
    ranges: list[list[int]] = []
    for c in codes:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    parts = (re.escape(chr(a)) + ("" if a == b else "-" + re.escape(chr(b))) for a, b in ranges)
    return re.compile("[" + "".join(parts) + "]")


# U+FFFD, surrogates (valid in a Python str from a JSON "\ud800" escape; no UTF-8 writer can encode an
# unpaired one) and the 66 noncharacters (U+FFFE is a byte-swapped BOM: UTF-16 read in the wrong byte order)
_DAMAGE = re.compile(
    "[\ufffd\ud800-\udfff\ufdd0-\ufdef"
    + "".join(chr(plane | 0xFFFE) + chr(plane | 0xFFFF) for plane in range(0, 0x110000, 0x10000))
    + "]"
)


@dataclass(frozen=True)
class Damage:
    """The first damaged character of a text, where it is, and how many there are in all."""

    char: str
    offset: int
    count: int

    def describe(self, where: str = "text") -> str:
        """e.g. ``U+FFFD REPLACEMENT CHARACTER at offset 3 of the text (2 damaged characters in all)``."""
        code = f"U+{ord(self.char):04X}"
        name = unicodedata.name(self.char, "")
        what = f"{code} {name}" if name else f"{code} ({_damage_kind(self.char)})"
        n = f"{self.count} damaged character{'s' if self.count > 1 else ''} in all"
        return f"{what} at offset {self.offset} of the {where} ({n})"


def _damage_kind(char: str) -> str:
    return "unpaired surrogate" if 0xD800 <= ord(char) <= 0xDFFF else "noncharacter"


def find_damage(text: str) -> Damage | None:
    """The first U+FFFD, surrogate or noncharacter of ``text`` (offset in characters), or None when it has
    none (issue 12: damaged input is rejected where it enters, not blamed on a model later)."""
    m = _DAMAGE.search(text)
    if m is None:
        return None
    return Damage(m.group(), m.start(), 1 + len(_DAMAGE.findall(text, m.end())))


def strip_controls(text: str) -> str:
    """Cleaning steps 3-4: line breaks (``\\r\\n``, ``\\r``, ``\\v``, ``\\f``, U+001C-U+001E, U+0085,
    U+2028, U+2029) become ``\\n``; every other control (Cc) and format (Cf) character but ``\\t`` is
    removed. Shared by the filter (documents) and the LLM stages (model output)."""
    return _invisible().sub("", _LINE_BREAKS.sub("\n", text))


def canon(text: str) -> str:
    """``text`` without whitespace, control (Cc) and format (Cf) characters: what cleaning and segmentation
    must preserve, character for character."""
    return _invisible().sub("", "".join(text.split()))


class Cleaner:
    """Callable: raw document text -> cleaned text (possibly empty)."""

    def __init__(self, fix_unicode: bool = True, t2s: bool = False, opencc_config: str = "t2s"):
        self.fix_unicode = fix_unicode
        self.t2s = t2s
        self._ftfy_config = None
        self._t2s = None
        if fix_unicode:
            import ftfy

            self._ftfy = ftfy
            self._ftfy_config = ftfy.TextFixerConfig(
                uncurl_quotes=False, fix_character_width=False, explain=False
            )
        if t2s:
            self._t2s = t2s_converter(opencc_config)  # refuses a release that corrupts text
        self.opencc_config = opencc_config

    def fixed(self, text: str) -> str:
        """Steps 1-2 only: the content-changing part of cleaning."""
        if self._ftfy_config is not None and _PLAIN.fullmatch(text) is None:
            text = self._ftfy.fix_text(text, self._ftfy_config)
        if self._t2s is not None:
            text = self._t2s(text)
        return text

    def __call__(self, text: str) -> str:
        text = _HSPACE.sub(" ", strip_controls(self.fixed(text)))
        return _BLANK_LINES.sub("\n", text).strip(" \n")

    def info(self) -> dict:
        """What cleaning did and which library releases did it (for ``prov``)."""
        return {
            "fix_unicode": self.fix_unicode,
            **(versions("ftfy") if self.fix_unicode else {}),
            "t2s": self.t2s,
            **({"opencc_config": self.opencc_config, **versions("opencc")} if self.t2s else {}),
        }
