"""``kun-hpc export RUN --format alpaca|sharegpt|messages|prompt-completion``: the merged dataset as the
JSONL files SFT frameworks load as they are (LLaMA-Factory, TRL's ``SFTTrainer``), split into train and
validation by near-copy group (kun_hpc/merge/split.py), with LLaMA-Factory's ``dataset_info.json``, a
manifest and an SFT-readiness table (token lengths under a model's chat template). docs/export.md.

One row per pair, in the shape each consumer reads, the record ``id`` kept in every row so a row traces back
to the run (``kun-hpc inspect``, the dataset's other columns):

============================  ========================================================================
``alpaca``                    ``{instruction, input: "", output, id}`` (LLaMA-Factory's alpaca format)
``sharegpt``                  ``{conversations: [{from: human, value}, {from: gpt, value}], id}``
``messages``                  ``{messages: [{role: user, content}, {role: assistant, content}], id}``
                              (the OpenAI chat shape: TRL's conversational language modelling,
                              LLaMA-Factory's OpenAI format)
``prompt-completion``         ``{prompt: [{role: user, content}], completion: [{role: assistant,
                              content}], id}``: TRL's *conversational* prompt-completion form
============================  ========================================================================

Prompt-completion is written in TRL's conversational form, not the plain ``{prompt: str, completion: str}``
one: with it TRL's ``SFTTrainer`` renders each pair with the trained model's own chat template (and computes
the loss on the completion only, its default for prompt-completion data), so the model learns the turn format
it will be served with; plain strings would train on the bare text with no template at all. LLaMA-Factory
reads alpaca and sharegpt datasets only, so this format gets no ``dataset_info.json``.

The dataset is read with pyarrow (``<merge.output>/dataset/jsonl/``, the files the merge always writes and
hashes) twice: once to group the rows, once to write them; memory holds every row's id, MinHash signature
and band entries (kun_hpc/merge/split.py), never the texts. A row without an id, instruction or output (null
or blank) is quarantined (``quarantine.jsonl.zst`` beside the export, with file, line and reason) and
counted: rows read = train + validation + quarantined. Every file is written atomically, ``manifest.json``
last (it is removed first), so a folder with a manifest holds a complete export.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from omegaconf import DictConfig

from kun_hpc.config import ConfigError, load_run
from kun_hpc.core.hashing import file_sha256
from kun_hpc.inference.prompt import CHATML_TEMPLATE
from kun_hpc.io.atomic import atomic_open, atomic_write_bytes
from kun_hpc.io.quarantine import Bad, Quarantine
from kun_hpc.merge.dedup import settings_of
from kun_hpc.merge.split import LINKS, Grouper, assign

FORMATS = ("alpaca", "sharegpt", "messages", "prompt-completion")
SPLITS = ("train", "validation")
FILES = {s: f"{s}.jsonl" for s in SPLITS}
MANIFEST, DATASET_INFO, QUARANTINE = "manifest.json", "dataset_info.json", "quarantine.jsonl.zst"
EXPORT_DIR = "export"  # RUN/export/<format>/ unless --out
DEFAULT_VAL_FRACTION = 0.02
DEFAULT_CUTOFF_LEN = 2048  # LLaMA-Factory's default cutoff_len (hparams/data_args.py)
BLOCK_BYTES = 1 << 22  # bytes of JSONL pyarrow parses at a time (a batch of rows; one tokenizer call)
# the fields of each format's rows, in order
FIELDS = {
    "alpaca": ["instruction", "input", "output", "id"],
    "sharegpt": ["conversations", "id"],
    "messages": ["messages", "id"],
    "prompt-completion": ["prompt", "completion", "id"],
}
# LLaMA-Factory's dataset description of each format (its data/README.md: "Alpaca Format", "Sharegpt
# Format", "OpenAI Format"); prompt-completion has none
LLAMA_FACTORY: dict[str, dict[str, Any]] = {
    "alpaca": {
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"},
    },
    "sharegpt": {
        "formatting": "sharegpt",
        "columns": {"messages": "conversations"},
        "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
    },
    "messages": {
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    },
}
SPLIT_RULE = (
    "groups: union-find over equal normalized instructions, equal normalized outputs and instructions "
    "sharing a MinHash LSH band bucket (the run's dedup settings) at estimated Jaccard >= similarity; a "
    "group goes to validation when xxh3_64(f'{seed}\\0{smallest id}') / 2**64 < val_fraction; a validation "
    "row with such a near-copy in train moves to train with its group (kun_hpc/merge/split.py)"
)
# the dedup settings the split reads (the manifest records them)
SPLIT_SETTINGS = (
    "ngram",
    "permutations",
    "seed",
    "bands",
    "long_bands",
    "long_shingles",
    "threshold",
    "normalize",
)
DATASET_NAMES = {s: f"kun_{s}" for s in SPLITS}  # the dataset_info.json entries: dataset / eval_dataset


class ExportError(ValueError):
    """The run has no dataset to export (none merged, a text dataset, nothing left); the message says why."""


def example(fmt: str, instruction: str, output: str, record_id: str) -> dict[str, Any]:
    """One pair as a row of ``fmt`` (:data:`FORMATS`; the fields of :data:`FIELDS`)."""
    if fmt == "alpaca":
        return {"instruction": instruction, "input": "", "output": output, "id": record_id}
    if fmt == "sharegpt":
        turns = [{"from": "human", "value": instruction}, {"from": "gpt", "value": output}]
        return {"conversations": turns, "id": record_id}
    user, assistant = {"role": "user", "content": instruction}, {"role": "assistant", "content": output}
    if fmt == "messages":
        return {"messages": [user, assistant], "id": record_id}
    if fmt == "prompt-completion":
        return {"prompt": [user], "completion": [assistant], "id": record_id}
    raise ValueError(f"unknown export format {fmt!r}: one of {', '.join(FORMATS)}")


def dataset_info(fmt: str, files: dict[str, str]) -> dict[str, dict] | None:
    """LLaMA-Factory's ``dataset_info.json`` for the split files (split -> file name relative to the export
    folder, which is then LLaMA-Factory's ``dataset_dir``): one entry per split (:data:`DATASET_NAMES`), or
    None for a format LLaMA-Factory does not read (prompt-completion)."""
    spec = LLAMA_FACTORY.get(fmt)
    if spec is None:
        return None
    return {DATASET_NAMES[s]: {"file_name": name, **spec} for s, name in files.items()}


# ------------------------------------------------------------------------------------------ reading
def dataset_folder(run_dir: str | Path) -> tuple[Path, DictConfig]:
    """The run's merged dataset (``<merge.output>/dataset``) and the run's config; ExportError when the
    folder is no run or no merge wrote a dataset."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ExportError(f"{run_dir} is not a run folder (no config.yaml)")
    cfg = load_run(run_dir)
    folder = Path(cfg.merge.output) / "dataset"
    if not (folder / "jsonl").is_dir():
        if folder.is_dir():  # the merge ran and kept nothing
            raise ExportError(f"{folder}: the dataset is empty (0 records): nothing to export")
        raise ExportError(f"{folder}: no merged dataset: run `kun-hpc merge {run_dir}` first")
    return folder, cfg


