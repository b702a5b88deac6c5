"""Byte streams and bounded-memory line splitting for plain, gzip and zstd files.

Compressed input is decoded frame by frame and member by member, so that truncation and damage are seen and
cost no complete line: every complete line before the damage is yielded, the cut one is not, and then one of
:data:`STREAM_ERRORS` is raised (issue 12). A UTF-8 byte order mark is skipped; UTF-16 and UTF-32 text is
refused with :class:`UnsupportedEncoding`, naming the encoding.

The parts: :mod:`.decoding` (:func:`open_stream`: plain, gzip and zstd decoded so that damage and truncation
are raised only after every decodable byte; what cannot be detected), :mod:`.encoding` (the UTF-8 byte order
mark skipped, UTF-16/32 refused), :mod:`.lines` (:func:`iter_lines`: lines with a size cap, longer ones as
:class:`LineTooLong`; byte-range starts of plain files) and :mod:`.writers` (:class:`HashingWriter`).
"""

from __future__ import annotations

from kun_hpc.io.streams.decoding import CHUNK, STREAM_ERRORS, DecodedStream, compression_of, open_stream
from kun_hpc.io.streams.encoding import UnsupportedEncoding, prologue_length
from kun_hpc.io.streams.lines import LineTooLong, iter_lines, seek_line_start
from kun_hpc.io.streams.writers import HashingWriter

__all__ = [
    "CHUNK",
    "STREAM_ERRORS",
    "DecodedStream",
    "HashingWriter",
    "LineTooLong",
    "UnsupportedEncoding",
    "compression_of",
    "iter_lines",
    "open_stream",
    "prologue_length",
    "seek_line_start",
]
