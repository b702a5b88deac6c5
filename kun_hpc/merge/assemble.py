"""The dataset of a merge: the inputs (the last stage's shards of every complete group), the rows and their
columns, and the ``merge-assemble`` phase that writes them (:func:`kun_hpc.run.merge_dataset` runs the
whole merge).

A run whose last stage makes answers (``answer``, ``rules``) becomes an instruction dataset: ``instruction``,
``output`` (the stage's ``answer``), ``unit_text`` (the unit both were made from: the record's ``text``),
``id``, ``corpus``, ``score``, ``verdict``, ``ppl``, the answer's faithfulness (``lcs_recall``,
``lcs_precision``, ``novel_share``, ``flags``: kun_hpc/filtering/faithfulness.py), ``dup_count``,
``dup_corpora``, ``meta`` and ``prov``. Any other run (no stage, or ``filter`` last) becomes a text dataset
with ``text`` in place of the pair and the unit, deduplicated by text. Records carry every upstream stage's
fields and ``prov`` entries, so the last stage's record already is the join of the stage outputs by id.
``meta`` (the native fields a corpus keeps: ``corpora[i].meta_fields``, WuDao's title, dataType and
uniqueKey; ``{}`` when none) and ``prov`` are stored as JSON strings: their shapes differ between corpora,
stages and runs, and one string column loads the same from every shard. ``score`` and ``ppl`` are floats or
null, never another type: a perplexity the scorer could not measure (``inf``: no token to score) is null in
JSONL and Parquet alike (issue 16: orjson writes a non-finite float as null, Parquet kept it).

Merge refuses an incomplete grid (units without a valid marker) unless ``merge.allow_partial=true``; it then
merges the complete groups only and lists what is missing, on stderr, in the card and in the report.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from omegaconf import DictConfig

from kun_hpc.cluster.grid import is_done, merge_upstream, plan_grid, raw_dedup_hash
from kun_hpc.cluster.phases import PhaseUnit, is_phase_done
from kun_hpc.filtering import faithfulness
from kun_hpc.filtering.faithfulness import RuleParams
from kun_hpc.io.layout import dedup_raw_dir, shard_root, stage_dir, stage_key
from kun_hpc.io.shards import ZstdJsonlWriter, list_shards, read_shard, shard_name
from kun_hpc.merge.dedup import dedup_phases
from kun_hpc.merge.raw import PHASE as RAW_PHASE
from kun_hpc.stages.registry import stage_class

PAIR_STAGES = ("answer", "rules")
LENGTH_BINS = [0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 1 << 62]
SCORE_BINS = [round(i / 20, 2) for i in range(21)]
PAIR_FIELDS = (
    "id",
    "corpus",
    "instruction",
    "output",
    "unit_text",  # the unit the pair was made from (the record's text); null when the record has none
    "score",
    "verdict",
    "ppl",
    *faithfulness.MEASURES,  # lcs_recall, lcs_precision, novel_share: floats, null when not measured
    "flags",  # drift, copy, refusal (sorted; null when not measured)
    "dup_count",
    "dup_corpora",
    "meta",
    "prov",
)
TEXT_FIELDS = ("id", "corpus", "text", "score", "ppl", "dup_count", "dup_corpora", "meta", "prov")


@dataclass
class MergeInputs:
    kind: str  # pairs | text
    shards: list[Path]
    root: Path
    upstream: str  # hash of what made the shards
    missing: list[str] = field(default_factory=list)  # units without a valid marker


def makes_pairs(stage: str) -> bool:
    """Whether a stage's records hold ``instruction`` and ``answer`` (a custom stage says so with a
    ``makes_pairs = True`` class attribute)."""
    return stage_key(stage) in PAIR_STAGES or bool(getattr(stage_class(stage), "makes_pairs", False))


def merge_dir(cfg: DictConfig) -> Path:
    return Path(cfg.merge.output)


def find_inputs(cfg: DictConfig) -> MergeInputs:
    """The last stage's shards of every complete group, and what is missing (RuntimeError if anything is,
    unless ``merge.allow_partial``)."""
    root = shard_root(cfg)
    if not root.exists() or not list_shards(root):
        raise RuntimeError(f"merge: no shards under {root}: run `kun-hpc run` (or `kun-hpc shard`) first")
    grid = plan_grid(cfg)
    missing: list[str] = []
    if cfg.dedup.raw:
        job_units = _raw_units(cfg)
        missing += [f"{u.phase}/{u.name}" for u in job_units if not is_phase_done(u)]
    complete = set(range(grid.groups)) if grid.stages else set()
    for stage in grid.stages:
        for u in grid.units[stage]:
            if not is_done(u):
                missing.append(f"{stage}/{u.name}")
                complete.discard(u.index)
    if grid.stages:
        last = grid.stages[-1]
        kind = "pairs" if makes_pairs(cfg.pipeline.stages[-1]) else "text"
        shards = [Path(t.output) for u in grid.units[last] if u.index in complete for t in u.shards]
        base = stage_dir(cfg, last)
    else:
        kind = "text"
        base = dedup_raw_dir(cfg) if cfg.dedup.raw else root
        shards = [base / p.relative_to(root) for p in list_shards(root)]
    upstream = merge_upstream(cfg)
    if cfg.dedup.raw and any(m.startswith(RAW_PHASE) for m in missing):
        shards = []  # every group reads the raw dedup's output
    if missing and not cfg.merge.allow_partial:
        shown = ", ".join(missing[:20]) + (f" (+{len(missing) - 20} more)" if len(missing) > 20 else "")
        raise RuntimeError(
            f"merge: the grid is incomplete: {len(missing)} units have no valid marker: {shown}. Let the run "
            "finish (kun-hpc status), or merge what is complete with allow_partial=true"
        )
    return MergeInputs(kind, shards, base, upstream, missing)


def _raw_units(cfg: DictConfig) -> list[PhaseUnit]:
    from kun_hpc.merge.raw import raw_job

    return [u for p in dedup_phases(raw_job(cfg), raw_dedup_hash(cfg)) for u in p.units]


def dedup_keys(cfg: DictConfig, kind: str) -> list[str]:
    keys = list(cfg.merge.dedup_by)
    if kind == "text":  # a text dataset has no instruction: one pass by text when any was asked for
        return ["text"] if keys else []
    return [k for k in keys if k != "text"] + (["text"] if "text" in keys else [])


# -------------------------------------------------------------------------------------------- assemble
@dataclass(frozen=True)
class AssembleTask:
    kind: str
    inputs: tuple[str, ...]
    out: str  # the dataset folder
    first: int  # dataset shard number of inputs[0]
    parquet: bool
    zstd_level: int
    # the rules section (plain values): measures the faithfulness of pairs that lack it (a run ending with
    # Answer); None: such pairs get null faithfulness columns
    rules: dict | None = None


def finite_or_none(value: object) -> float | None:
    """A number as the dataset's float columns hold it: a finite float, else None (a bool, a string, NaN or
    inf is no measurement)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def json_column(value: object) -> str:
    """A nested field as one JSON string column (keys sorted)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def to_row(rec: dict, kind: str, params: RuleParams | None = None) -> dict:
    """A dataset row (:data:`PAIR_FIELDS` or :data:`TEXT_FIELDS`) from a last-stage record. A pair's
    faithfulness columns come from its ``faithfulness`` field, else are measured with ``params``
    (:func:`kun_hpc.filtering.faithfulness.of_record`), else null."""
    row = {
        "id": str(rec.get("id", "")),
        "corpus": str(rec.get("corpus", "")),
        "score": finite_or_none(rec.get("score")),
        "ppl": finite_or_none(rec.get("ppl")),
        "dup_count": int(rec.get("dup_count") or 0),  # copies the dedup passes removed in its favour
        "dup_corpora": sorted(rec.get("dup_corpora") or []),  # the corpora those copies came from
        "meta": json_column(rec.get("meta") or {}),
        "prov": json_column(rec.get("prov", {})),
    }
    if kind == "pairs":
        verdict = rec.get("verdict")
        text = rec.get("text")
        row.update(instruction=rec["instruction"], output=rec["answer"], verdict=verdict)
        row["unit_text"] = text if isinstance(text, str) else None
        f = faithfulness.of_record(rec, params)
        row.update({k: float(f[k]) if f else None for k in faithfulness.MEASURES})
        row["flags"] = sorted(f["flags"]) if f else None
    else:
        row["text"] = rec["text"]
    return {k: row[k] for k in (PAIR_FIELDS if kind == "pairs" else TEXT_FIELDS)}


# each column's type, as Hugging Face datasets names it (a card's dataset_info features); every other column
# is a string. "list:string" is a list of strings.
COLUMN_TYPES = {
    "score": "float64",
    "ppl": "float64",
    "dup_count": "int64",
    "dup_corpora": "list:string",
    **dict.fromkeys(faithfulness.MEASURES, "float64"),
    "flags": "list:string",
}


def column_types(kind: str) -> list[tuple[str, str]]:
    """The dataset's columns in order with their types (:data:`COLUMN_TYPES`), for Parquet and the card:
    JSONL has no schema, so a column that is null in every row (``ppl`` without a scorer) is typed by the
    card's ``dataset_info`` features, not by what a reader infers."""
    return [(n, COLUMN_TYPES.get(n, "string")) for n in (PAIR_FIELDS if kind == "pairs" else TEXT_FIELDS)]


