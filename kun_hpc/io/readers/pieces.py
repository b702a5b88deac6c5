"""The input files of a corpus and the pieces that separate tasks read.

A line-based input larger than ``split_bytes`` is cut into ``count`` pieces (how a piece is read:
:func:`kun_hpc.io.readers.lines.piece_lines`); WuDao arrays and WanJuan tars are read whole.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

# Which files of a folder belong to a format (its native fields: kun_hpc/io/readers/fields.py).
SUFFIXES = {
    "wudao": (".json",),
    "wanjuan": (".jsonl.tar.gz", ".tar.gz", ".tgz"),
    "skypile": (".jsonl", ".jsonl.gz", ".jsonl.zst"),
    "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst"),
}
LINE_BASED = ("skypile", "jsonl")


@dataclass(frozen=True)
class InputPiece:
    """A whole input file, or one of ``count`` pieces of it. ``name``: the file's path relative to the
    folder that holds all of its corpus's files (:func:`plan_pieces`; its base name when not given), so two
    files of one corpus never share a name: records name their file by it (``src``, WuDao ids)."""

    path: str
    index: int = 0
    count: int = 1
    name: str = ""

    @property
    def file_name(self) -> str:
        return self.name or os.path.basename(self.path)

    @property
    def label(self) -> str:
        name = self.file_name
        return name if self.count == 1 else f"{name}[{self.index + 1}/{self.count}]"


def expand_paths(patterns: list[str] | tuple[str, ...], fmt: str) -> list[Path]:
    """Files named by ``patterns`` (files, folders searched recursively by suffix, or globs), sorted."""
    found: set[Path] = set()
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            matches = [f for f in p.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES[fmt])]
            if not matches:
                raise FileNotFoundError(f"no {fmt} files ({', '.join(SUFFIXES[fmt])}) under {p}")
            found.update(matches)
        elif p.is_file():
            found.add(p)
        else:
            matches = [Path(m) for m in glob.glob(pattern, recursive=True) if Path(m).is_file()]
            if not matches:
                raise FileNotFoundError(f"no input files match {pattern!r}")
            found.update(matches)
    return sorted(found)


def plan_pieces(files: list[Path], fmt: str, split_bytes: int) -> list[InputPiece]:
    """The pieces tasks read, each file named relative to the folder all ``files`` share."""
    root = os.path.commonpath([str(f.parent) for f in files]) if files else ""
    pieces = []
    for f in files:
        count = max(1, -(-f.stat().st_size // split_bytes)) if fmt in LINE_BASED else 1
        name = os.path.relpath(f, root)
        pieces.extend(InputPiece(str(f), i, count, name) for i in range(count))
    return pieces
