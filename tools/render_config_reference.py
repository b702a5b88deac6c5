"""Render docs/config-reference.md (between the REFERENCE markers) from the package kun_hpc/config/.

    python tools/render_config_reference.py            # rewrite the doc
    python tools/render_config_reference.py --check    # exit 1 when the doc is not current

Walks the structured config (``OmegaConf.structured(Config)``) for every key and its default, and reads the
meaning of each field from the source of its dataclass (in whichever module of the package defines it): the
comment lines right above the field and the comment at the end of its line(s); a section's intro is its
dataclass docstring. A choice (an enum of kun_hpc/config/choices.py) is shown as the ``str`` it is.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import re
import sys
import textwrap
import tokenize
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from omegaconf import OmegaConf  # noqa: E402

from kun_hpc import config  # noqa: E402
from kun_hpc.config import choices  # noqa: E402
from tools import doc_block  # noqa: E402

DOC = REPO / "docs" / "config-reference.md"
BEGIN, END = "<!-- REFERENCE BEGIN (tools/render_config_reference.py) -->", "<!-- REFERENCE END -->"
CHOICE = re.compile(r"\b(?:" + "|".join(c.__name__ for c in choices.CHOICES) + r")\b")


def field_notes(cls: type) -> dict[str, tuple[str, str]]:
    """``{field: (annotation as written, comment)}`` from the class body's source."""
    src = textwrap.dedent(inspect.getsource(cls))
    lines = src.splitlines()
    tokens = tokenize.generate_tokens(io.StringIO(src).readline)
    comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}
    out = {}
    for node in ast.parse(src).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, i = [], node.lineno - 1
        while i >= 1 and lines[i - 1].strip().startswith("#"):
            above.insert(0, comments[i])
            i -= 1
        inline = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        inline = [c for c in inline if c and c != "fmt: skip"]
        text = " — ".join(t for t in (" ".join(above), " ".join(inline)) if t)
        out[node.target.id] = (CHOICE.sub("str", ast.get_source_segment(src, node.annotation)), text)
    return out


def expand(text: str) -> str:
    """A comment's ``one of EXECUTORS`` names a tuple of kun_hpc.config's choices: spell its values out."""

    def values(m: re.Match) -> str:
        v = getattr(config, m.group(0), None)
        return f"{m.group(0)} ({', '.join(map(str, v))})" if isinstance(v, tuple) else m.group(0)

    return re.sub(r"\b[A-Z][A-Z_]{2,}\b", values, text)


def show(value: object) -> str:
    if value == "???":
        return "`???` (required)"
    if value == "":
        return '`""`'
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, dict)):
        return f"`{json.dumps(value, ensure_ascii=False)}`"
    return f"`{value}`"


def documented(cls: type) -> bool:
    """A docstring of its own (a dataclass without one gets its signature as ``__doc__``)."""
    return not (inspect.getdoc(cls) or f"{cls.__name__}(").startswith(f"{cls.__name__}(")


def rows(cls: type, node: object, prefix: str, nested: dict[str, type]) -> list[list[str]]:
    """One row per leaf key of dataclass ``cls`` under ``prefix``; nested dataclasses are walked and, when
    they have a docstring, collected in ``nested`` (``{"label.engine": EngineSpec}``)."""
    notes: dict[str, tuple[str, str]] = {}
    for base in reversed([b for b in cls.__mro__ if dataclasses.is_dataclass(b)]):  # a subclass's wins
        for name, (annotation, text) in field_notes(base).items():
            notes[name] = (annotation, text or notes.get(name, ("", ""))[1])
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key, hint = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(hint):
            if documented(hint):
                nested[key] = hint
            out += rows(hint, OmegaConf.select(node, f.name), f"{key}.", nested)
            continue
        value = OmegaConf.to_container(node, resolve=False)[f.name]
        out.append([f"`{key}`", f"`{notes[f.name][0]}`", show(value), expand(notes[f.name][1])])
    return out


def render() -> str:
    cfg = OmegaConf.structured(config.Config)
    parts: list[str] = []
    seen: dict[type, str] = {}  # a nested dataclass -> the key it was first described under
    for f in dataclasses.fields(config.Config):
        hint = typing.get_type_hints(config.Config)[f.name]
        if dataclasses.is_dataclass(hint):
            section, node, prefix = hint, cfg[f.name], f"{f.name}."
        else:  # corpora: a list of sections, shown as the keys of one entry
            section = typing.get_args(hint)[0]
            node, prefix = OmegaConf.structured(section), f"{f.name}[i]."
        intro = f"{inspect.getdoc(section)}\n\n" if documented(section) else ""
        nested: dict[str, type] = {}
        table = ["| key | type | default | meaning |", "|---|---|---|---|"]
        for r in rows(section, node, prefix, nested):
            table.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
        for key, cls in nested.items():
            if cls in seen:
                table.append(f"\n`{key}.*`: as `{seen[cls]}.*` above.")
            else:
                seen[cls] = key
                table.append(f"\n`{key}.*` (`{cls.__name__}`): {' '.join(inspect.getdoc(cls).split())}")
        parts.append(f"### `{f.name}`\n\n{intro}" + "\n".join(table) + "\n")
    return "\n".join(parts)


def updated(doc: str) -> str:
    return doc_block.replace_block(doc, BEGIN, END, render())


if __name__ == "__main__":
    sys.exit(doc_block.main(DOC, updated, "tools/render_config_reference.py", __doc__.splitlines()[0]))
