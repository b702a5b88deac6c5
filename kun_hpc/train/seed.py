"""Seed pairs from the files people have: Alpaca, ShareGPT, OpenAI messages, or columns named in the config.

The schemas and their names follow LLaMA-Factory (data/README.md, src/llamafactory/data/converter.py):

* **Alpaca**: ``instruction``, optional ``input``, ``output``; optional ``system`` and ``history`` (the
  earlier turns, a list of ``[instruction, output]`` pairs).
* **ShareGPT**: ``conversations``, a list of ``{"from": ..., "value": ...}``; roles ``human``/``user``,
  ``gpt``/``assistant``, ``system``; optional item-level ``system``.
* **OpenAI** chat messages: ``messages``, a list of ``{"role": ..., "content": ...}``; roles ``user``,
  ``assistant``, ``system`` (``developer``, OpenAI's newer name, is read as ``system``).
* **Columns** (``train.seed_columns``, LLaMA-Factory's ``columns`` of ``dataset_info.json``): the keys
  that hold ``prompt`` (the instruction), ``query`` (the input), ``response`` (the output), ``history``,
  ``system``, or ``messages`` (a conversation, either message form).

With no columns named, each item's schema is found from its keys: ``conversations`` -> ShareGPT, ``messages``
-> OpenAI, ``instruction``/``output`` -> Alpaca. An item with none is quarantined as ``missing_field``
naming what each schema needs; one with keys of two schemas as ``ambiguous_format``. Naming
``messages`` in the columns reads every item as a conversation, naming an Alpaca column every item as Alpaca.

A conversation is an optional first system message, then user and assistant turns in turn, ending with an
assistant turn (the check LLaMA-Factory makes); anything else is ``wrong_role_order``, a role outside those
``unknown_role``, a message or content that is not what the schema says ``wrong_type``/``missing_field``.

Kun's models are single-turn: the Label model maps one output to one instruction and the stages prompt with
one instruction and no earlier turns. So an item yields each user -> assistant exchange as a
:class:`SeedPair` with its ``turn`` (1, 2, ...), and the SFT set takes the first only: a later turn answers
in the context of the earlier ones (``later_turn``, counted and written with the rejected pairs). The system
message is carried in ``SeedPair.system``; the SFT set leaves it out (Kun's prompts carry none) and counts it.

The files: ``train.seed_format: auto`` reads ``.jsonl`` as JSON Lines and ``.json`` as one JSON array, and
falls back to what a file holds: a ``.json`` file that is not one JSON value but whose first line is a JSON
object is read as JSON Lines; a ``.jsonl`` file that is one JSON array is read as the array. ``json`` or
``jsonl`` read that way only, and a file in the other form gets an ``invalid_json`` with the setting that
reads it. A UTF-8 byte order mark and blank space before the first item are skipped; UTF-16/UTF-32 is one
``unsupported_encoding`` item at "byte 0" (issue 12, the rule of the corpus readers).

Quarantine reasons: ``invalid_json``, ``invalid_utf8``, ``not_an_object``, ``missing_field``, ``wrong_type``,
``ambiguous_format``, ``unknown_role``, ``wrong_role_order``, ``unsupported_encoding``; each with the file and
``line N`` / ``item N`` (0-based in a JSON array, as before).
"""

from __future__ import annotations

import glob
import io
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from kun_hpc.config import find_file
from kun_hpc.config.choices import SEED_COLUMNS
from kun_hpc.io.quarantine import Bad
from kun_hpc.io.streams import UnsupportedEncoding, iter_lines, prologue_length

SEED_SUFFIXES = (".json", ".jsonl")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")

USER, ASSISTANT, SYSTEM = "user", "assistant", "system"
ROLES = {
    "human": USER,
    "user": USER,
    "gpt": ASSISTANT,
    "assistant": ASSISTANT,
    SYSTEM: SYSTEM,
    "developer": SYSTEM,
}
ALPACA = {"prompt": "instruction", "query": "input", "response": "output", "history": "history"}
CONVERSATIONS = ("conversations", "messages")  # ShareGPT's and OpenAI's key
MESSAGE_KEYS = (("from", "value"), ("role", "content"))  # ShareGPT's and OpenAI's message fields
NEEDS = "instruction,output (Alpaca) or conversations (ShareGPT) or messages (OpenAI)"


