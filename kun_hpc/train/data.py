"""Seed pairs -> the SFT sets of the Label model (inverted) and the Primary Chat model (forward).

Seed pairs are Alpaca-style JSON arrays or JSONL lines with ``instruction``, optional ``input`` and
``output``. The instruction a model sees or writes is ``instruction`` + a newline + ``input`` (when there is
one). Each pair becomes one example (prompt, target):

* ``label``: prompt = the Label stage's own template (``label.template``, rendered by
  :class:`kun_hpc.stages.llm.PromptTemplate`) with ``{text}`` = the output; target = the instruction.
* ``chat``: prompt = ``train.chat_template`` (the plain ChatML user -> assistant frame) with ``{text}`` = the
  instruction; target = the output.

The target ends with ``<|im_end|>``, the stop the inference stages use. The prompt is tokenized as the
engines tokenize prompts (:func:`kun_hpc.inference.encode_prompts`, ``add_special_tokens=True``) and the
target on its own, so a trained model sees at inference exactly the tokens it was trained on. The pair's
text is data in both: a special token's text in it (``<|im_end|>`` inside an output) is encoded as plain
text, and the only special tokens are the template's and the target's closing ``<|im_end|>`` (issue 12).

Cleaning: NFC, line breaks to ``\\n``, control characters out, outer whitespace stripped. Then, per task, one
target per prompt: a pair whose prompt was seen already is rejected as ``duplicate``. Accounting holds as
everywhere: ``in = out + rejected (empty_instruction, empty_output, duplicate, too_long) + quarantined
(invalid_json, not_an_object, missing_field, wrong_type, invalid_utf8, unsupported_encoding)``.
"""

from __future__ import annotations

import glob
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import xxhash
from omegaconf import DictConfig

from kun_hpc.config import find_file
from kun_hpc.inference.prompt import Prompt, PromptTemplate, encode_prompts
from kun_hpc.io.atomic import atomic_open, atomic_write_bytes
from kun_hpc.io.quarantine import Bad, Quarantine
from kun_hpc.io.streams import UnsupportedEncoding, iter_lines, prologue_length

END_OF_TURN = "<|im_end|>"  # ends every target: the stop string of the inference stages
CHATML_TOKENS = ("<|im_start|>", END_OF_TURN)
SEED_SUFFIXES = (".json", ".jsonl")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")

DATA_DIR = "data"


@dataclass
class SeedPair:
    instruction: str
    input: str
    output: str
    source: str
    position: str

    @property
    def full_instruction(self) -> str:
        return f"{self.instruction}\n{self.input}" if self.input else self.instruction


@dataclass
class DataReport:
    task: str
    path: str  # the examples (JSONL)
    records_in: int = 0
    out: int = 0
    rejected: Counter = field(default_factory=Counter)
    quarantined: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    target_tokens: int = 0
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "path": self.path,
            "in": self.records_in,
            "out": self.out,
            "rejected": dict(self.rejected),
            "quarantined": dict(self.quarantined),
            "prompt_tokens": self.prompt_tokens,
            "target_tokens": self.target_tokens,
            "sources": self.sources,
        }


# --------------------------------------------------------------------------------------------- reading
def seed_files(paths: list[str]) -> list[Path]:
    """Files named by ``paths`` (files, folders holding .json/.jsonl files, globs), sorted, each once."""
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


def _format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    return "jsonl" if path.suffix == ".jsonl" else "json"


def read_seed(paths: list[str], fmt: str = "auto") -> Iterator[SeedPair | Bad]:
    """Every seed item of the files, in order, as a :class:`SeedPair` or a :class:`Bad`.

    A UTF-8 byte order mark and blank space before the first item are skipped; a UTF-16/UTF-32 file is one
    ``unsupported_encoding`` item at "byte 0" (issue 12, the same rule as the corpus readers).
    """
    for path in seed_files(paths):
        src = str(path)
        try:
            if _format(path, fmt) == "jsonl":
                with open(path, "rb") as f:
                    for n, (_, line) in enumerate(iter_lines(f, 1 << 62, prologue=True), 1):
                        if line.strip():  # type: ignore[union-attr]
                            yield _parse(line, src, f"line {n}")  # type: ignore[arg-type]
                continue
            data = path.read_bytes()
            data = data[prologue_length(data[:4]) :]
        except UnsupportedEncoding as e:
            yield Bad(src, "byte 0", "unsupported_encoding", str(e))
            continue
        try:
            items = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            yield Bad(src, "file", "invalid_json", str(e), data)
            continue
        if not isinstance(items, list):
            yield Bad(src, "file", "not_an_object", "a .json seed file must hold an array of objects", data)
            continue
        for n, obj in enumerate(items):
            yield _pair(obj, src, f"item {n}", orjson.dumps(obj))


def _parse(line: bytes, src: str, pos: str) -> SeedPair | Bad:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return Bad(src, pos, "invalid_utf8", str(e), line)
        return Bad(src, pos, "invalid_json", str(e), line)
    return _pair(obj, src, pos, line)


