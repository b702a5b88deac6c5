"""One parsed native object to a record ``{"id", "corpus", "text", "src"[, "meta"]}``, or to a
:class:`~kun_hpc.io.quarantine.Bad` naming what is wrong with it; run-wide record ids."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import xxhash

from kun_hpc.io.quarantine import Bad
from kun_hpc.io.readers.big_ints import IntLiteral, OutOfRange, exact_json, int64_values, past_int64
from kun_hpc.io.readers.fields import Fields

Item = dict | Bad


_xxh3_128_hex = xxhash.xxh3_128_hexdigest


def content_id(corpus: str, text: str) -> str:
    return f"{corpus}/{_xxh3_128_hex(text.encode('utf-8', 'surrogatepass'))}"


_ORJSON_INFINITY = "number is infinity"  # how orjson's error about such a number starts

SURVEY_OBJECTS = 20  # objects of each input piece whose keys a FieldSurvey counts
SURVEY_KEYS = 50  # keys a survey keeps (the most common), so a marker stays small


class FieldSurvey:
    """What the records of one input piece hold, for the message of a corpus that yields nothing (issue 16):
    the keys of its first :data:`SURVEY_OBJECTS` JSON objects (``keys``: objects holding each;
    ``chars``: characters of the strings under each) and how many records were refused for each of the
    configured fields (``refused``, by role: ``text``, ``id``, ``meta``)."""

    __slots__ = ("chars", "keys", "objects", "refused")

    def __init__(self) -> None:
        self.objects = 0
        self.keys: Counter[str] = Counter()
        self.chars: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def see(self, obj: dict) -> None:
        self.objects += 1
        for k, v in obj.items():
            self.keys[k] += 1
            if type(v) is str:
                self.chars[k] += len(v)

    def to_dict(self) -> dict:
        """JSON-ready, the keys cut to the :data:`SURVEY_KEYS` most common."""
        keys = dict(self.keys.most_common(SURVEY_KEYS))
        chars = {k: n for k, n in self.chars.items() if k in keys}
        return {"objects": self.objects, "keys": keys, "chars": chars, "refused": dict(self.refused)}

    @classmethod
    def combined(cls, dicts: list[dict]) -> FieldSurvey:
        """One survey of several pieces' :meth:`to_dict` (a missing or empty one counts nothing)."""
        total = cls()
        for d in dicts:
            total.objects += d.get("objects", 0)
            for name in ("keys", "chars", "refused"):
                getattr(total, name).update(d.get(name, {}))
        return total


class RecordMaker:
    """Turns one parsed native object into a record, or a :class:`Bad` naming what is wrong with it.

    ``file_name`` (:attr:`InputPiece.file_name`) prefixes native ids when ``fields.id_per_file``; a
    ``survey`` sees the first objects and counts the records each configured field refused.
    """

    def __init__(
        self, corpus: str, fields: Fields, source: str, file_name: str = "", survey: FieldSurvey | None = None
    ):
        self.corpus = corpus
        self.survey = survey
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
        survey = self.survey
        if survey is not None and survey.objects < SURVEY_OBJECTS:
            survey.see(obj)
        text_field = self._text
        text = obj.get(text_field)
        if type(text) is not str:
            self._refused("text")
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
            self._refused("text")
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
            exact = exact_json(raw).get(id_field) if past_int64(native) else native
            if type(exact) is not IntLiteral:
                self._refused("id")
                return Bad(
                    self.source,
                    position,
                    "wrong_type",
                    f"'{id_field}' is a float ({native!r}), not a string or an integer",
                    raw,
                )
            rid = self._native_prefix + exact
        else:
            self._refused("id")
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
                    if type(v) is not str and past_int64(v):
                        inexact = True
            if inexact:
                exact = exact_json(raw)
                for k in meta:
                    try:
                        meta[k] = int64_values(exact[k])
                    except OutOfRange as e:
                        self._refused("meta")
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

    def _refused(self, role: str) -> None:
        if self.survey is not None:
            self.survey.refused[role] += 1


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
