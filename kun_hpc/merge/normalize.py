"""Text normalisation before hashing: what two texts may differ in and still be duplicates.

Steps, each switchable (``dedup.normalize``): full-width ASCII and the ideographic space to half width,
OpenCC Traditional -> Simplified, lower case, and removal of punctuation/symbols (Unicode ``P*``/``S*``)
and whitespace. The removal is one ``str.translate`` over a table built once per setting.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from kun_hpc.text_libraries import t2s_converter

_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


@lru_cache(maxsize=8)
def _drop_table(punctuation: bool, whitespace: bool) -> dict[int, None]:
    table: dict[int, None] = {}
    for c in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(c))
        if (punctuation and cat[0] in "PS") or (whitespace and (cat[0] == "Z" or chr(c).isspace())):
            table[c] = None
    return table


def make_normalizer(section: Mapping[str, Any]) -> Callable[[str], str]:
    """A function text -> normalised text, from a ``dedup.normalize`` section (or a dict like it)."""
    width, lower = bool(section["width"]), bool(section["lowercase"])
    drop = _drop_table(bool(section["punctuation"]), bool(section["whitespace"]))
    convert = None
    if section["t2s"]:
        convert = t2s_converter(str(section["opencc_config"]))

    def normalize(text: str) -> str:
        if width:
            text = text.translate(_FULLWIDTH)
        if convert is not None:
            text = convert(text)
        if lower:
            text = text.lower()
        return text.translate(drop) if drop else text

    return normalize
