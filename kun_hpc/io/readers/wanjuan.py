"""WanJuan 1.0: a tar.gz of ``.jsonl`` members, its tar layer walked here, each member read line by line."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import Any

from kun_hpc.io.quarantine import Bad
from kun_hpc.io.readers.bad import corrupt_stream, too_long, unsupported_encoding
from kun_hpc.io.readers.pieces import InputPiece
from kun_hpc.io.readers.records import Item, RecordMaker, parse_json
from kun_hpc.io.streams import CHUNK, STREAM_ERRORS, UnsupportedEncoding, iter_lines, open_stream


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


def read_wanjuan(piece: InputPiece, make: RecordMaker, max_bytes: int) -> Iterator[Item]:
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
