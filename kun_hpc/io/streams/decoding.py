"""Decompressing byte streams for plain, gzip and zstd files.

Compressed input is decoded here, frame by frame and member by member, rather than by zstandard's
``stream_reader`` (which reads a truncated frame as a clean end of file) or the ``gzip`` module (which
throws away what one read had decoded when it meets the damage). A :class:`DecodedStream` hands out every
byte that can be decoded and only then raises one of :data:`STREAM_ERRORS`; with
:func:`~kun_hpc.io.streams.lines.iter_lines` that means every complete line before the damage is yielded and
the cut line is not (issue 12).

What can and cannot be told apart (issue 12):

* zstd: the file ending inside a frame (in its header, a block or its checksum) raises ``EOFError``; a
  damaged block raises ``zstandard.ZstdError`` for that block alone, after the blocks before it. A file
  cut exactly between two frames is indistinguishable from a complete file with fewer frames (the format
  keeps no frame count): it reads as complete.
* gzip: the file ending inside a member raises ``EOFError``; a damaged member raises ``zlib.error`` after
  all the output decodable before the bad byte (often only at the member's CRC check: deflate notices
  most damage late, so lines decoded before it still go through JSON parsing one by one). Zero padding
  after the last member is accepted, as by ``gzip``; other trailing bytes raise ``gzip.BadGzipFile``.
  A file cut exactly between members reads as complete, as with zstd frames.
"""

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
_GZIP_IN = 1 << 16  # compressed bytes per zlib call: the unit that is re-fed a byte at a time on damage

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
    if name.endswith((".gz", ".tgz")):
        return "gzip"
    return "none"


def open_stream(path: str | Path) -> BinaryIO:
    """Decompressing binary reader chosen by suffix (.zst, .gz/.tgz, else plain): a
    :class:`DecodedStream` for compressed files, which raises one of :data:`STREAM_ERRORS` once every
    decodable byte before damage or truncation was read."""
    kind = compression_of(path)
    raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, closed with the wrapper
    if kind == "zstd":
        return DecodedStream(raw, _zstd_pieces(raw))  # type: ignore[return-value]
    if kind == "gzip":
        return DecodedStream(raw, _gzip_pieces(raw))  # type: ignore[return-value]
    return raw


class DecodedStream(io.RawIOBase):
    """A read-only stream over decoded pieces. When decoding fails, the bytes decoded before the failure
    are read first; the error is raised by the read after them (and by every read after that)."""

    def __init__(self, raw: BinaryIO, pieces: Iterator[bytes]):
        self._raw = raw
        self._pieces: Iterator[bytes] | None = pieces
        self._buf = b""
        self._error: BaseException | None = None
        self._pos = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        buf = self._buf
        if len(buf) < n and self._pieces is not None and self._error is None:
            parts, have = [buf], len(buf)
            while have < n:
                try:
                    piece = next(self._pieces)
                except StopIteration:
                    self._pieces = None
                    break
                except STREAM_ERRORS as e:
                    self._error = e
                    break
                parts.append(piece)
                have += len(piece)
            buf = b"".join(parts)
        if not buf and self._error is not None:
            raise self._error
        out, self._buf = (buf, b"") if len(buf) <= n else (buf[:n], buf[n:])
        self._pos += len(out)
        return out

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._pieces = None
            self._raw.close()
        super().close()


class _Input:
    """Exact-size reads from a raw file, buffered in CHUNK reads."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._buf = b""
        self._at = 0
        self.offset = 0  # bytes taken so far

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes, fewer only at the end of the file."""
        if len(self._buf) - self._at < n:
            parts = [self._buf[self._at :]]
            have = len(parts[0])
            while have < n:
                data = self._raw.read(max(CHUNK, n - have))
                if not data:
                    break
                parts.append(data)
                have += len(data)
            self._buf, self._at = b"".join(parts), 0
        out = self._buf[self._at : self._at + n]
        self._at += len(out)
        self.offset += len(out)
        return out


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_FCS_BYTES = (0, 2, 4, 8)  # Frame_Content_Size bytes by FCS flag (0 means 1 with Single_Segment)
_ZSTD_DID_BYTES = (0, 1, 2, 4)


