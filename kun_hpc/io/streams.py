"""Byte streams and bounded-memory line splitting for plain, gzip and zstd files.

Compressed input is decoded here, frame by frame and member by member, rather than by zstandard's
``stream_reader`` (which reads a truncated frame as a clean end of file) or the ``gzip`` module (which
throws away what one read had decoded when it meets the damage). A :class:`DecodedStream` hands out every
byte that can be decoded and only then raises one of :data:`STREAM_ERRORS`; with :func:`iter_lines` that
means every complete line before the damage is yielded and the cut line is not (issue 12).

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

A text file may start with a UTF-8 byte order mark: :func:`prologue_length` skips it. UTF-16 and UTF-32
(with or without a byte order mark) are refused with :class:`UnsupportedEncoding`, naming the encoding.
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

UTF8_BOM = b"\xef\xbb\xbf"
# RFC 8259 section 8.1 / RFC 4627 section 3: JSON text starts with an ASCII character, so the place of the
# zero bytes among the first four tells UTF-16 and UTF-32 from UTF-8 even without a byte order mark.
_OTHER_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32 BE"),
    (b"\xff\xfe\x00\x00", "UTF-32 LE"),
    (b"\xfe\xff", "UTF-16 BE"),
    (b"\xff\xfe", "UTF-16 LE"),
)


class UnsupportedEncoding(ValueError):
    """The file is not UTF-8 (a UTF-16 or UTF-32 byte order mark, or their zero-byte pattern)."""


def prologue_length(head: bytes) -> int:
    """How many bytes at the start of a text file come before its first record: 3 for a UTF-8 byte order
    mark, else 0. ``head`` is the file's first bytes (at least 4 unless the file is shorter).

    Raises :class:`UnsupportedEncoding` for UTF-16/UTF-32 text, naming the encoding (issue 12). Leading
    whitespace and blank lines are not counted here: the readers skip them as they skip any blank line.
    """
    if head.startswith(UTF8_BOM):
        return len(UTF8_BOM)
    for bom, name in _OTHER_BOMS:
        if head.startswith(bom):
            raise UnsupportedEncoding(
                f"the file starts with a {name} byte order mark: kun-hpc reads UTF-8 only; "
                f"convert it first (iconv -f {name.replace(' ', '')} -t UTF-8)"
            )
    if len(head) >= 4 and 0 in head[:4]:
        z = tuple(b == 0 for b in head[:4])
        name = {
            (True, True, True, False): "UTF-32 BE",
            (False, True, True, True): "UTF-32 LE",
            (True, False, True, False): "UTF-16 BE",
            (False, True, False, True): "UTF-16 LE",
        }.get(z)
        if name:
            raise UnsupportedEncoding(
                f"the file looks like {name} without a byte order mark (zero bytes among its first four): "
                f"kun-hpc reads UTF-8 only; convert it first (iconv -f {name.replace(' ', '')} -t UTF-8)"
            )
    return 0


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
