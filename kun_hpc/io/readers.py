"""Native corpus readers: WuDao 2.0, WanJuan 1.0, SkyPile-150B and generic JSONL.

Every reader streams with bounded memory and yields, for each input item, either a record
``{"id", "corpus", "text", "src"[, "meta"]}`` or a :class:`~kun_hpc.io.quarantine.Bad` saying where
the item was and why it is unusable. Items are never dropped without one or the other, so for every
piece ``items read == records + bad``.

A line-based input larger than ``split_bytes`` is cut into pieces that separate tasks read: plain files
by byte range (a line belongs to the piece its first byte is in), compressed files by line number
modulo the piece count. WuDao arrays and WanJuan tars are read whole.

What the readers accept and refuse (issue 12):

* A UTF-8 byte order mark and blank space before the first record, in every file and in every WanJuan
  member; UTF-16/UTF-32 text is refused whole as ``unsupported_encoding``. A byte order mark at the start
  of a later JSONL line is damage inside the data, not a prologue: that line is ``invalid_json``.
* WuDao: one JSON array of objects, or the array wrapped as ``{"RECORDS": [...]}``; any other layout is
  refused whole as ``wrong_layout``, naming what the file holds.
* Damaged or truncated zstd, gzip and tar.gz input: every complete line before the damage is kept, then
  one ``corrupt_stream`` item "after line N" ("after <member>:line N" in a tar) names the last complete
  line (see :mod:`kun_hpc.io.streams` for what cannot be detected).
* Numbers: an integer id of any size becomes its exact decimal text; a kept metadata integer outside the
  64-bit range (which the shards cannot hold exactly) refuses the record as ``number_out_of_range``; a
  float id is ``wrong_type``.

Record ids are keys across a run: ``<corpus>/<native id>``, or ``<corpus>/<content hash>`` without one.
WuDao ids repeat from file to file in the real releases, so a WuDao record is ``<corpus>/<uniqueKey>``
when its ``uniqueKey`` is a non-empty string, else ``<corpus>/<file>:<native id>``, ``<file>`` being the
file's path under the folder all the corpus's files share (:attr:`InputPiece.name`; also in ``src``).
"""

from __future__ import annotations

import glob
import json
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
    UnsupportedEncoding,
    compression_of,
    iter_lines,
    open_stream,
    prologue_length,
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
    """The native fields of a format.

    ``key``: a field that, when it holds a non-empty string, is unique across the corpus and becomes the
    id instead of ``id``. ``id_per_file``: native ids are unique only within one file (WuDao), so the id
    names the file too (issue 12).
    """

    text: str
    id: str | None
    meta: tuple[str, ...] = ()
    key: str | None = None
    id_per_file: bool = False


NATIVE_FIELDS = {
    "wudao": Fields("content", "id", ("title", "dataType", "uniqueKey"), key="uniqueKey", id_per_file=True),
    "wanjuan": Fields("content", "id"),
    "skypile": Fields("text", None),
}


def fields_for(
    fmt: str, text_field: str = "text", id_field: str | None = None, meta_fields: tuple[str, ...] = ()
) -> Fields:
    return NATIVE_FIELDS.get(fmt) or Fields(text_field, id_field, tuple(meta_fields))


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


_xxh3_128_hex = xxhash.xxh3_128_hexdigest


def content_id(corpus: str, text: str) -> str:
    return f"{corpus}/{_xxh3_128_hex(text.encode('utf-8', 'surrogatepass'))}"


# orjson reads an integer literal outside [-2**63, 2**64) as a float; such a float is at least this far
# from zero, and a value there is read again by the stdlib parser to tell an integer from a float.
_ORJSON_INT_MAX = float(2**64)
_ORJSON_INT_MIN = float(-(2**63))


_ORJSON_INFINITY = "number is infinity"  # how orjson's error about such a number starts


class _IntLiteral(str):
    """An integer as the stdlib JSON parser saw it: its exact decimal text."""


