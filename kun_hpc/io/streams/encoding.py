"""The text encoding at the start of a file.

A text file may start with a UTF-8 byte order mark: :func:`prologue_length` skips it. UTF-16 and UTF-32
(with or without a byte order mark) are refused with :class:`UnsupportedEncoding`, naming the encoding.
"""

from __future__ import annotations

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
