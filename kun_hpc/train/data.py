"""Seed pairs -> the SFT sets of the Label model (inverted) and the Primary Chat model (forward).

Seed pairs come from :mod:`kun_hpc.train.seed` (Alpaca, ShareGPT, OpenAI messages, or the columns of
``train.seed_columns``; one :class:`SeedPair` per user -> assistant exchange). The instruction a model sees
or writes is ``instruction`` + a newline + ``input`` (when there is one). Each pair becomes one example
(prompt, target):

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
target per prompt: a pair whose prompt was seen already is rejected as ``duplicate``. Only an item's first
exchange becomes an example: a later one (``turn`` > 1) is rejected as ``later_turn``, and a system message
is left out of the prompt and counted (``system_dropped``), as Kun's models are single-turn and their
prompts carry no system message (kun_hpc/train/seed.py). Accounting holds as everywhere, one record per
exchange or bad item: ``in = out + rejected (later_turn, empty_instruction, empty_output, duplicate,
too_long) + quarantined (kun_hpc/train/seed.py: invalid_json, invalid_utf8, not_an_object, missing_field,
wrong_type, ambiguous_format, unknown_role, wrong_role_order, unsupported_encoding)``.
"""

from __future__ import annotations

from collections import Counter
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
from kun_hpc.train.seed import SEED_SUFFIXES, SeedPair, clean, read_seed, seed_files

__all__ = [  # the reading half lives in kun_hpc/train/seed.py; these names stay importable from here
    "CHATML_TOKENS",
    "END_OF_TURN",
    "SEED_SUFFIXES",
    "DataReport",
    "SeedPair",
    "build_sft_set",
    "check_chatml",
    "clean",
    "data_path",
    "encode",
    "example",
    "read_examples",
    "read_seed",
    "report_path",
    "seed_files",
    "task_template",
]  # fmt: skip

END_OF_TURN = "<|im_end|>"  # ends every target: the stop string of the inference stages
CHATML_TOKENS = ("<|im_start|>", END_OF_TURN)

DATA_DIR = "data"
MODEL_DIR = "model"  # <train.output>/model: the trained model folder, renamed into place whole
DONE_FILE = "kun_train.json"  # in it: what made it


def model_done(output: str | Path) -> bool:
    """``<output>/model`` is a finished model: the trainer writes it in a temporary folder, ``kun_train.json``
    last, and renames it into place whole."""
    return (Path(output) / MODEL_DIR / DONE_FILE).is_file()


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
    system_dropped: int = 0  # examples whose item had a system message, left out of the prompt
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
            "system_dropped": self.system_dropped,
            "sources": self.sources,
        }


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
        for item in read_seed(list(t.seed_data), t.seed_format, t.seed_columns):
            report.records_in += 1
            if isinstance(item, Bad):
                quarantine.add(item)
                continue
            if item.source not in report.sources:
                report.sources.append(item.source)
            reason, detail, row = None, "", {"source": item.source, "position": item.position}
            if item.turn > 1:
                reason, detail = "later_turn", f"turn {item.turn}: follows earlier turns of its conversation"
                row.update(instruction=item.full_instruction, output=item.output)
            elif not item.instruction:
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
                        report.system_dropped += bool(item.system)
                        continue
            report.rejected[reason] += 1
            rej.write(
                orjson.dumps({**row, "reason": reason, "detail": detail}, option=orjson.OPT_APPEND_NEWLINE)
            )
    quarantine.close()
    report.quarantined = quarantine.counts
    atomic_write_bytes(report_path(out_dir, task), orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2))
    if report.out == 0:
        raise ValueError(
            f"train.seed_data: no usable seed pairs in {report.sources or list(t.seed_data)} (quarantined "
            f"{dict(report.quarantined)}, rejected {dict(report.rejected)}; each item's reason: "
            f"{quarantine.path if quarantine.total else path.parent / f'{task}.rejected.jsonl'}; the formats "
            "read: docs/training.md, Data)"
        )
    return report


def read_examples(path: str | Path) -> list[dict]:
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines() if line.strip()]