@dataclass
class SeedPair:
    """One user -> assistant exchange of a seed item; ``position`` is ``line N`` / ``item N`` (``... turn T``
    when the item holds several exchanges)."""

    instruction: str
    input: str
    output: str
    source: str
    position: str
    system: str = ""  # the item's system message ("" when none)
    turn: int = 1  # 1: the item's first exchange; later ones follow earlier turns

    @property
    def full_instruction(self) -> str:
        return f"{self.instruction}\n{self.input}" if self.input else self.instruction


@dataclass(frozen=True)
class Columns:
    """Where an item's fields are: ``alpaca`` maps LLaMA-Factory's names (prompt, query, response,
    history) to keys; ``conversations`` the keys that hold a conversation; ``system`` the item-level system
    key; ``fixed``: ``"alpaca"`` or ``"conversation"`` when the columns name the schema, else ``None``
    (found per item)."""

    alpaca: Mapping[str, str]
    conversations: tuple[str, ...]
    system: str
    fixed: str | None


def seed_columns(mapping: Mapping[str, str] | None = None) -> Columns:
    """The :class:`Columns` of ``train.seed_columns`` (``{}``: the schemas' own names, found per item).

    Raises ``ValueError`` for a key outside LLaMA-Factory's (prompt, query, response, history, system,
    messages), a value that is not a non-empty string, or ``messages`` named with an Alpaca column.
    """
    given = {str(k): v for k, v in (mapping or {}).items()}
    for k, v in given.items():
        if k not in SEED_COLUMNS:
            raise ValueError(f"train.seed_columns: unknown key {k!r}; LLaMA-Factory's names: {SEED_COLUMNS}")
        if not isinstance(v, str) or not v:
            raise ValueError(f"train.seed_columns.{k}: must name a key of the seed items (got {v!r})")
    alpaca_named = sorted(k for k in given if k in ALPACA)
    if "messages" in given and alpaca_named:
        raise ValueError(
            f"train.seed_columns: messages (a conversation) and {','.join(alpaca_named)} (Alpaca) name two "
            "schemas; name the columns of one"
        )
    return Columns(
        alpaca={k: given.get(k, v) for k, v in ALPACA.items()},
        conversations=(given["messages"],) if "messages" in given else CONVERSATIONS,
        system=given.get("system", "system"),
        fixed="conversation" if "messages" in given else "alpaca" if alpaca_named else None,
    )


# ------------------------------------------------------------------------------------------------ files
def seed_files(paths: list[str]) -> list[Path]:
    """Files named by ``paths`` (files, folders holding .json/.jsonl files, globs), sorted, each once.

    Raises ``FileNotFoundError`` for a path that names no file."""
    out: list[Path] = []
    for p in paths:
        path = find_file(p)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in SEED_SUFFIXES)
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(f) for f in glob.glob(str(path)) if Path(f).is_file())
        if not found:
            raise FileNotFoundError(f"train.seed_data: no seed files at {p!r}")
        out.extend(f.resolve() for f in found if f.resolve() not in out)
    return out


def read_seed(
    paths: list[str], fmt: str = "auto", columns: Mapping[str, str] | None = None
) -> Iterator[SeedPair | Bad]:
    """Every exchange of every seed item of the files, in order, as a :class:`SeedPair`, or a :class:`Bad`
    per unusable item (or file).

    ``fmt``: ``auto`` | ``json`` | ``jsonl`` (``train.seed_format``); ``columns``: ``train.seed_columns``.
    Raises ``ValueError`` for bad ``columns``, ``FileNotFoundError`` for a path with no files.
    """
    cols = seed_columns(columns)
    for path in seed_files(paths):
        src = str(path)
        for rec in _records(path, fmt):
            if isinstance(rec, Bad):
                yield rec
            else:
                yield from _pairs(*rec, src, cols)


