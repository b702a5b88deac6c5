"""Quarantine entries that every reader writes: a damaged stream, a record past the size limit, a text
encoding other than UTF-8."""

from __future__ import annotations

from kun_hpc.io.quarantine import Bad
from kun_hpc.io.readers.records import RecordMaker
from kun_hpc.io.streams import LineTooLong, UnsupportedEncoding


def corrupt_stream(source: str, where: str, e: BaseException) -> Bad:
    """A damaged stream or archive: what came before ``where`` was read, the rest cannot be."""
    return Bad(source, f"after {where}", "corrupt_stream", f"{type(e).__name__}: {e}; the rest is unreadable")


def too_long_bad(source: str, position: str, item: LineTooLong, limit: int) -> Bad:
    return Bad(
        source, position, "record_too_large", f"{item.length} bytes > max_record_bytes {limit}", item.head
    )


def too_long(make: RecordMaker, position: str, item: LineTooLong, limit: int) -> Bad:
    return too_long_bad(make.source, position, item, limit)


def unsupported_encoding(source: str, position: str, e: UnsupportedEncoding) -> Bad:
    return Bad(source, position, "unsupported_encoding", str(e))