def dataset_files(folder: Path) -> list[Path]:
    """The dataset's JSONL shards in order; ExportError for a text dataset or an empty one."""
    import pyarrow as pa
    import pyarrow.json as pj

    files = sorted((folder / "jsonl").glob("part-*.jsonl.zst"))
    if not files:
        raise ExportError(f"{folder}: the dataset is empty (no jsonl/part-*.jsonl.zst): nothing to export")
    names = pj.open_json(pa.input_stream(files[0], compression="zstd")).schema.names
    if "instruction" not in names or "output" not in names:
        what = "a text dataset (a `text` column" if "text" in names else f"no pairs (columns {names}"
        raise ExportError(
            f"{folder}: {what}, no instruction/output): the run's last stage makes no pairs. Export writes "
            "instruction pairs for SFT; run the pair stages (label, point, answer, rules) and merge again"
        )
    return files


def read_batches(files: list[Path]) -> Iterator[tuple[Path, int, dict[str, list]]]:
    """(file, line of the batch's first row (1-based), columns ``id``, ``instruction``, ``output`` as
    lists) of every block of the dataset's JSONL files, read by pyarrow with those columns as strings;
    ExportError naming the file when one cannot be parsed."""
    import pyarrow as pa
    import pyarrow.json as pj

    schema = pa.schema([("id", pa.string()), ("instruction", pa.string()), ("output", pa.string())])
    parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    read = pj.ReadOptions(block_size=BLOCK_BYTES)
    for path in files:
        line = 1
        try:
            for batch in pj.open_json(pa.input_stream(path, compression="zstd"), read, parse):
                yield path, line, batch.to_pydict()
                line += batch.num_rows
        except (pa.ArrowInvalid, OSError) as e:  # damaged zstd, a line that is no JSON object, a wrong type
            raise ExportError(f"{path}: after line {line - 1}: {e}") from None


