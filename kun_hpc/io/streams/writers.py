"""Writers that see the bytes on their way to a file."""

from __future__ import annotations

import io
from typing import BinaryIO


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
