"""Byte streams and bounded-memory line splitting for plain, gzip and zstd files."""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import zstandard

CHUNK = 1 << 20

# What a damaged compressed stream or archive raises while it is being read.
STREAM_ERRORS: tuple[type[BaseException], ...] = (
    zstandard.ZstdError,
    zlib.error,
    gzip.BadGzipFile,
    EOFError,
    tarfile.TarError,
)


def compression_of(path: str | Path) -> str:
    name = str(path)
    if name.endswith(".zst"):
        return "zstd"
    if name.endswith(".gz"):
        return "gzip"
    return "none"


def open_stream(path: str | Path) -> BinaryIO:
    """Decompressing binary reader chosen by suffix (.zst, .gz, else plain)."""
    kind = compression_of(path)
    raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, closed with the wrapper
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


class LineTooLong:
    """Stands in for a line longer than the limit; keeps only its start and its length."""

    __slots__ = ("head", "length")

    def __init__(self, head: bytes, length: int):
        self.head = head
        self.length = length


def iter_lines(
    stream: BinaryIO, max_bytes: int, *, start: int = 0, end: int | None = None, chunk: int = CHUNK
) -> Iterator[tuple[int, bytes | LineTooLong]]:
    """Yield ``(byte offset, line)`` for each line of ``stream`` without its newline.

    Memory stays bounded by ``max_bytes``: a longer line is yielded as :class:`LineTooLong`
    (its first bytes and length) and never held whole. With ``end``, only lines that *start*
    before ``end`` are yielded (``start`` is the stream's current offset), which is how a plain
    file is cut into byte-range pieces without losing or repeating a line.
    """
    buf = b""
    pos = start  # offset of buf[0]
    long_head: bytes | None = None  # set while skipping through an over-long line
    long_start = 0
    while True:
        data = stream.read(chunk)
        if not data:
            break
        if long_head is not None:
            nl = data.find(b"\n")
            if nl < 0:
                pos += len(data)
                continue
            pos += nl + 1
            yield long_start, LineTooLong(long_head, pos - 1 - long_start)
            long_head = None
            if end is not None and pos >= end:
                return
            data = data[nl + 1 :]
        buf += data
        lines = buf.split(b"\n")
        buf = lines.pop()
        for line in lines:
            if end is not None and pos >= end:
                return
            if len(line) > max_bytes:
                yield pos, LineTooLong(line[:512], len(line))
            else:
                yield pos, line
            pos += len(line) + 1
        if len(buf) > max_bytes:
            if end is not None and pos >= end:
                return
            long_head, long_start = buf[:512], pos
            pos += len(buf)
            buf = b""
    if long_head is not None:
        yield long_start, LineTooLong(long_head, pos - long_start)
    elif buf and (end is None or pos < end):
        if len(buf) > max_bytes:
            yield pos, LineTooLong(buf[:512], len(buf))
        else:
            yield pos, buf


def seek_line_start(f: BinaryIO, offset: int) -> int:
    """Position a plain file at the first line that starts at or after ``offset``; return that offset."""
    if offset == 0:
        f.seek(0)
        return 0
    f.seek(offset - 1)
    pos = offset - 1
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            return pos
        nl = chunk.find(b"\n")
        if nl >= 0:
            pos += nl + 1
            f.seek(pos)
            return pos
        pos += len(chunk)


class HashingWriter(io.RawIOBase):
    """A write-only sink that feeds a hash and counts bytes on their way to a file."""

    def __init__(self, f: BinaryIO):
        import hashlib

        self._f = f
        self.sha256 = hashlib.sha256()
        self.nbytes = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self._f.write(b)
        self.sha256.update(b)
        self.nbytes += len(b)
        return len(b)