def _records(path: Path, fmt: str) -> Iterator[tuple[Any, str, bytes] | Bad]:
    """(object, position, raw bytes) per item of the file, or a :class:`Bad` for what does not parse."""
    src = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        skip = prologue_length(head[:4])
    except UnsupportedEncoding as e:
        yield Bad(src, "byte 0", "unsupported_encoding", str(e))
        return
    starts_array = head[skip:].lstrip().startswith(b"[")
    if fmt == "jsonl" or (fmt == "auto" and path.suffix == ".jsonl" and not starts_array):
        hint = "; the file starts with '[': read it as one JSON array with train.seed_format=json (or auto)"
        with open(path, "rb") as f:
            f.seek(skip)
            yield from _lines(f, src, hint if starts_array else "")
        return
    data = path.read_bytes()[skip:]
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        lines = _first_line_is_an_object(data)
        if fmt == "auto" and (lines or path.suffix == ".jsonl"):  # JSON Lines after all
            yield from _lines(io.BytesIO(data), src, "")
            return
        if lines:
            fix = "read it as JSON Lines with train.seed_format=jsonl (or auto)"
            yield Bad(src, "file", "invalid_json", f"{e}; its first line is a JSON object: {fix}", data)
        else:
            yield Bad(src, "file", "invalid_json", str(e), data)
        return
    if not isinstance(value, list):
        yield Bad(src, "file", "not_an_object", "a .json seed file must hold an array of objects", data)
        return
    for n, obj in enumerate(value, 1):  # counted from 1, as lines are
        yield obj, f"item {n}", orjson.dumps(obj)


def _lines(f: Any, src: str, hint: str) -> Iterator[tuple[Any, str, bytes] | Bad]:
    """JSON Lines: one item per non-blank line, ``line N`` counted from the file's first line; ``hint``
    follows the first line's error."""
    for n, (_, line) in enumerate(iter_lines(f, 1 << 62), 1):
        if not line.strip():  # type: ignore[union-attr]
            continue
        try:
            yield orjson.loads(line), f"line {n}", line  # type: ignore[misc]
        except orjson.JSONDecodeError as e:
            try:
                line.decode("utf-8")  # type: ignore[union-attr]
                reason = "invalid_json"
            except UnicodeDecodeError:
                reason = "invalid_utf8"
            yield Bad(src, f"line {n}", reason, f"{e}{hint}", line)  # type: ignore[arg-type]
        hint = ""


def _first_line_is_an_object(data: bytes) -> bool:
    """True when the first non-blank line of ``data`` is a JSON object on its own (a JSON Lines file)."""
    for line in data.splitlines():
        if line.strip():
            try:
                return isinstance(orjson.loads(line), dict)
            except orjson.JSONDecodeError:
                return False
    return False


# ------------------------------------------------------------------------------------------------ items
def _pairs(obj: Any, pos: str, raw: bytes, src: str, cols: Columns) -> Iterator[SeedPair | Bad]:
    """The exchanges of one item (or one :class:`Bad`)."""
    try:
        system, exchanges = _item(obj, cols)
    except _Unusable as e:
        yield Bad(src, pos, e.reason, e.detail, raw)
        return
    for t, (instruction, input_, output) in enumerate(exchanges, 1):
        yield SeedPair(
            clean(instruction),
            clean(input_),
            clean(output),
            src,
            pos if len(exchanges) == 1 else f"{pos} turn {t}",
            clean(system),
            t,
        )


Exchange = tuple[str, str, str]  # instruction, input, output