def _pair(obj: Any, src: str, pos: str, raw: bytes) -> SeedPair | Bad:
    if not isinstance(obj, dict):
        return Bad(src, pos, "not_an_object", type(obj).__name__, raw)
    missing = [k for k in ("instruction", "output") if k not in obj]
    if missing:
        return Bad(src, pos, "missing_field", ",".join(missing), raw)
    wrong = [
        k
        for k in ("instruction", "input", "output")
        if obj.get(k) is not None and not isinstance(obj[k], str)
    ]
    if wrong:
        return Bad(src, pos, "wrong_type", ",".join(f"{k} is {type(obj[k]).__name__}" for k in wrong), raw)
    return SeedPair(
        clean(obj["instruction"]), clean(obj.get("input") or ""), clean(obj["output"] or ""), src, pos
    )


def clean(text: str) -> str:
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text).strip()


# ------------------------------------------------------------------------------------------- examples
def task_template(cfg: DictConfig, task: str) -> PromptTemplate:
    """The prompt template of a task: the Label stage's own for ``label``, the ChatML frame for ``chat``."""
    if task == "label":
        return PromptTemplate.load(find_file(cfg.label.template), cfg.label.template_sha256, ("text",))
    return PromptTemplate.load(find_file(cfg.train.chat_template), "", ("text",))


def example(pair: SeedPair, task: str, template: PromptTemplate) -> tuple[Prompt, Prompt]:
    """(prompt, target) of a pair for a task; the pair's text is their data part."""
    if task == "label":
        return template.prompt(text=pair.output), Prompt.of_data(pair.full_instruction) + END_OF_TURN
    return template.prompt(text=pair.full_instruction), Prompt.of_data(pair.output) + END_OF_TURN


def check_chatml(tokenizer: Any) -> None:
    vocab = tokenizer.get_vocab()
    missing = [t for t in CHATML_TOKENS if t not in vocab]
    if missing:
        raise ValueError(
            f"the base model's tokenizer has no {' '.join(missing)} token: the Kun prompts are ChatML; "
            "use a base model whose vocabulary holds the ChatML tokens (Yi, Qwen)"
        )


def encode(tokenizer: Any, prompt: Prompt, target: Prompt) -> tuple[list[int], list[int]]:
    """Prompt ids as the inference engines make them, target ids on their own (no added BOS/EOS); a special
    token's text in the data parts is plain text in both (issue 12)."""
    (p,) = encode_prompts(tokenizer, [prompt], add_special_tokens=True)
    (t,) = encode_prompts(tokenizer, [target], add_special_tokens=False)
    return p, t


def data_path(out_dir: str | Path, task: str) -> Path:
    return Path(out_dir) / DATA_DIR / f"{task}.jsonl"


def report_path(out_dir: str | Path, task: str) -> Path:
    return Path(out_dir) / DATA_DIR / f"{task}.report.json"


def build_sft_set(cfg: DictConfig, task: str, tokenizer: Any, out_dir: str | Path) -> DataReport:
    """Write ``<out>/data/<task>.jsonl`` (id, source, position, prompt, target, prompt_ids, target_ids),
    ``<task>.rejected.jsonl`` and ``<task>.quarantine.jsonl.zst`` beside it, and ``<task>.report.json`` with
    the counts."""
    check_chatml(tokenizer)
    t = cfg.train
    template = task_template(cfg, task)
    path = data_path(out_dir, task)
    report = DataReport(task, str(path))
    quarantine = Quarantine(path.parent / f"{task}.quarantine.jsonl.zst")
    seen: set[int] = set()
    with atomic_open(path) as out, atomic_open(path.parent / f"{task}.rejected.jsonl") as rej:
        for item in read_seed(list(t.seed_data), t.seed_format):
            report.records_in += 1
            if isinstance(item, Bad):
                quarantine.add(item)
                continue
            if item.source not in report.sources:
                report.sources.append(item.source)
            reason, detail, row = None, "", {"source": item.source, "position": item.position}
            if not item.instruction:
                reason = "empty_instruction"
            elif not item.output:
                reason = "empty_output"
            else:
                prompt, target = example(item, task, template)
                key = xxhash.xxh3_64_intdigest(prompt.text.encode())
                row.update(prompt=prompt.text, target=target.text)
                if key in seen:
                    reason = "duplicate"
                else:
                    seen.add(key)
                    p_ids, t_ids = encode(tokenizer, prompt, target)
                    if len(p_ids) + len(t_ids) > t.max_len:
                        reason, detail = "too_long", f"{len(p_ids) + len(t_ids)} > {t.max_len} tokens"
                    else:
                        row.update(id=f"{task}-{report.out:06d}", prompt_ids=p_ids, target_ids=t_ids)
                        out.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
                        report.out += 1
                        report.prompt_tokens += len(p_ids)
                        report.target_tokens += len(t_ids)
                        continue
            report.rejected[reason] += 1
            rej.write(
                orjson.dumps({**row, "reason": reason, "detail": detail}, option=orjson.OPT_APPEND_NEWLINE)
            )
    quarantine.close()
    report.quarantined = quarantine.counts
    atomic_write_bytes(report_path(out_dir, task), orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2))
    if report.out == 0:
        raise ValueError(f"train.seed_data: no usable seed pairs in {report.sources or list(t.seed_data)}")
    return report


def read_examples(path: str | Path) -> list[dict]:
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines() if line.strip()]
