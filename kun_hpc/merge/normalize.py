"""The dedup key of a text: what two texts may differ in and still be the same content (issue 13).

Steps (``dedup.normalize``): full-width ASCII (but full-width brackets, quotes, ``！`` and ``？``, which are
Chinese punctuation) and the ideographic space to half width, curly quotes to straight ones, ``−`` and a
dash between digits to ``-``; OpenCC Traditional
-> Simplified (off by default); lower case; then every run of whitespace and punctuation becomes **one
separator** (a space), and the ends are trimmed. Punctuation separates; it never disappears, so ``3 5`` and
``35`` stay apart. What carries meaning stays as it is:

- symbols (Unicode ``S*``: ``+ = < > ^ | ~ $ ¥ °`` ...), so ``3+5`` / ``3-5`` and ``C++`` / ``C#`` differ;
- the ASCII marks that act as operators or in names: ``# % & * / \\ @ _``;
- the ASCII marks of code and formulas where they touch an ASCII letter, digit or another such mark:
  ``- ' " ( ) [ ] { }`` (``f'(x)``, ``arr[i]``, ``print("a")``, ``-5``, ``3-5``; spaces around an operator
  between letters or digits go: ``3 - 5`` is ``3-5``), ``!`` after a digit (``5!``) and ``?`` between two
  (``a?b``); elsewhere they are punctuation (``北京-上海``, ``（其二）``, ``你好吗?``);
- ``. , :`` between two digits (``3.14``, ``1,000``, ``12:30``).

Examples (docs/merge.md has the table)::

    计算3+5的结果，并写出过程。  -> 计算3+5的结果 并写出过程
    “你好，世界！”              -> 你好 世界
    C++ 与 C#                   -> c++ 与 c#
    。                          -> ""  (no content: rejected as ``no_content``)

Two texts are exact duplicates when their keys are equal. Near-duplicate detection shingles
:func:`shingle_text` (the key without separators: a mark added or removed changes no shingle) and checks
:func:`tokens` (the numbers, words and symbols of the key, in order), which must agree for a near duplicate.
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
_PROSE_MARKS = "！＂＇（）［］｛｝？"  # full-width, so Chinese punctuation: not folded into code marks
_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F) if chr(c) not in _PROSE_MARKS} | {
    0x3000: 0x20,
    0x2212: ord("-"),  # the minus sign
    **dict.fromkeys(map(ord, "\u2018\u2019\u201a\u201b"), ord("'")),  # curly single quotes
    **dict.fromkeys(map(ord, "\u201c\u201d\u201e\u201f"), ord('"')),  # curly double quotes
}
_DIGIT_DASH = re.compile(r"(?<=\d)[\u2010-\u2015](?=\d)")  # 1990–2000 is 1990-2000
KEPT_MARKS = "#%&*/\\@_"  # punctuation (P*) that acts as an operator or belongs to a name
CODE_MARKS = "-'\"()[]{}!?"  # kept where they touch an ASCII letter or digit (see the module docstring)
NUMBER_MARKS = ".,:"  # kept between two digits only
_LONE_NUMBER_MARK = re.compile(r"(?<!\d)[.,:]|[.,:](?!\d)")
_CODE = r"[0-9A-Za-z'\"()\[\]{}+\-*/=<>^%]"  # what a code mark may touch to stay
_LONE_CODE_MARK = re.compile(
    rf"(?<!{_CODE})[-'\"()\[\]{{}}](?!{_CODE})"  # touching no ASCII letter, digit or code mark
    r"|(?<![0-9])!|\?(?![0-9A-Za-z])|(?<![0-9A-Za-z])\?"  # ! only after a digit, ? only between two
)
_SPACED_OPERATOR = re.compile(r"(?<=[0-9A-Za-z)]) +(?=[-+*/=<>^%×÷])|(?<=[-+*/=<>^%×÷]) +(?=[0-9A-Za-z(])")
_SEPARATORS = re.compile(r"  +")
_TOKENS = re.compile(
    r"\d+(?:[.,:]\d+)*"  # a number
    r"|[A-Za-z\u00c0-\u024f\u0370-\u03ff\u0400-\u04ff]+"  # a Latin, Greek or Cyrillic word
    r"|[^\w\s]|[\u00b2\u00b3\u00b9\u00bc-\u00be\u2070-\u209f\u2150-\u218f\u2460-\u24ff]"  # a symbol
)


@lru_cache(maxsize=4)
def _separator_table(punctuation: bool) -> dict[int, int]:
    """Code point -> space for whitespace, and for punctuation (P*) unless kept; number marks stay for the
    digit check that follows."""
    table: dict[int, int] = {}
    for c in range(sys.maxunicode + 1):
        ch = chr(c)
        cat = unicodedata.category(ch)
        separates = ch.isspace() or cat[0] == "Z" or cat == "Cc"
        if separates or (punctuation and cat[0] == "P" and ch not in KEPT_MARKS + NUMBER_MARKS + CODE_MARKS):
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
            text = _DIGIT_DASH.sub("-", text.translate(_FULLWIDTH))
        if convert is not None:
            text = convert(text)
        if lower:
            text = text.lower()
        text = text.translate(table)
        if punctuation:
            text = _SPACED_OPERATOR.sub("", text)  # 3 - 5 is 3-5
            text = _LONE_CODE_MARK.sub(SEPARATOR, _LONE_NUMBER_MARK.sub(SEPARATOR, text))
        return _SEPARATORS.sub(SEPARATOR, text).strip(SEPARATOR)

    return normalize


def shingle_text(key: str) -> str:
    """The text near-duplicate detection shingles: the key without its separators."""
    return key.replace(SEPARATOR, "")


def tokens(key: str) -> list[str]:
    """The numbers (with their ``. , :``), the words of alphabetic scripts and the symbols of a key, in
    order: ``用Python计算3+5`` -> ``['python', '3', '+', '5']``. Two short near duplicates must have the same
    tokens, two long ones alike sequences (``dedup.token_threshold``): a number, an operator, a name or a
    unit that differs makes another question however alike the rest is."""
    return _TOKENS.findall(key)
