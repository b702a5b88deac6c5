"""The work files of a dedup, one folder per shard under ``<work>/signatures``: bucket entries
(``part-<t>.bin``), fixed-width columns of its records, string columns (keys, ids, corpora) and
``meta.json.zst``; and the verified pairs (``<work>/pairs``).
"""

from __future__ import annotations

import array
import contextlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson
import zstandard

from kun_hpc.io.atomic import atomic_open, atomic_write_bytes

ENTRY = np.dtype([("key", "<u8"), ("row", "<u4")])  # a bucket entry: 12 bytes
PAIR = np.dtype([("a", "<u8"), ("b", "<u8"), ("sim", "<f4")])  # a verified pair of global ids


class Partitions:
    """``partitions`` entry files of one shard, appended batch by batch; on close each is sorted by key
    (stably: one key's entries stay in row order) and renamed into place. Memory: a batch, then one
    partition of one shard."""

    def __init__(self, folder: Path, parts: int, stack: contextlib.ExitStack):
        self.parts, self.folder = parts, folder
        self.paths = [folder / f".part-{t:04d}.unsorted" for t in range(parts)]
        self.files = [stack.enter_context(open(p, "wb")) for p in self.paths]  # noqa: SIM115
        stack.push(self._close)

    def write(self, entries: np.ndarray) -> None:
        which = entries["key"] % np.uint64(self.parts)
        for t, f in enumerate(self.files):
            f.write(entries[which == t].tobytes())

    def _close(self, failed: type | None, *_: Any) -> None:
        for f in self.files:
            f.close()
        for t, path in enumerate(self.paths):
            if failed is not None:
                path.unlink(missing_ok=True)
                continue
            e = np.fromfile(path, dtype=ENTRY)
            atomic_write_bytes(
                self.folder / f"part-{t:04d}.bin", e[np.argsort(e["key"], kind="stable")].tobytes()
            )
            path.unlink()


class Columns:
    """Fixed-width columns of one shard's records (``docs.<name>.bin``, raw little-endian), appended as
    they are made and flushed with each batch; read back with :func:`read_column`."""

    TYPES: ClassVar[dict[str, str]] = {"line": "q", "length": "q", "score": "d", "h1": "Q", "h2": "Q"}

    def __init__(self, folder: Path, stack: contextlib.ExitStack):
        self.rows = 0
        self.buffers = {name: array.array(code) for name, code in self.TYPES.items()}
        self.files = {
            name: stack.enter_context(atomic_open(folder / f"docs.{name}.bin")) for name in self.TYPES
        }

    def add(self, **values: float) -> int:
        for name, value in values.items():
            self.buffers[name].append(value)
        self.rows += 1
        return self.rows - 1

    def flush(self) -> None:
        for name, buf in self.buffers.items():
            self.files[name].write(buf.tobytes())
            del buf[:]


def read_column(folder: Path, name: str) -> np.ndarray:
    """A column written by :class:`Columns`, memory-mapped (reading rows touches only their pages)."""
    path = folder / f"docs.{name}.bin"
    dtype = np.dtype(Columns.TYPES[name])
    return np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype)


class Strings:
    """A column of strings on disk: ``<name>.bin`` (UTF-8, back to back) and ``<name>.ends`` (int64 end
    offsets); written row by row, read by row with ``os.pread`` (a reader holds no table in memory)."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name = folder, name
        self.fds: tuple[int, int] | None = None

    def writer(self, stack: contextlib.ExitStack) -> Callable[[bytes], None]:
        data = stack.enter_context(atomic_open(self.folder / f"{self.name}.bin"))
        ends = stack.enter_context(atomic_open(self.folder / f"{self.name}.ends"))
        at = [0]

        def add(text: bytes) -> None:  # UTF-8
            at[0] += data.write(text)
            ends.write(at[0].to_bytes(8, "little"))

        return add

    def __getitem__(self, row: int) -> str:
        if self.fds is None:
            self.fds = tuple(os.open(self.folder / f"{self.name}.{x}", os.O_RDONLY) for x in ("bin", "ends"))
        data, ends = self.fds
        raw = os.pread(ends, 16, 8 * (row - 1)) if row else b"\0" * 8 + os.pread(ends, 8, 0)
        start, end = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
        return os.pread(data, end - start, start).decode()

    def close(self) -> None:
        for fd in self.fds or ():
            os.close(fd)
        self.fds = None


def save_array(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def load_meta(folder: Path) -> dict:
    return orjson.loads(zstandard.decompress((folder / "meta.json.zst").read_bytes()))
