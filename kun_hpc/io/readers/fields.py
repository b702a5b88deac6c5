"""Which native fields of a format hold the text, the id and the metadata kept with a record."""

from __future__ import annotations

from dataclasses import dataclass


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
