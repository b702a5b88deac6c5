"""Line-based input (SkyPile and generic JSONL): the lines of one piece, and the records in them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import orjson

from kun_hpc.io.quarantine import Bad
from kun_hpc.io.readers.bad import corrupt_stream, too_long, unsupported_encoding
from kun_hpc.io.readers.pieces import InputPiece
from kun_hpc.io.readers.records import Item, RecordMaker, parse_json
from kun_hpc.io.streams import (
    STREAM_ERRORS,
    LineTooLong,
    UnsupportedEncoding,
    compression_of,
    iter_lines,
    open_stream,
    prologue_length,
    seek_line_start,
)


def piece_lines(piece: InputPiece, max_bytes: int) -> Iterator[tuple[str, bytes | LineTooLong] | Bad]:
    """``(position, line)`` for each non-blank line of a piece; a damaged stream ends with a :class:`Bad`.

    A problem of the whole file is reported once, by the piece that starts it (index 0): a text encoding
    other than UTF-8 (``unsupported_encoding`` at "byte 0"), and the damage of a compressed file, which
    every piece reads through (``corrupt_stream`` "after line N", N the file's last complete line).
    Only piece 0 can hold the prologue (a UTF-8 byte order mark), which it skips.
    """
    where = "line 0"
    first = piece.index == 0
    try:
        if compression_of(piece.path) == "none":
            with open(piece.path, "rb") as f:
                if not first:
                    prologue_length(f.read(4))  # refuse UTF-16/32 here too, without a report of its own
                size = os.fstat(f.fileno()).st_size
                start = seek_line_start(f, piece.index * size // piece.count)
                end = (piece.index + 1) * size // piece.count
                lines = iter_lines(f, max_bytes, start=start, end=end, prologue=first)
                for lineno, (off, line) in enumerate(lines, 1):
                    # line numbers are known only when the piece starts the file
                    where = f"line {lineno}" if first else f"byte {off}"
                    if line:
                        yield where, line
            return
        with open_stream(piece.path) as f:
            for lineno, (_, line) in enumerate(iter_lines(f, max_bytes, prologue=True), 1):
                where = f"line {lineno}"
                if piece.count > 1 and lineno % piece.count != piece.index:
                    continue
                if line:
                    yield where, line
    except UnsupportedEncoding as e:
        if first:
            yield unsupported_encoding(piece.label, "byte 0", e)
    except STREAM_ERRORS as e:
        if first:
            yield corrupt_stream(piece.label, where, e)


def read_lines(piece: InputPiece, make: RecordMaker, max_bytes: int) -> Iterator[Item]:
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    for item in piece_lines(piece, max_bytes):
        if type(item) is Bad:
            yield item
            continue
        where, line = item
        if type(line) is bytes:
            if not line.isspace():  # lines are never empty here; isspace() is `not strip()` without a copy
                try:
                    obj = loads(line)
                except decode_error:
                    yield parse_json(line, make, where)  # parses again, to say why
                    continue
                yield make(obj, where, line)
        else:
            yield too_long(make, where, line, max_bytes)
