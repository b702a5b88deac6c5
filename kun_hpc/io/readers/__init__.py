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

The parts: :mod:`.pieces` (input files and the pieces tasks read), :mod:`.fields` (each format's native
fields), :mod:`.records` (a parsed object to a record or a bad item; record ids), :mod:`.big_ints` (exact
integers past orjson's range), :mod:`.bad` (quarantine entries every reader writes), and one reader per
layout: :mod:`.lines` (SkyPile, generic JSONL), :mod:`.wudao`, :mod:`.wanjuan`. :func:`read_piece`, here,
picks the reader of a format.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from kun_hpc.io.readers.bad import too_long_bad
from kun_hpc.io.readers.fields import Fields, fields_for
from kun_hpc.io.readers.lines import piece_lines, read_lines
from kun_hpc.io.readers.pieces import InputPiece, expand_paths, plan_pieces
from kun_hpc.io.readers.records import FieldSurvey, Item, RecordMaker, content_id
from kun_hpc.io.readers.wanjuan import read_wanjuan
from kun_hpc.io.readers.wudao import read_wudao

__all__ = [
    "READERS",
    "FieldSurvey",
    "Fields",
    "InputPiece",
    "Item",
    "content_id",
    "expand_paths",
    "fields_for",
    "piece_lines",
    "plan_pieces",
    "read_piece",
    "too_long_bad",
]

READERS: dict[str, Callable[[InputPiece, RecordMaker, int], Iterator[Item]]] = {
    "wudao": read_wudao,
    "wanjuan": read_wanjuan,
    "skypile": read_lines,
    "jsonl": read_lines,
}


def read_piece(
    piece: InputPiece,
    corpus: str,
    fmt: str,
    fields: Fields,
    max_record_bytes: int,
    survey: FieldSurvey | None = None,
) -> Iterator[Item]:
    """Stream the records and bad items of one input piece (see the package docstring for what is
    accepted, refused and quarantined, by reason); ``survey``, when given, learns which fields its records
    hold (:class:`~kun_hpc.io.readers.records.FieldSurvey`). Raises ``FileNotFoundError`` if the file is
    gone."""
    make = RecordMaker(corpus, fields, piece.label, piece.file_name, survey)
    if not os.path.exists(piece.path):
        raise FileNotFoundError(piece.path)
    return READERS[fmt](piece, make, max_record_bytes)