class _OutOfRange(ValueError):
    """Says which number: "the integer <its digits>"."""


def _past_int64(v: Any) -> bool:
    """Whether ``v`` (as orjson parsed it) holds a float where the JSON may have held a big integer."""
    t = type(v)
    if t is float:
        return v >= _ORJSON_INT_MAX or v <= _ORJSON_INT_MIN
    if t is dict:
        return any(_past_int64(x) for x in v.values())
    if t is list:
        return any(_past_int64(x) for x in v)
    return False


def _exact_json(raw: bytes) -> Any:
    """``raw`` parsed by the stdlib, every integer as an :class:`_IntLiteral` (exact, any size)."""
    return json.loads(raw, parse_int=_IntLiteral)


def _int64_values(v: Any) -> Any:
    """``v`` from :func:`_exact_json` with its integers as ints; :class:`_OutOfRange` (the literal) for
    one that orjson cannot write (outside [-2**63, 2**64))."""
    if type(v) is _IntLiteral:
        if len(v) > 21 or not -(2**63) <= int(v) < 2**64:
            raise _OutOfRange(f"the integer {v}")
        return int(v)
    if type(v) is dict:
        return {k: _int64_values(x) for k, x in v.items()}
    if type(v) is list:
        return [_int64_values(x) for x in v]
    return v


class RecordMaker:
    """Turns one parsed native object into a record, or a :class:`Bad` naming what is wrong with it.

    ``file_name`` (:attr:`InputPiece.file_name`) prefixes native ids when ``fields.id_per_file``.
    """

    def __init__(self, corpus: str, fields: Fields, source: str, file_name: str = ""):
        self.corpus = corpus
        self.fields = fields
        self.source = source
        # the per-record path reads these instead of going through self.fields each time
        self._text, self._id, self._meta, self._key = fields.text, fields.id, fields.meta, fields.key
        self._id_prefix = f"{corpus}/"
        self._native_prefix = f"{corpus}/{file_name}:" if fields.id_per_file else self._id_prefix
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
        key = obj.get(self._key) if self._key else None
        native = obj.get(id_field) if id_field else None
        if type(key) is str and key:
            rid = self._id_prefix + key
        elif native is None or native == "":
            rid = self._id_prefix + _xxh3_128_hex(text.encode("utf-8", "surrogatepass"))
        elif type(native) is str or type(native) is int:
            rid = f"{self._native_prefix}{native}"
        elif type(native) is float:
            exact = _exact_json(raw).get(id_field) if _past_int64(native) else native
            if type(exact) is not _IntLiteral:
                return Bad(
                    self.source,
                    position,
                    "wrong_type",
                    f"'{id_field}' is a float ({native!r}), not a string or an integer",
                    raw,
                )
            rid = self._native_prefix + exact
        else:
            return Bad(self.source, position, "wrong_type", f"'{id_field}' is {type(native).__name__}", raw)
        rec = {"id": rid, "corpus": self.corpus, "text": text, "src": self._src_prefix + position}
        keys = self._meta
        if keys:
            meta = {}
            inexact = False
            for k in keys:  # a plain loop: cheaper than a comprehension per record
                v = obj.get(k)
                if v is not None and v != "":
                    meta[k] = v
                    if type(v) is not str and _past_int64(v):
                        inexact = True
            if inexact:
                exact = _exact_json(raw)
                for k in meta:
                    try:
                        meta[k] = _int64_values(exact[k])
                    except _OutOfRange as e:
                        return Bad(
                            self.source,
                            position,
                            "number_out_of_range",
                            f"'{k}' holds {e}, outside the 64-bit range that the shards can hold exactly",
                            raw,
                        )
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
        if str(e).startswith(_ORJSON_INFINITY):  # valid JSON, but a number no double holds
            detail = f"a number past the range of a 64-bit float ({e})"
            return Bad(make.source, position, "number_out_of_range", detail, raw)
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
def unsupported_encoding(source: str, position: str, e: UnsupportedEncoding) -> Bad:
    return Bad(source, position, "unsupported_encoding", str(e))


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


