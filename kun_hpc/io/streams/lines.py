"""Bounded-memory line splitting: lines over a size cap become :class:`LineTooLong`, and a plain file is
positioned at a line start for byte-range pieces."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from kun_hpc.io.streams.decoding import CHUNK
from kun_hpc.io.streams.encoding import prologue_length


class LineTooLong:
    """Stands in for a line longer than the limit; keeps only its start and its length."""

    __slots__ = ("head", "length")

    def __init__(self, head: bytes, length: int):
        self.head = head
        self.length = length


def iter_lines(
    stream: BinaryIO,
    max_bytes: int,
    *,
    start: int = 0,
    end: int | None = None,
    chunk: int = CHUNK,
    prologue: bool = False,
) -> Iterator[tuple[int, bytes | LineTooLong]]:
    """Yield ``(byte offset, line)`` for each line of ``stream`` without its newline.

    Memory stays bounded by ``max_bytes``: a longer line is yielded as :class:`LineTooLong`
    (its first bytes and length) and never held whole. With ``end``, only lines that *start*
    before ``end`` are yielded (``start`` is the stream's current offset), which is how a plain
    file is cut into byte-range pieces without losing or repeating a line. With ``prologue`` (the
    stream is at the start of a file), a UTF-8 byte order mark there is skipped and UTF-16/32 text
    raises :class:`UnsupportedEncoding` (see :func:`prologue_length`).

    A line is yielded as soon as its newline was read, so when ``stream.read`` raises (a damaged
    :class:`DecodedStream`), every complete line before the damage was yielded and the unfinished one
    is dropped with the exception.
    """
    buf = b""
    pos = start  # offset of buf[0]
    long_head: bytes | None = None  # set while skipping through an over-long line
    long_start = 0
    while True:
        data = stream.read(chunk)
        if prologue:
            prologue = False
            while len(data) < 4:  # a short first read: look at 4 bytes unless the file is shorter
                more = stream.read(chunk)
                if not more:
                    break
                data += more
            skip = prologue_length(data)
            data = data[skip:]
            pos += skip
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