def arrow_schema(kind: str):
    import pyarrow as pa

    arrow = {"float64": pa.float64(), "int64": pa.int64(), "string": pa.string()}
    arrow["list:string"] = pa.list_(pa.string())
    return pa.schema([(n, arrow[t]) for n, t in column_types(kind)])


def assemble_unit(task: AssembleTask) -> dict:
    """Write one dataset shard (JSONL zstd, and Parquet) per input shard; counts and histograms. Pairs add the
    histograms of the faithfulness measures (over :data:`kun_hpc.filtering.faithfulness.BINS`), the count of
    each flag (``flags``) and of each matched refusal phrase (``refusal_phrases``)."""
    by_corpus: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    phrases: Counter[str] = Counter()
    hist: dict[str, np.ndarray] = {}
    text_fields = ("instruction", "output") if task.kind == "pairs" else ("text",)
    params = RuleParams.from_config(task.rules) if task.rules is not None else None
    shards = []
    for k, path in enumerate(task.inputs):
        name = shard_name(task.first + k)
        rows = [to_row(r, task.kind, params) for r in read_shard(path)]
        jsonl = Path(task.out) / "jsonl" / name
        parquet = Path(task.out) / "parquet" / name.replace(".jsonl.zst", ".parquet")
        if not rows:  # no file: an empty Parquet file has no row group, which datasets refuses
            jsonl.unlink(missing_ok=True)
            parquet.unlink(missing_ok=True)
            shards.append({"input": path, "output": None, "rows": 0})
            continue
        w = ZstdJsonlWriter(jsonl, task.zstd_level)
        for r in rows:
            w.write(r)
        info = w.close()
        if task.parquet:
            _write_parquet(parquet, rows, task.kind)
        by_corpus.update(r["corpus"] for r in rows)
        for f in text_fields:
            lengths = [len(r[f]) for r in rows]
            hist[f"length_{f}"] = hist.get(f"length_{f}", 0) + np.histogram(lengths, LENGTH_BINS)[0]
        scores = [r["score"] for r in rows if r["score"] is not None]
        hist["score"] = hist.get("score", 0) + np.histogram(scores, SCORE_BINS)[0]
        if task.kind == "pairs":
            for key in faithfulness.MEASURES:
                values = [r[key] for r in rows if r[key] is not None]
                hist[key] = hist.get(key, 0) + np.histogram(values, faithfulness.BINS)[0]
            refusing = [r for r in rows if r["flags"] and faithfulness.REFUSAL in r["flags"]]
            flags.update(f for r in rows for f in r["flags"] or ())
            if params is not None and params.refusal is not None:
                phrases.update(m.group(0) for r in refusing if (m := params.refusal.search(r["output"])))
        shards.append({"input": path, "output": info.name, "rows": len(rows), "sha256": info.sha256})
    return {
        "rows": sum(s["rows"] for s in shards),
        "by_corpus": dict(by_corpus),
        "histograms": {k: np.asarray(v).tolist() for k, v in hist.items()},
        "flags": dict(flags),
        "refusal_phrases": dict(phrases),
        "shards": shards,
    }