# The layout a published WuDao tutorial shows: the array as the value of "RECORDS" (issue 12).
_WUDAO_RECORDS = re.compile(rb'\{\s*"RECORDS"\s*:\s*\[')
_FIRST_KEY = re.compile(rb'\{\s*"((?:[^"\\]|\\.)*)"\s*:')
_JSON_SCALARS = {b'"': "a JSON string", b"t": "a JSON true", b"f": "a JSON false", b"n": "a JSON null"}


class WrongLayout(ValueError):
    """A WuDao file that is neither an array of objects nor ``{"RECORDS": [...]}``."""


def describe_layout(head: bytes, whole: bool) -> str:
    """What a JSON file holds, in words, from its first bytes after the prologue (all of it when
    ``whole``): "an empty file", "JSON Lines (one object per line)", "a JSON object with keys [...]",
    "a JSON object whose first key is '...'", "a JSON number", ..."""
    if not head:
        return "an empty file"
    if head[:1] == b"{":
        first, nl, rest = head.partition(b"\n")
        if nl and rest.lstrip()[:1] == b"{":
            try:
                if type(orjson.loads(first)) is dict:
                    return "JSON Lines (one object per line)"
            except orjson.JSONDecodeError:
                pass
        if whole:
            try:
                obj = orjson.loads(head)
            except orjson.JSONDecodeError:
                obj = None
            if type(obj) is dict:
                keys = list(obj)
                more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
                return f"a JSON object with keys {keys[:8]}{more}"
        m = _FIRST_KEY.match(head)
        if m:
            return f"a JSON object whose first key is {m.group(1).decode('utf-8', 'replace')!r}"
        return "a JSON object"
    if head[:1] in _JSON_SCALARS:
        return _JSON_SCALARS[head[:1]]
    if head[:1] in b"-0123456789":
        return "a JSON number"
    return f"text that starts with {head[:40].decode('utf-8', 'replace')!r}"


def _whole_object(data: bytes) -> bool:
    try:
        return type(orjson.loads(data)) is dict
    except orjson.JSONDecodeError:
        return False


def _wudao_objects(f, max_bytes: int) -> Iterator[tuple[int, bytes | LineTooLong]]:
    """Yield (offset, object bytes) from a JSON array stream, or one wrapped as ``{"RECORDS": [...]}``,
    bounded by max_bytes. Raises :class:`UnsupportedEncoding` or :class:`WrongLayout` before the first
    object, ``EOFError`` after the last one when the file is truncated."""
    buf = f.read(CHUNK)
    while len(buf) < 4:  # a short first read: look at 4 bytes unless the file is shorter
        data = f.read(CHUNK)
        if not data:
            break
        buf += data
    pos = prologue_length(buf)  # file offset of buf[0]
    buf = buf[pos:]
    at_end = False
    while True:  # enough of the start to tell the layout (at most 2 * CHUNK held)
        stripped = buf.lstrip()
        pos += len(buf) - len(stripped)
        buf = stripped
        if len(buf) >= CHUNK:
            break
        data = f.read(CHUNK)
        if not data:
            at_end = True
            break
        buf += data
    wrapped = _WUDAO_RECORDS.match(buf)
    if buf.startswith(b"["):
        n = 1
    elif wrapped:
        n = wrapped.end()
    else:
        raise WrongLayout(
            f"the file holds {describe_layout(buf, at_end)}, not a JSON array of objects: a WuDao file is "
            'one array ([{...}, ...]), or one wrapped as {"RECORDS": [...]}'
        )
    pos += n
    buf = buf[n:]
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
    closed = True
    if wrapped:  # "]" then the "}" of the wrapping object
        closed = tail.endswith(b"}") and tail[:-1].rstrip().endswith(b"]")
        if closed:
            tail = tail[:-1].rstrip()
    closed = closed and tail.endswith(b"]")
    if tail.endswith(b"]"):  # an object ends with "}": a last "]" can only close the array
        tail = tail[:-1].rstrip()
    if not closed and tail.endswith(b","):  # cut right after an object and its separator
        tail = tail[:-1].rstrip()
    if skip_head is not None:
        yield skip_start, LineTooLong(skip_head, pos + len(tail) - skip_start)
    elif tail and (closed or _whole_object(tail)):  # a truncated file's cut object is the damage itself
        yield pos, tail
    if not closed:
        end = "]}" if wrapped else "]"
        raise EOFError(f"the array is not closed (no final {end!r}): the file is truncated")


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
    except UnsupportedEncoding as e:
        yield unsupported_encoding(make.source, where, e)
    except WrongLayout as e:
        yield Bad(make.source, where, "wrong_layout", str(e))
    except STREAM_ERRORS as e:
        yield corrupt_stream(make.source, where, e)