class _Unusable(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def _item(obj: Any, cols: Columns) -> tuple[str, list[Exchange]]:
    """(system, exchanges) of an item; raises :class:`_Unusable` when it is unusable."""
    if not isinstance(obj, dict):
        raise _Unusable("not_an_object", type(obj).__name__)
    system = obj.get(cols.system)
    if system is not None and not isinstance(system, str):
        raise _Unusable("wrong_type", f"{cols.system} is {type(system).__name__}")
    system = system or ""
    kind = cols.fixed
    conv = [k for k in cols.conversations if k in obj]
    if kind is None:
        alpaca = [cols.alpaca[k] for k in ("prompt", "response") if cols.alpaca[k] in obj]
        found = conv + ([",".join(alpaca)] if alpaca else [])
        if len(found) > 1:
            raise _Unusable(
                "ambiguous_format",
                (
                    f"holds {' and '.join(found)}: name the one to read in train.seed_columns "
                    f"(e.g. {{messages: {conv[0]}}})"
                ),
            )
        if not found:
            keys = ",".join(list(obj)[:6])
            raise _Unusable(
                "missing_field",
                f"{NEEDS}; the item has {keys or 'no keys'}: map them with train.seed_columns",
            )
        kind = "conversation" if conv else "alpaca"
    if kind == "alpaca":
        return _alpaca(obj, cols, system)
    if not conv:
        raise _Unusable("missing_field", cols.conversations[0])
    return _conversation(obj[conv[0]], conv[0], system)


def _alpaca(obj: dict, cols: Columns, system: str) -> tuple[str, list[Exchange]]:
    c = cols.alpaca
    missing = [c[k] for k in ("prompt", "response") if c[k] not in obj]
    if missing:
        raise _Unusable("missing_field", ",".join(missing))
    wrong = [
        c[k]
        for k in ("prompt", "query", "response")
        if obj.get(c[k]) is not None and not isinstance(obj[c[k]], str)
    ]
    if wrong:
        raise _Unusable("wrong_type", ",".join(f"{k} is {type(obj[k]).__name__}" for k in wrong))
    history = obj.get(c["history"]) or []
    if not isinstance(history, list):
        raise _Unusable("wrong_type", f"{c['history']} is {type(history).__name__}")
    exchanges: list[Exchange] = []
    for i, turn in enumerate(history):
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(x, str) for x in turn)):
            raise _Unusable(
                "wrong_type", f"{c['history']}[{i}] is not an [instruction, output] pair of strings"
            )
        exchanges.append((turn[0], "", turn[1]))
    exchanges.append((obj[c["prompt"]] or "", obj.get(c["query"]) or "", obj[c["response"]] or ""))
    return system, exchanges


def _conversation(messages: Any, key: str, system: str) -> tuple[str, list[Exchange]]:
    if not isinstance(messages, list):
        raise _Unusable("wrong_type", f"{key} is {type(messages).__name__}")
    turns: list[tuple[str, str, str]] = []  # role, content, where
    for i, m in enumerate(messages):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise _Unusable("wrong_type", f"{where} is {type(m).__name__}")
        role_key, content_key = next((k for k in MESSAGE_KEYS if k[0] in m), MESSAGE_KEYS[key == "messages"])
        if role_key not in m or content_key not in m:
            raise _Unusable("missing_field", f"{where}.{content_key if role_key in m else role_key}")
        role, content = m[role_key], m[content_key]
        if not isinstance(role, str) or role not in ROLES:
            known = "human/user, gpt/assistant, system"
            raise _Unusable("unknown_role", f"{where}.{role_key} is {role!r}; the roles read: {known}")
        if not isinstance(content, str):
            raise _Unusable("wrong_type", f"{where}.{content_key} is {type(content).__name__}")
        turns.append((ROLES[role], content, where))
    if turns and turns[0][0] == SYSTEM:
        system = turns.pop(0)[1]
    if not turns:
        raise _Unusable("wrong_role_order", f"{key} holds no user -> assistant exchange")
    for n, (role, _, where) in enumerate(turns):
        expected = (USER, ASSISTANT)[n % 2]
        if role != expected:
            raise _Unusable(
                "wrong_role_order",
                (
                    f"{where} has role {role} where {expected} was due "
                    "(an optional first system message, then user and assistant turns in turn)"
                ),
            )
    if len(turns) % 2:
        raise _Unusable(
            "wrong_role_order", f"the last turn, {turns[-1][2]}, is a user turn with no assistant reply"
        )
    return system, [(turns[i][1], "", turns[i + 1][1]) for i in range(0, len(turns), 2)]


def clean(text: str) -> str:
    """NFC, line breaks to ``\\n``, control characters (and zero-width space, BOM) out, outer space
    stripped."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text).strip()