def _write_parquet(path: Path, rows: list[dict], kind: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kun_hpc.io.atomic import atomic_open

    schema = arrow_schema(kind)
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_open(path) as f:
        pq.write_table(table, f, compression="zstd")


# ----------------------------------------------------------------------------------------------- merge
@dataclass
class MergeResult:
    inputs: MergeInputs
    dedup: list[tuple[str, list[dict]]]  # (key, apply markers) per pass
    assemble: list[dict]
    dataset: Path
    report: Path
    decontaminate: list[dict] = field(default_factory=list)  # merge-decontaminate markers; [] when off

    @property
    def rows(self) -> int:
        return sum(m["rows"] for m in self.assemble)

    def summary(self) -> str:
        """The merge's last line; for an empty dataset, a warning that says which step left nothing."""
        report = self.report / "report.md"
        if not self.rows:  # the count first, as always ("N records in DIR"): scripts parse this line
            return (
                f"0 records in {self.dataset} (warning: the dataset is empty: {self.empty_why()}); "
                f"the funnel, step by step: {report}"
            )
        return f"{self.rows:,} records in {self.dataset} (card: README.md there); report: {report}"

    def empty_why(self) -> str:
        """Why no record reached the dataset (issue 16): the first merge step (decontamination, a dedup pass)
        that removed every record it got, else the stages, which left the merge nothing."""
        steps = [("merge-decontaminate", self.decontaminate)] if self.decontaminate else []
        steps += [(f"merge-dedup-{key}", markers) for key, markers in self.dedup]
        for name, markers in steps:
            got = sum(m["in"] for m in markers)
            if got and not sum(m["out"] for m in markers):
                return f"{name} removed all {got:,} records it got (rejected as duplicates or contaminated)"
        return (
            "the last stage kept no record: every record was rejected or quarantined on the way "
            "(kun-hpc status RUN shows the stages' funnel; each stage's rejected/ folder says why)"
        )