# ----------------------------------------------------------------------------------------- WanJuan
# The tar layer is walked here rather than by tarfile.open(mode="r|"): tarfile reads a member's data
# ahead in blocks and, when the stream fails inside one, drops the lines already decoded in it.
class _TarCursor:
    """The part of a TarFile that :meth:`tarfile.TarInfo.fromtarfile` reads a header through: the
    decoded stream, tarfile's defaults for names, and where the next header starts (``offset``)."""

    def __init__(self, fileobj: Any):
        self.fileobj = fileobj
        self.encoding = tarfile.ENCODING
        self.errors = "surrogateescape"
        self.pax_headers: dict[str, str] = {}
        self.offset = 0


class _MemberData:
    """The ``size`` data bytes of the member at the stream's position; the stream ending first is
    truncation."""

    def __init__(self, stream: Any, size: int, name: str):
        self._stream, self._left, self._name = stream, size, name

    def read(self, n: int = CHUNK) -> bytes:
        if self._left <= 0:
            return b""
        data = self._stream.read(min(n, self._left))
        if not data:
            raise EOFError(f"the archive ends inside member {self._name}: it is truncated")
        self._left -= len(data)
        return data

    def skip(self) -> None:
        while self.read(CHUNK):
            pass


def _read_wanjuan(piece: InputPiece, make: RecordMaker, max_bytes: int) -> Iterator[Item]:
    where = "start"
    try:
        with open_stream(piece.path) as stream:
            cursor = _TarCursor(stream)
            while True:
                try:
                    member = tarfile.TarInfo.fromtarfile(cursor)  # type: ignore[arg-type]
                except (tarfile.EOFHeaderError, tarfile.EmptyHeaderError):
                    break  # the end-of-archive blocks, or the data ending at a header
                name = member.name
                if member.isfile() and not name.endswith(".jsonl"):
                    yield Bad(make.source, name, "unexpected_member", "not a .jsonl member; skipped")
                elif member.isfile():
                    where = f"{name}:line 0"
                    body = _MemberData(stream, member.size, name)
                    try:
                        for lineno, (_, line) in enumerate(iter_lines(body, max_bytes, prologue=True), 1):
                            where = f"{name}:line {lineno}"
                            if type(line) is bytes:
                                if line.strip():
                                    yield parse_json(line, make, where)
                            else:
                                yield too_long(make, where, line, max_bytes)
                    except UnsupportedEncoding as e:
                        yield unsupported_encoding(make.source, name, e)
                    body.skip()
                # what is left of the member, and its padding up to the next header
                _MemberData(stream, cursor.offset - stream.tell(), name).skip()
            while stream.read(CHUNK):  # to the end of the compressed stream, whose check may still fail
                pass
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
    """Stream the records and bad items of one input piece (see the module docstring for what is
    accepted, refused and quarantined, by reason). Raises ``FileNotFoundError`` if the file is gone."""
    make = RecordMaker(corpus, fields, piece.label, piece.file_name)
    if not os.path.exists(piece.path):
        raise FileNotFoundError(piece.path)
    return READERS[fmt](piece, make, max_record_bytes)