def _zstd_pieces(raw: BinaryIO) -> Iterator[bytes]:
    """The decoded bytes of a zstd file, one block at a time (RFC 8878 framing, walked here so that the
    end of the file inside a frame is seen and a bad block costs only itself). Skippable frames are
    skipped; several frames are read one after another."""
    src = _Input(raw)
    dctx = zstandard.ZstdDecompressor()
    frame = 0

    def cut(what: str) -> EOFError:
        return EOFError(f"the file ends inside zstd frame {frame} ({what}): it is truncated")

    def need(n: int, what: str) -> bytes:
        data = src.take(n)
        if len(data) < n:
            raise cut(what)
        return data

    while True:
        start = src.offset
        magic = src.take(4)
        if not magic:
            return
        frame += 1
        if len(magic) < 4:
            raise cut("its magic number")
        if magic[1:] == b"\x2a\x4d\x18" and magic[0] & 0xF0 == 0x50:  # a skippable frame
            size = int.from_bytes(need(4, "skippable frame size"), "little")
            while size:
                size -= len(need(min(size, CHUNK), "skippable frame"))
            continue
        if magic != _ZSTD_MAGIC:
            raise zstandard.ZstdError(f"byte {start}: not a zstd frame (magic {magic.hex()})")
        desc = need(1, "frame header")
        d = desc[0]
        single = d >> 5 & 1
        fcs = _ZSTD_FCS_BYTES[d >> 6] or single
        header = magic + desc + need((1 - single) + _ZSTD_DID_BYTES[d & 3] + fcs, "frame header")
        checksum = d >> 2 & 1
        obj = dctx.decompressobj()
        obj.decompress(header)
        block = 0
        while True:
            block += 1
            bh = need(3, f"block {block} header")
            v = int.from_bytes(bh, "little")
            kind = v >> 1 & 3
            size = 1 if kind == 1 else v >> 3  # an RLE block holds the one byte it repeats
            body = src.take(size)
            if len(body) < size:
                if kind == 0:  # a raw block is the data itself: what there is of it is exact
                    yield body
                raise cut(f"block {block}")
            out = obj.decompress(bh + body)
            if out:
                yield out
            if v & 1:  # the last block
                if checksum:
                    obj.decompress(need(4, "content checksum"))
                break


_GZIP_MAGIC = b"\x1f\x8b"


def _gzip_pieces(raw: BinaryIO) -> Iterator[bytes]:
    """The decoded bytes of a gzip file, member after member (RFC 1952), at most CHUNK at a time."""
    data = b""
    member = 0
    while True:
        if member:
            data = data.lstrip(b"\0")  # zero padding after a member, as gzip accepts
        while len(data) < 2:
            more = raw.read(_GZIP_IN)
            if not more:
                break
            data = (data + more).lstrip(b"\0") if member else data + more
        if not data:
            return
        if not data.startswith(_GZIP_MAGIC):
            if member:
                raise gzip.BadGzipFile(f"the bytes after gzip member {member} are not a gzip member")
            raise gzip.BadGzipFile("not a gzip file (it does not start with the gzip magic number)")
        member += 1
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while True:
            yield from _inflate(d, data)
            if d.eof:
                data = d.unused_data
                break
            data = raw.read(_GZIP_IN)
            if not data:
                raise EOFError(f"the file ends inside gzip member {member}: it is truncated")


def _inflate(d, data: bytes) -> Iterator[bytes]:
    """Feed ``data`` to the zlib decompressor ``d``, CHUNK of output at a time. When zlib fails, the
    output of the bytes before the failing one is yielded first (a copy of the decompressor taken
    before the call is fed one byte at a time up to it), then the error is raised."""
    while True:
        saved = d.copy()
        try:
            out = d.decompress(data, CHUNK)
        except zlib.error:
            for i in range(len(data)):
                try:
                    part = saved.decompress(data[i : i + 1])
                except zlib.error:
                    break
                if part:
                    yield part
            raise
        if out:
            yield out
        data = d.unconsumed_tail
        if d.eof or (not data and len(out) < CHUNK):
            return
