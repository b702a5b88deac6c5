"""Quarantine: where bad input goes, with the file, position and reason, and counted by reason."""

from __future__ import annotations

import contextlib
import io
import sys
from collections import Counter
from pathlib import Path

import orjson
import zstandard

from kun_hpc.io.atomic import atomic_open

PREVIEW_CHARS = 300


class Bad:
    """One unusable input item: where it was and why it is unusable."""

    __slots__ = ("detail", "position", "preview", "reason", "source")

    def __init__(self, source: str, position: str, reason: str, detail: str = "", preview: bytes | str = b""):
        self.source = source
        self.position = position
        self.reason = reason
        self.detail = detail
        if isinstance(preview, bytes):
            preview = preview[: PREVIEW_CHARS * 4].decode("utf-8", "replace")
        self.preview = preview[:PREVIEW_CHARS]

    def message(self) -> str:
        return f"{self.source}:{self.position}: {self.reason}" + (f" ({self.detail})" if self.detail else "")

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "position": self.position,
            "reason": self.reason,
            "detail": self.detail,
            "preview": self.preview,
        }


class Quarantine:
    """Streams the :class:`Bad` items of one unit to a zstd JSONL file and counts them by reason.

    The file appears (atomically) at :meth:`close`, and only if something was quarantined.
    """

    def __init__(self, path: str | Path, echo_first: int = 5):
        self.path = Path(path)
        self.counts: Counter[str] = Counter()
        self._echo_first = echo_first
        self._echo_left = echo_first
        self._file: contextlib.AbstractContextManager | None = None
        self._writer = None

    def add(self, bad: Bad) -> None:
        self.counts[bad.reason] += 1
        if self._writer is None:
            self._file = atomic_open(self.path)
            self._writer = zstandard.ZstdCompressor(level=3).stream_writer(
                self._file.__enter__(), closefd=False
            )
        self._writer.write(orjson.dumps(bad.to_dict(), option=orjson.OPT_APPEND_NEWLINE))
        if self._echo_left > 0:
            self._echo_left -= 1
            print(f"quarantined: {bad.message()}", file=sys.stderr, flush=True)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        """Write the file; when more items came than were echoed, say how many more and where they all are."""
        if self._writer is not None:
            self._writer.close()
            self._file.__exit__(None, None, None)
            self._writer = self._file = None
            if 0 < self._echo_first < self.total:
                more = self.total - self._echo_first
                print(f"quarantined: {more:,} more; all {self.total:,} are in {self.path}", file=sys.stderr)


def read_quarantine(path: str | Path) -> list[dict]:
    data = zstandard.ZstdDecompressor().decompressobj().decompress(Path(path).read_bytes())
    return [orjson.loads(line) for line in data.splitlines() if line]


def first_quarantined(folder: str | Path, n: int) -> list[Bad]:
    """The first ``n`` entries of the quarantine files in ``folder`` (``*.jsonl.zst``, in name order), each
    file streamed only as far as needed; fewer when there are fewer, none when the folder is absent."""
    found: list[Bad] = []
    for path in sorted(Path(folder).glob("*.jsonl.zst")):
        if len(found) >= n:
            break
        with path.open("rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as reader:
            for line in io.BufferedReader(reader):  # type: ignore[arg-type]
                found.append(Bad(**orjson.loads(line)))
                if len(found) == n:
                    break
    return found
