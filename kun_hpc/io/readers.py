"""Native corpus readers: WuDao 2.0, WanJuan 1.0, SkyPile-150B and generic JSONL.

Every reader streams with bounded memory and yields, for each input item, either a record
``{"id", "corpus", "text", "src"[, "meta"]}`` or a :class:`~kun_hpc.io.quarantine.Bad` saying where
the item was and why it is unusable. Items are never dropped without one or the other, so for every
piece ``items read == records + bad``.

A line-based input larger than ``split_bytes`` is cut into pieces that separate tasks read: plain files
by byte range (a line belongs to the piece its first byte is in), compressed files by line number
modulo the piece count. WuDao arrays and WanJuan tars are read whole.
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import xxhash

from kun_hpc.io.quarantine import Bad
from kun_hpc.io.streams import (
    CHUNK,
    STREAM_ERRORS,
    LineTooLong,
    compression_of,
    iter_lines,
    open_stream,
    seek_line_start,
)

Item = dict | Bad

# Which files of a folder belong to a format, and which native fields hold the text, id and metadata.
SUFFIXES = {
    "wudao": (".json",),
    "wanjuan": (".jsonl.tar.gz", ".tar.gz", ".tgz"),
    "skypile": (".jsonl", ".jsonl.gz", ".jsonl.zst"),
    "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst"),
}
LINE_BASED = ("skypile", "jsonl")


@dataclass(frozen=True)
class Fields:
    text: str
    id: str | None
    meta: tuple[str, ...] = ()


NATIVE_FIELDS = {
    "wudao": Fields("content", "id", ("title", "dataType", "uniqueKey")),
    "wanjuan": Fields("content", "id"),
    "skypile": Fields("text", None),
}


def fields_for(
    fmt: str, text_field: str = "text", id_field: str | None = None, meta_fields: tuple[str, ...] = ()
) -> Fields:
    return NATIVE_FIELDS.get(fmt) or Fields(text_field, id_field, tuple(meta_fields))


@dataclass(frozen=True)
class InputPiece:
    """A whole input file, or one of ``count`` pieces of it."""

    path: str
    index: int = 0
    count: int = 1

    @property
    def label(self) -> str:
        name = os.path.basename(self.path)
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
    pieces = []
    for f in files:
        count = max(1, -(-f.stat().st_size // split_bytes)) if fmt in LINE_BASED else 1
        pieces.extend(InputPiece(str(f), i, count) for i in range(count))
    return pieces


_xxh3_128_hex = xxhash.xxh3_128_hexdigest


def content_id(corpus: str, text: str) -> str:
    return f"{corpus}/{_xxh3_128_hex(text.encode('utf-8', 'surrogatepass'))}"


class RecordMaker:
    """Turns one parsed native object into a record, or a :class:`Bad` naming what is wrong with it."""

    def __init__(self, corpus: str, fields: Fields, source: str):
        self.corpus = corpus
        self.fields = fields
        self.source = source
        # the per-record path reads these instead of going through self.fields each time
        self._text, self._id, self._meta = fields.text, fields.id, fields.meta
        self._id_prefix = f"{corpus}/"
        self._src_prefix = f"{source}:"

    def __call__(self, obj: Any, position: str, raw: bytes) -> Item:
        if type(obj) is not dict:
            return Bad(
                self.source, position, "wrong_type", f"expected a JSON object, got {type(obj).__name__}", raw
            )
        text_field = self._text
        text = obj.get(text_field)
        if type(text) is not str:
            if text is None:
                return Bad(self.source, position, "missing_text", f"no '{text_field}' field", raw)
            return Bad(
                self.source,
                position,
                "wrong_type",
                f"'{text_field}' is {type(text).__name__}, not a string",
                raw,
            )
        if not text or text.isspace():  # the same test as `not text.strip()`, without copying the text
            return Bad(self.source, position, "empty_text", f"'{text_field}' is empty or blank", raw)
        id_field = self._id
        native = obj.get(id_field) if id_field else None
        if native is None or native == "":
            rid = self._id_prefix + _xxh3_128_hex(text.encode("utf-8", "surrogatepass"))
        elif type(native) is str or type(native) is int:
            rid = f"{self._id_prefix}{native}"
        else:
            return Bad(self.source, position, "wrong_type", f"'{id_field}' is {type(native).__name__}", raw)
        rec = {"id": rid, "corpus": self.corpus, "text": text, "src": self._src_prefix + position}
        keys = self._meta
        if keys:
            meta = {}
            for k in keys:  # a plain loop: cheaper than a comprehension per record
                v = obj.get(k)
                if v is not None and v != "":
                    meta[k] = v
            if meta:
                rec["meta"] = meta
        return rec


def parse_json(raw: bytes, make: RecordMaker, position: str) -> Item:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as u:
            return Bad(make.source, position, "invalid_utf8", f"byte {u.start}: {u.reason}", raw)
        return Bad(make.source, position, "invalid_json", str(e), raw)
    return make(obj, position, raw)


def corrupt_stream(source: str, where: str, e: BaseException) -> Bad:
    """A damaged stream or archive: what came before ``where`` was read, the rest cannot be."""
    return Bad(source, f"after {where}", "corrupt_stream", f"{type(e).__name__}: {e}; the rest is unreadable")


def too_long_bad(source: str, position: str, item: LineTooLong, limit: int) -> Bad:
    return Bad(
        source, position, "record_too_large", f"{item.length} bytes > max_record_bytes {limit}", item.head
    )


def too_long(make: RecordMaker, position: str, item: LineTooLong, limit: int) -> Bad:
    return too_long_bad(make.source, position, item, limit)


# ----------------------------------------------------------------------------------------- line based
def piece_lines(piece: InputPiece, max_bytes: int) -> Iterator[tuple[str, bytes | LineTooLong] | Bad]:
    """``(position, line)`` for each non-blank line of a piece; a damaged stream ends with a :class:`Bad`."""
    where = "line 0"
    try:
        if compression_of(piece.path) == "none":
            with open(piece.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                start = seek_line_start(f, piece.index * size // piece.count)
                end = (piece.index + 1) * size // piece.count
                for lineno, (off, line) in enumerate(iter_lines(f, max_bytes, start=start, end=end), 1):
                    # line numbers are known only when the piece starts the file
                    where = f"line {lineno}" if piece.index == 0 else f"byte {off}"
                    if line:
                        yield where, line
            return
        with open_stream(piece.path) as f:
            for lineno, (_, line) in enumerate(iter_lines(f, max_bytes), 1):
                if piece.count > 1 and lineno % piece.count != piece.index:
                    continue
                where = f"line {lineno}"
                if line:
                    yield where, line
    except STREAM_ERRORS as e:
        yield corrupt_stream(piece.label, where, e)


def _read_lines(piece: InputPiece, make: RecordMaker, max_bytes: int) -> Iterator[Item]:
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


# ----------------------------------------------------------------------------------------- WuDao
# Objects of a WuDao array are separated by "}, {" before an "id" key. A quote inside a valid JSON
# string is always escaped, so this separator cannot match inside a text; a damaged object stays
# between two separators and is quarantined alone.
_WUDAO_SEP = re.compile(rb'\}\s*,\s*(?=\{\s*"id"\s*:)')


def _wudao_objects(f, max_bytes: int) -> Iterator[tuple[int, bytes | LineTooLong]]:
    """Yield (offset, object bytes) from a JSON array stream, bounded by max_bytes."""
    buf = b""
    while True:
        data = f.read(CHUNK)
        buf += data
        stripped = buf.lstrip()
        if stripped or not data:
            break
    if not stripped.startswith(b"["):
        raise ValueError("not a JSON array (a WuDao file is one array of objects)")
    pos = len(buf) - len(stripped) + 1  # file offset of buf[0]
    buf = stripped[1:]
    skip_head: bytes | None = None  # set while skipping an object longer than max_bytes
    skip_start = 0
    while True:
        last = 0
        for m in _WUDAO_SEP.finditer(buf):
            if skip_head is not None:
                yield skip_start, LineTooLong(skip_head, pos + m.start() + 1 - skip_start)
                skip_head = None
            else:
                yield pos + last, buf[last : m.start() + 1]
            last = m.end()
        buf = buf[last:]
        pos += last
        if len(buf) > max_bytes:
            if skip_head is None:
                skip_head, skip_start = buf[:512], pos
            keep = buf[-64:]  # a separator may straddle the next read
            pos += len(buf) - len(keep)
            buf = keep
        data = f.read(CHUNK)
        if not data:
            break
        buf += data
    tail = buf.rstrip()
    closed = tail.endswith(b"]")
    if closed:
        tail = tail[:-1].rstrip()
    if skip_head is not None:
        yield skip_start, LineTooLong(skip_head, pos + len(tail) - skip_start)
    elif tail:
        yield pos, tail
    if not closed:
        raise EOFError("the array is not closed: the file is truncated")


def _read_wudao(piece: InputPiece, make: RecordMaker, max_bytes: int) -> Iterator[Item]:
    where = "byte 0"
    try:
        with open_stream(piece.path) as f:
            for off, obj in _wudao_objects(f, max_bytes):
                where = f"byte {off}"
                if type(obj) is bytes:
                    yield parse_json(obj, make, where)
                else:
                    yield too_long(make, where, obj, max_bytes)
    except (*STREAM_ERRORS, ValueError) as e:
        yield corrupt_stream(make.source, where, e)


# ----------------------------------------------------------------------------------------- WanJuan
def _read_wanjuan(piece: InputPiece, make: RecordMaker, max_bytes: int) -> Iterator[Item]:
    where = "start"
    try:
        with open(piece.path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                where = f"{member.name}"
                if not member.name.endswith(".jsonl"):
                    yield Bad(make.source, where, "unexpected_member", "not a .jsonl member; skipped")
                    continue
                stream = tar.extractfile(member)
                # small reads: a truncated archive loses only the lines of the last read
                for lineno, (_, line) in enumerate(iter_lines(stream, max_bytes, chunk=64 * 1024), 1):
                    where = f"{member.name}:line {lineno}"
                    if type(line) is bytes:
                        if line.strip():
                            yield parse_json(line, make, where)
                    else:
                        yield too_long(make, where, line, max_bytes)
    except STREAM_ERRORS as e:
        yield corrupt_stream(make.source, where, e)


READERS: dict[str, Callable[[InputPiece, RecordMaker, int], Iterator[Item]]] = {
    "wudao": _read_wudao,
    "wanjuan": _read_wanjuan,
    "skypile": _read_lines,
    "jsonl": _read_lines,
}


def read_piece(
    piece: InputPiece, corpus: str, fmt: str, fields: Fields, max_record_bytes: int
) -> Iterator[Item]:
    """Stream the records and bad items of one input piece."""
    make = RecordMaker(corpus, fields, piece.label)
    if not os.path.exists(piece.path):
        raise FileNotFoundError(piece.path)
    return READERS[fmt](piece, make, max_record_bytes)
