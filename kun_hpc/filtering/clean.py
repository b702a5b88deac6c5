"""Text cleaning before segmentation: what it may change, precisely.

In order:

1. ``fix_unicode``: ftfy repairs mojibake and broken Unicode (``ftfy.fix_text``; it also applies NFC).
   Chinese typography is left alone: curly quotes stay curly and full-width punctuation (，。！)
   stays full-width (ftfy's ``uncurl_quotes`` and ``fix_character_width`` are off).
2. ``t2s``: OpenCC converts Traditional to Simplified Chinese (off by default).
3. Line breaks (``\\r\\n``, ``\\r``, ``\\v``, ``\\f``, U+001C-U+001E, U+0085, U+2028, U+2029) become ``\\n``.
4. Every other control (Cc) and format (Cf: zero-width spaces, BOM, bidi marks, soft hyphens) character is
   removed; tabs become spaces.
5. Runs of horizontal whitespace (including U+3000 and no-break spaces) become one space; each line is
   stripped; empty lines go. Paragraphs (the lines) end up separated by a single ``\\n``.

Steps 3-5 only delete or replace characters that are whitespace, Cc or Cf, so ``canon(clean(x)) ==
canon(fixed(x))`` where :func:`canon` drops exactly those characters and :meth:`Cleaner.fixed` applies
steps 1-2 only. The tests check that on the real corpora; anything else cleaning loses is a bug.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import lru_cache

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
        self._opencc = None
        if fix_unicode:
            import ftfy

            self._ftfy = ftfy
            self._ftfy_config = ftfy.TextFixerConfig(
                uncurl_quotes=False, fix_character_width=False, explain=False
            )
        if t2s:
            import opencc

            name = opencc_config.removesuffix(".json")
            self._opencc = opencc.OpenCC(name)
        self.opencc_config = opencc_config

    def fixed(self, text: str) -> str:
        """Steps 1-2 only: the content-changing part of cleaning."""
        if self._ftfy_config is not None and _PLAIN.fullmatch(text) is None:
            text = self._ftfy.fix_text(text, self._ftfy_config)
        if self._opencc is not None:
            text = self._opencc.convert(text)
        return text

    def __call__(self, text: str) -> str:
        text = _LINE_BREAKS.sub("\n", self.fixed(text))
        text = _invisible().sub("", text)
        text = _HSPACE.sub(" ", text)
        return _BLANK_LINES.sub("\n", text).strip(" \n")

    def info(self) -> dict:
        return {
            "fix_unicode": self.fix_unicode,
            "t2s": self.t2s,
            **({"opencc_config": self.opencc_config} if self.t2s else {}),
        }
