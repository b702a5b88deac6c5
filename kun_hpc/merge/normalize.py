"""The dedup key of a text: what two texts may differ in and still be the same content (issue 13).

Steps (``dedup.normalize``): full-width ASCII and the ideographic space to half width; OpenCC Traditional
-> Simplified (off by default); lower case; then every run of whitespace and punctuation becomes **one
separator** (a space), and the ends are trimmed. Punctuation separates; it never disappears, so ``3 5`` and
``35`` stay apart. What carries meaning stays as it is:

- symbols (Unicode ``S*``: ``+ = < > ^ | ~ $ ¥ °`` ...), so ``3+5`` / ``3-5`` and ``C++`` / ``C#`` differ;
- the ASCII marks that act as operators or in names: ``# % & * / \\ @ _ -``;
- ``. , :`` between two digits (``3.14``, ``1,000``, ``12:30``).

Examples (docs/merge.md has the table)::

    计算3+5的结果，并写出过程。  -> 计算3+5的结果 并写出过程
    “你好，世界！”              -> 你好 世界
    C++ 与 C#                   -> c++ 与 c#
    。                          -> ""  (no content: rejected as ``no_content``)

Two texts are exact duplicates when their keys are equal. Near-duplicate detection shingles
:func:`shingle_text` (the key without separators: a mark added or removed changes no shingle) and checks
:func:`symbols` (the numbers and symbols of the key, in order), which must agree for a near duplicate.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from kun_hpc.text_libraries import t2s_converter

SEPARATOR = " "
_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
KEPT_MARKS = frozenset("#%&*/\\@_-")  # punctuation (P*) that acts as an operator or belongs to a name
NUMBER_MARKS = ".,:"  # kept between two digits only
_LONE_NUMBER_MARK = re.compile(r"(?<!\d)[.,:]|[.,:](?!\d)")
_SEPARATORS = re.compile(r"  +")
_SYMBOLS = re.compile(r"\d+(?:[.,:]\d+)*|[^\w\s]")


@lru_cache(maxsize=4)
def _separator_table(punctuation: bool) -> dict[int, int]:
    """Code point -> space for whitespace, and for punctuation (P*) unless kept; number marks stay for the
    digit check that follows."""
    table: dict[int, int] = {}
    for c in range(sys.maxunicode + 1):
        ch = chr(c)
        cat = unicodedata.category(ch)
        separates = ch.isspace() or cat[0] == "Z" or cat == "Cc"
        if separates or (punctuation and cat[0] == "P" and ch not in KEPT_MARKS and ch not in NUMBER_MARKS):
            table[c] = 0x20
    return table


def make_normalizer(section: Mapping[str, Any]) -> Callable[[str], str]:
    """A function text -> dedup key, from a ``dedup.normalize`` section (or a dict like it).

    With ``punctuation`` false, punctuation is compared as it is (whitespace still separates).
    """
    width, lower, punctuation = (
        bool(section["width"]),
        bool(section["lowercase"]),
        bool(section["punctuation"]),
    )
    table = _separator_table(punctuation)
    convert = t2s_converter(str(section["opencc_config"])) if section["t2s"] else None

    def normalize(text: str) -> str:
        if width:
            text = text.translate(_FULLWIDTH)
        if convert is not None:
            text = convert(text)
        if lower:
            text = text.lower()
        text = text.translate(table)
        if punctuation:
            text = _LONE_NUMBER_MARK.sub(SEPARATOR, text)
        return _SEPARATORS.sub(SEPARATOR, text).strip(SEPARATOR)

    return normalize


def shingle_text(key: str) -> str:
    """The text near-duplicate detection shingles: the key without its separators."""
    return key.replace(SEPARATOR, "")


def symbols(key: str) -> list[str]:
    """The numbers (with their ``. , :``) and the symbols of a key, in order: ``计算3+5的结果`` ->
    ``['3', '+', '5']``. Near duplicates must agree on them (``dedup.symbol_threshold``)."""
    return _SYMBOLS.findall(key)
