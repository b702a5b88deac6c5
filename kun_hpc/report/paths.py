"""No local absolute path in what a person reads: the card and the md/html reports pass through
:func:`strip_local_paths` (``report.json`` keeps the paths)."""

from __future__ import annotations

import re
from pathlib import Path

_PART = r"[^\s/`'\"|()\[\]<>{},;]+"
_LOCAL_PATH = re.compile(rf"(?<![\w.:/~+<\-])~?/{_PART}(?:/{_PART})+/?")


def strip_local_paths(text: str) -> str:
    """``text`` with every absolute local path of two parts or more (``/a/b/c``, ``~/b/c``) replaced by its
    last part (``c``); relative paths, URLs, ``1/2``, ``and/or`` and HTML end tags stay.
    What goes into the card and the md/html reports passes here."""

    def last_part(m: re.Match) -> str:
        path = m.group(0).rstrip(".")  # a sentence's full stop stays
        return Path(path.rstrip("/")).name + m.group(0)[len(path) :]

    return _LOCAL_PATH.sub(last_part, text)