def bad_reason(record_id: Any, instruction: Any, output: Any) -> str | None:
    """Why a row cannot be a training pair (``missing_id``, ``missing_instruction``, ``missing_output``:
    null or blank), or None."""
    for name, value in (("id", record_id), ("instruction", instruction), ("output", output)):
        if not isinstance(value, str) or not value.strip():
            return f"missing_{name}"
    return None


# ------------------------------------------------------------------------------------------ readiness
def token_lengths(tokenizer: Any, pairs: list[tuple[str, str]], template: str | None = None) -> list[int]:
    """Tokens of each pair as one user -> assistant conversation under ``tokenizer``'s chat template (or
    ``template``): the rendered text (``apply_chat_template(tokenize=False)``) tokenized without added
    special tokens, which is what ``apply_chat_template(tokenize=True)`` counts."""
    if not pairs:
        return []
    convs = [[{"role": "user", "content": i}, {"role": "assistant", "content": o}] for i, o in pairs]
    texts = tokenizer.apply_chat_template(convs, tokenize=False, chat_template=template)
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def length_stats(lengths: list[int] | np.ndarray, cutoff_len: int) -> dict[str, Any]:
    """pairs, min, median, p95, max (numpy's linear percentiles, to 2 decimals) and the pairs longer than
    ``cutoff_len`` tokens (``over_cutoff``: LLaMA-Factory truncates them to ``cutoff_len``)."""
    a = np.asarray(lengths, dtype=np.int64)
    if not len(a):
        return {"pairs": 0, "min": None, "median": None, "p95": None, "max": None, "over_cutoff": 0}
    return {
        "pairs": len(a),
        "min": int(a.min()),
        "median": round(float(np.percentile(a, 50)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
        "max": int(a.max()),
        "over_cutoff": int((a > cutoff_len).sum()),
    }


# ------------------------------------------------------------------------------------------ export
@dataclass
class ExportResult:
    out: Path
    format: str
    rows: dict[str, int]  # per split
    groups: dict[str, int]  # per split
    files: list[str]  # written, in the export folder
    manifest: dict[str, Any]
    readiness: dict[str, Any] | None = None
    quarantined: Counter = field(default_factory=Counter)


def export(
    run_dir: str | Path,
    fmt: str,
    out: str | Path | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    tokenizer: str | Path | None = None,
    cutoff_len: int = DEFAULT_CUTOFF_LEN,
    similarity: float | None = None,
) -> ExportResult:
    """Write the run's merged dataset as ``fmt`` into ``out`` (default ``RUN/export/<fmt>``): train.jsonl,
    validation.jsonl (when ``val_fraction`` > 0 and a group was drawn), LLaMA-Factory's dataset_info.json,
    manifest.json; with ``tokenizer`` (a local model or tokenizer folder) the token lengths of every pair
    under its chat template (ChatML when it has none) against ``cutoff_len``; ``similarity``: the estimated
    n-gram Jaccard from which two instructions sharing a band bucket count as near-copies for the split
    (kun_hpc/merge/split.py; None: the run's ``dedup.threshold``). Raises ExportError (no dataset, a text
    dataset, a damaged file, nothing usable), ValueError (a bad format, fraction, cutoff or similarity),
    ConfigError (an unreadable run config) and ModelPathError (no tokenizer in that folder)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: one of {', '.join(FORMATS)}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), not {val_fraction}")
    if cutoff_len < 1:
        raise ValueError(f"--cutoff-len must be at least 1, not {cutoff_len}")
    run_dir = Path(run_dir)
    folder, cfg = dataset_folder(run_dir)
    files = dataset_files(folder)
    tok, template = load_tokenizer(tokenizer) if tokenizer is not None else (None, None)
    out = Path(out) if out is not None else run_dir / EXPORT_DIR / fmt
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # until the new one is written, the folder is no export
    (out / QUARANTINE).unlink(missing_ok=True)
    settings = settings_of(cfg.dedup)
    grouper, ids, good, quarantined = _group(files, folder, Grouper(settings, similarity), out / QUARANTINE)
    read = sum(len(g) for g in good)
    if not ids:
        raise ExportError(f"{folder}: none of its {read:,} rows is a usable pair (see {out / QUARANTINE})")
    labels, links = grouper.groups()
    validation, moved = grouper.separate(assign(ids, labels, val_fraction, seed), labels)
    names = {"train": FILES["train"], **({"validation": FILES["validation"]} if validation.any() else {})}
    lengths = _write_splits(
        fmt, files, good, validation, {s: out / n for s, n in names.items()}, tok, template
    )
    for s in SPLITS:
        if s not in names:
            (out / FILES[s]).unlink(missing_ok=True)
    info = dataset_info(fmt, names)
    if info is not None:
        atomic_write_bytes(out / DATASET_INFO, orjson.dumps(info, option=orjson.OPT_INDENT_2))
    else:
        (out / DATASET_INFO).unlink(missing_ok=True)

    sides = {"train": ~validation, "validation": validation}
    rows = {s: int(m.sum()) for s, m in sides.items()}
    groups = {s: len(np.unique(labels[m])) for s, m in sides.items()}
    readiness = None
    if tok is not None:
        a = np.asarray(lengths, dtype=np.int64)
        readiness = {
            "tokenizer": str(Path(tokenizer).resolve()),
            "chat_template": "the tokenizer's" if template is None else "ChatML (the tokenizer has none)",
            "cutoff_len": cutoff_len,
            "splits": {
                s: length_stats(a[m], cutoff_len) for s, m in {"all": np.ones(len(a), bool), **sides}.items()
            },
        }
    sizes = np.bincount(np.unique(labels, return_inverse=True)[1])
    manifest = {
        "format": fmt,
        "fields": FIELDS[fmt],
        "files": {
            s: {"file": name, "rows": rows[s], "sha256": file_sha256(out / name)} for s, name in names.items()
        },
        "dataset_info": DATASET_INFO if info is not None else None,
        "llama_factory_datasets": {s: DATASET_NAMES[s] for s in names} if info is not None else None,
        "split": {
            "val_fraction": val_fraction,
            "seed": seed,
            "similarity": grouper.similarity,
            "rule": SPLIT_RULE,
            "dedup": {k: settings[k] for k in SPLIT_SETTINGS},
            "groups": {
                "all": len(sizes),
                **groups,
                "multi_row": int((sizes > 1).sum()),
                "largest": int(sizes.max()),
                "links": {k: links[k] for k in LINKS},
                # validation groups with a near-copy in train that the full bucket check moved to train
                "moved_to_train": {"groups": moved["groups"], "rows": moved["rows"]},
            },
        },
        "source": _source(cfg, folder, files, good),
        "accounting": {
            "in": read,
            "out": rows["train"] + rows["validation"],
            "quarantined": dict(quarantined),
        },
        "readiness": readiness,
    }
    written = [*names.values(), *([DATASET_INFO] if info is not None else [])]
    written += [QUARANTINE] if quarantined else []
    atomic_write_bytes(out / MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return ExportResult(out, fmt, rows, groups, [*written, MANIFEST], manifest, readiness, quarantined)


def _group(
    files: list[Path], folder: Path, grouper: Grouper, quarantine_path: Path
) -> tuple[Grouper, list[str], list[np.ndarray], Counter]:
    """Pass 1: every usable row's id into the grouper, the others quarantined; which rows of each batch
    are usable, and the quarantine's counts by reason."""
    ids: list[str] = []
    good: list[np.ndarray] = []
    quarantine = Quarantine(quarantine_path)
    try:
        for path, line, cols in read_batches(files):
            ok = np.ones(len(cols["id"]), dtype=bool)
            for k, row in enumerate(zip(cols["id"], cols["instruction"], cols["output"], strict=True)):
                reason = bad_reason(*row)
                if reason is not None:
                    ok[k] = False
                    preview = orjson.dumps(dict(zip(("id", "instruction", "output"), row, strict=True)))
                    quarantine.add(
                        Bad(str(path.relative_to(folder)), f"line {line + k}", reason, "", preview)
                    )
            good.append(ok)
            keep = np.flatnonzero(ok).tolist()
            ids += [cols["id"][k] for k in keep]
            grouper.add([cols["instruction"][k] for k in keep], [cols["output"][k] for k in keep])
    finally:
        quarantine.close()
    return grouper, ids, good, quarantine.counts


def _write_splits(
    fmt: str,
    files: list[Path],
    good: list[np.ndarray],
    validation: np.ndarray,
    paths: dict[str, Path],
    tok: Any,
    template: str | None,
) -> list[int]:
    """Pass 2: each usable row to its split's file (atomically), in dataset order; the token lengths of the
    rows (in that order) when a tokenizer is given."""
    lengths: list[int] = []
    j = 0
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    with contextlib.ExitStack() as stack:
        sinks = {s: stack.enter_context(atomic_open(p)) for s, p in paths.items()}
        for (_, _, cols), ok in zip(read_batches(files), good, strict=True):
            pairs = []
            for k in np.flatnonzero(ok).tolist():
                ins, output = cols["instruction"][k], cols["output"][k]
                sink = sinks["validation" if validation[j] else "train"]
                sink.write(dumps(example(fmt, ins, output, cols["id"][k]), option=newline))
                pairs.append((ins, output))
                j += 1
            if tok is not None:
                lengths += token_lengths(tok, pairs, template)
    return lengths


def load_tokenizer(path: str | Path) -> tuple[Any, str | None]:
    """The tokenizer of a local model or tokenizer folder (never the hub) and the template to render with:
    None (its own chat template) or :data:`CHATML_TEMPLATE` when it has none. ModelPathError when the
    folder is missing or holds no tokenizer."""
    from transformers import AutoTokenizer

    from kun_hpc.inference.engine import ModelPathError, go_offline, resolve_model_path

    folder = Path(path).expanduser()
    if not folder.is_dir():
        resolve_model_path(path)  # raises its message: a hub id, no such folder, not a folder
    go_offline()
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelPathError(f"{folder}: no tokenizer there that transformers can load ({e})") from None
    return tok, None if getattr(tok, "chat_template", None) else CHATML_TEMPLATE


def _source(cfg: DictConfig, folder: Path, files: list[Path], good: list[np.ndarray]) -> dict[str, Any]:
    """What the export was made from: the dataset folder, each file's sha256, a hash of them all (sha256 of
    the ``"<file> <sha256>\\n"`` lines), the rows read and the run's config hash."""
    digests = [(str(p.relative_to(folder)), file_sha256(p)) for p in files]
    h = hashlib.sha256("".join(f"{name} {d}\n" for name, d in digests).encode()).hexdigest()
    config_sha = Path(cfg.run.dir) / "config.sha256"
    return {
        "dataset": str(folder),
        "sha256": h,
        "rows": sum(len(g) for g in good),
        "files": [{"file": name, "sha256": d} for name, d in digests],
        "config_sha256": config_sha.read_text().strip() if config_sha.is_file() else None,
    }


# ------------------------------------------------------------------------------------------ command
HELP = "the merged dataset as SFT files (Alpaca, ShareGPT, messages, prompt-completion), train + validation"


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("export", help=HELP, description=HELP)
    c.add_argument("run", metavar="RUN", help="a run folder (holds config.yaml) with a merged dataset")
    c.add_argument("--format", required=True, choices=FORMATS, help="the rows' shape (docs/export.md)")
    c.add_argument("--out", metavar="DIR", help=f"the folder to write (default RUN/{EXPORT_DIR}/FORMAT)")
    share = f"share of near-copy groups drawn for validation.jsonl (default {DEFAULT_VAL_FRACTION}; 0: none)"
    c.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, metavar="F", help=share)
    c.add_argument("--seed", type=int, default=0, help="the split's seed (default 0)")
    near = "instructions sharing an LSH bucket from this estimated Jaccard are near-copies (default: the "
    near += "run's dedup.threshold)"
    c.add_argument("--similarity", type=float, metavar="S", help=near)
    what = "a local model or tokenizer folder: the pairs' token lengths under its chat template"
    c.add_argument("--tokenizer", metavar="MODEL_DIR", help=what)
    cutoff = (
        f"with --tokenizer: count the pairs over N tokens (default {DEFAULT_CUTOFF_LEN}, LLaMA-Factory's)"
    )
    c.add_argument("--cutoff-len", type=int, default=DEFAULT_CUTOFF_LEN, metavar="N", help=cutoff)


def _number(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,.1f}".removesuffix(".0") if isinstance(v, float) else f"{v:,}"


def print_result(result: ExportResult) -> None:
    """The split table on stdout (file, rows and groups per split; with a tokenizer the token lengths and
    the pairs over ``cutoff_len``), then what was written on stderr."""
    from rich.table import Table as RichTable

    from kun_hpc.core.console import console

    r, m = result.readiness, result.manifest
    table = RichTable(title=f"export {result.format}: {result.out}")
    heads = ["split", "file", "rows", "groups"]
    if r is not None:
        heads += ["min", "median", "p95", "max", f"> cutoff_len {r['cutoff_len']:,}"]
        table.caption = f"tokens of each pair under {r['chat_template']} chat template ({r['tokenizer']})"
    for h in heads:
        table.add_column(h, justify="left" if h in ("split", "file") else "right")
    for s in (*SPLITS, "all") if r is not None else SPLITS:
        if s == "all":
            cells = ["all", "", _number(sum(result.rows.values())), _number(m["split"]["groups"]["all"])]
        else:
            file = m["files"][s]["file"] if s in m["files"] else "(none)"
            cells = [s, file, _number(result.rows[s]), _number(result.groups[s])]
        if r is not None:
            st = r["splits"][s]
            over = f"{st['over_cutoff']:,} ({st['over_cutoff'] / st['pairs']:.1%})" if st["pairs"] else "0"
            cells += [*(_number(st[k]) for k in ("min", "median", "p95", "max")), over]
        table.add_row(*cells)
    console().print(table)
    notes = ""
    if not m["dataset_info"]:
        notes += f" (no {DATASET_INFO}: LLaMA-Factory reads alpaca and sharegpt datasets only)"
    if result.quarantined:
        by = ", ".join(f"{k} {v:,}" for k, v in sorted(result.quarantined.items()))
        notes += f"; quarantined: {by} ({result.out / QUARANTINE})"
    print(f"kun-hpc export: wrote {', '.join(result.files)} in {result.out}{notes}", file=sys.stderr)


def main(ns: argparse.Namespace) -> int:
    """``kun-hpc export``: exit 0, 1 (no dataset to export, a damaged file, the run busy), 2 (a bad value
    on the command line, a tokenizer folder that is none)."""
    from kun_hpc.inference.engine import ModelPathError
    from kun_hpc.io.lock import RunDirInUse, run_lock

    run = Path(ns.run)
    # a merge rewriting the dataset meanwhile would mix two datasets: hold the run (when one can write it)
    locks = (run / "config.yaml").is_file() and os.access(run, os.W_OK)
    try:
        with run_lock(run, "export") if locks else contextlib.nullcontext():
            result = export(
                run, ns.format, ns.out, ns.val_fraction, ns.seed, ns.tokenizer, ns.cutoff_len, ns.similarity
            )
    except ModelPathError as e:
        print(f"kun-hpc export: --tokenizer: {e}", file=sys.stderr)
        return 2
    except (ExportError, ConfigError, RunDirInUse) as e:
        print(f"kun-hpc export: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # the command line's values
        print(f"kun-hpc export: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder it cannot write
        print(f"kun-hpc export: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print_result(result)
    return 0
