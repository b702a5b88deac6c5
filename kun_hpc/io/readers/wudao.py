"""WuDao 2.0: one JSON array of objects, or the array wrapped as ``{"RECORDS": [...]}``, streamed object
by object; any other layout is refused whole as ``wrong_layout``."""

from __future__ import annotations

import re
from collections.abc import Iterator

import orjson

from kun_hpc.io.quarantine import Bad
from kun_hpc.io.readers.bad import corrupt_stream, too_long, unsupported_encoding
from kun_hpc.io.readers.pieces import InputPiece
from kun_hpc.io.readers.records import Item, RecordMaker, parse_json
from kun_hpc.io.streams import (
    CHUNK,
    STREAM_ERRORS,
    LineTooLong,
    UnsupportedEncoding,
    open_stream,
    prologue_length,
)

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


def read_wudao(piece: InputPiece, make: RecordMaker, max_bytes: int) -> Iterator[Item]:
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
