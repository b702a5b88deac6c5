"""Render docs/reruns.md (between the RERUNS markers): for every config key, which steps a change re-runs.

    python tools/render_reruns.py            # rewrite the doc
    python tools/render_reruns.py --check    # exit 1 when the doc is not current

For every leaf key of the config schema (``kun_hpc.config.Config``; ``corpora[i]`` as ``corpora.0``, the
perplexity scorer's ``engine`` dict as its EngineSpec fields), the value is changed in a config where every
step runs (:func:`base_config`: all five of Kun's stages, ``dedup.raw``, the percentile calibration with an
``lm`` scorer, a benchmark file to decontaminate against) and the hashes the code computes for each step
are compared before and after (:func:`step_hashes`): the shard step's, the reshard's, the raw dedup phases',
the calibration key, each stage unit's and every merge phase unit's. A step whose hash changed re-runs.
The reason a key re-runs nothing is its entry in kun_hpc/config/outputs.py (``NOT_OUTPUT``). Issue 16.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import sys
import tempfile
import typing
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from omegaconf import DictConfig, ListConfig, OmegaConf  # noqa: E402

from kun_hpc import config  # noqa: E402
from kun_hpc.cluster.grid import merge_upstream, plan_grid, raw_dedup_hash  # noqa: E402
from kun_hpc.config import EngineSpec  # noqa: E402
from kun_hpc.config.outputs import NOT_OUTPUT  # noqa: E402
from kun_hpc.io.layout import shard_root, stage_dir  # noqa: E402
from kun_hpc.io.shards import list_shards  # noqa: E402
from kun_hpc.merge.assemble import MergeInputs, makes_pairs  # noqa: E402
from kun_hpc.merge.dedup import dedup_phases  # noqa: E402
from kun_hpc.merge.raw import raw_job  # noqa: E402
from kun_hpc.run import merge_plan  # noqa: E402
from kun_hpc.stages.filter import calibration_key, needs_calibration  # noqa: E402
from kun_hpc.stages.reshard import reshard_config_hash  # noqa: E402
from kun_hpc.stages.shard import shard_config_hash  # noqa: E402
from tools import doc_block  # noqa: E402

DOC = REPO / "docs" / "reruns.md"
BEGIN, END = "<!-- RERUNS BEGIN (tools/render_reruns.py) -->", "<!-- RERUNS END -->"
KUN = ("filter", "label", "point", "answer", "rules")
STEPS = ("shard", "reshard", "dedup.raw", "calibration", *KUN, "merge")
SHARDS_PER_CORPUS = 2
# keys whose default is another key's value (an interpolation, resolved at load): they change with it
FOLLOWERS = {"shard.output": ("reshard.input",)}
# what the table cannot say by itself
NOTES = {
    "pipeline.stages": "changed here by dropping point: the stages after the change and the merge",
    "pipeline.shards_per_task": (
        "unit g's marker holds group g's shards; another group size regroups every unit, so all run again"
    ),
    "pipeline.options": (
        "options of stages without a section (custom stages): that stage, those after it and the merge"
    ),
    "shard.output": "where the shards go; the raw dedup names its inputs by their path in the run folder",
    "merge.output": "where the merge goes; its phases name their inputs by their path in the run folder",
    "label.engine.model": "a model is named by its folder (its weights are not hashed)",
}


# ---------------------------------------------------------------------------------------- the config
def base_config(work: Path, run: str = "run") -> DictConfig:
    """The default preset with every step on, its files under ``work``, the run in ``work/<run>`` (another
    ``run`` moves the run folder and all that the config puts under it)."""
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    model.mkdir(exist_ok=True)
    (model / "tokenizer.json").write_text('{"model": "stand-in"}\n')
    (work / "other-tokenizer.json").write_text('{"model": "another"}\n')
    (work / "bench.jsonl").write_text('{"question": "一道基准测试题目", "answer": "它的答案"}\n')
    (work / "bench2.jsonl").write_text('{"question": "另一道题目", "answer": "另一个答案"}\n')
    engine = {**dataclasses.asdict(EngineSpec(model=str(model))), "backend": "vllm", "dtype": "auto"}
    cfg = config.load(
        None,
        [
            f"run.dir={work / run}",
            "pipeline.stages=[filter,label,point,answer,rules]",
            "dedup.raw=true",
            *(f"{k}.engine.model={model}" for k in ("label", "point", "answer")),
            f"filter.tokenizer={model}",
            "filter.perplexity.scorer=lm",
            f"filter.perplexity.engine.model={model}",
            "filter.perplexity.thresholds=percentile",
            f"merge.decontaminate.benchmarks=[{work / 'bench.jsonl'}]",
        ],
    )
    cfg.filter.perplexity.engine = engine
    return cfg


def leaves(node: Any, prefix: str = "") -> Iterator[str]:
    """Every leaf key under ``node``: sections are walked, the first list item of a list of sections too,
    a plain dict (``pipeline.options``) is a leaf unless it holds keys (the scorer's ``engine``)."""
    items = enumerate(node[:1]) if isinstance(node, ListConfig) else ((k, None) for k in node)
    for k, _ in items:
        key = f"{prefix}{k}"
        child = node._get_node(k)
        if isinstance(child, ListConfig) and child._metadata.element_type not in (Any, None):
            element = child._metadata.element_type
            if dataclasses.is_dataclass(element):
                yield from leaves(child, key + ".")
                continue
        if isinstance(child, DictConfig) and (OmegaConf.get_type(child) is not dict or len(child)):
            yield from leaves(child, key + ".")
        else:
            yield key


def changed_value(cfg: DictConfig, key: str, work: Path) -> Any:
    """Another valid-looking value of ``key`` (its type's; a file where the hash reads one)."""
    if key == "filter.tokenizer":
        return str(work / "other-tokenizer.json")
    if key == "merge.decontaminate.benchmarks":
        return [*cfg.merge.decontaminate.benchmarks, str(work / "bench2.jsonl")]
    if key == "pipeline.stages":
        return [s for s in cfg.pipeline.stages if s != "point"]
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    child = node._get_node(name)
    value = child._value()
    if isinstance(child, ListConfig):
        element = child._metadata.element_type
        items = OmegaConf.to_container(child)
        if isinstance(element, type) and issubclass(element, enum.Enum):
            return items[::-1] if len(items) > 1 else [next(m for m in element if m not in items)]
        if element is float:
            return [items[0] + 1.0, *items[1:]]
        return [*items, "x"]
    if isinstance(child, DictConfig):
        keys = child._metadata.key_type  # an enum for keys from a closed set (train.seed_columns)
        k = next(iter(keys)).value if isinstance(keys, type) and issubclass(keys, enum.Enum) else "x"
        return {k: {}} if "resources" in key else {k: 1}
    if value is None or value == "???":
        ref = child._metadata.ref_type
        kind = next((t for t in typing.get_args(ref) if t is not type(None)), ref)
        return {int: 1, float: 0.5, bool: True}.get(kind, "x")
    if isinstance(value, enum.Enum):
        return next(m for m in type(value) if m != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.05 if value < 0.9 else value - 0.05
    return f"{value}-x"


# ------------------------------------------------------------------------------------ hashes per step
def step_hashes(cfg: DictConfig) -> dict[str, Any]:
    """The hashes each step's markers are checked against under ``cfg`` (stand-in shard files are made
    where the config puts shards; nothing runs)."""
    for c in cfg.corpora:
        for i in range(SHARDS_PER_CORPUS):
            part = shard_root(cfg) / str(c.name) / f"part-{i:05d}.jsonl.zst"
            part.parent.mkdir(parents=True, exist_ok=True)
            part.touch()
    run_dir = str(cfg.run.dir)
    out: dict[str, Any] = {"shard": {str(c.name): shard_config_hash(cfg, c) for c in cfg.corpora}}
    out["reshard"] = reshard_config_hash(cfg, list_shards(Path(cfg.reshard.input)))
    if cfg.dedup.raw:
        out["dedup.raw"] = [
            u.config_hash for p in dedup_phases(raw_job(cfg), raw_dedup_hash(cfg)) for u in p.units
        ]
    if needs_calibration(cfg):
        out["calibration"] = calibration_key(cfg)
    grid = plan_grid(cfg)
    for stage in grid.stages:
        out[stage] = [
            (u.config_hash, [os.path.relpath(t.input, run_dir) for t in u.shards]) for u in grid.units[stage]
        ]
    if grid.stages:
        last = grid.stages[-1]
        shards = [Path(t.output) for u in grid.units[last] for t in u.shards]
        kind = "pairs" if makes_pairs(cfg.pipeline.stages[-1]) else "text"
        inputs = MergeInputs(kind, shards, stage_dir(cfg, last), merge_upstream(cfg), [])
        out["merge"] = [u.config_hash for p in merge_plan(cfg, inputs).phases() for u in p.units]
    return out


def reruns(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The steps of ``before`` whose hashes differ in ``after`` (a step gone from ``after`` does not run)."""
    return [s for s in STEPS if s in before and s in after and before[s] != after[s]]


@dataclasses.dataclass(frozen=True)
class Row:
    key: str  # as the docs write it: corpora[i].name
    reruns: tuple[str, ...]
    why: str


def table(work: Path | None = None) -> list[Row]:
    """One row per leaf key of the schema, in schema order."""
    if work is None:
        with tempfile.TemporaryDirectory() as tmp:
            return table(Path(tmp))
    base = base_config(work)
    before = step_hashes(base)
    rows = []
    for i, key in enumerate(leaves(base)):
        # each change in a run folder of its own (the stand-in shards of one do not meet another's); a
        # change of run.dir is that alone, as `run.dir=...` moves the folders the config puts under it
        cfg = base_config(work, f"run-{i}")
        if key != "run.dir":
            value = changed_value(cfg, key, work)
            for k in (key, *FOLLOWERS.get(key, ())):
                OmegaConf.update(cfg, k, value, merge=False)
        after = step_hashes(cfg)
        why = NOTES.get(key) or next((w for p, w in NOT_OUTPUT.items() if fnmatchcase(key, p)), "")
        rows.append(Row(key.replace("corpora.0.", "corpora[i]."), tuple(reruns(before, after)), why))
    return rows


def render(rows: list[Row]) -> str:
    lines = ["| key | a change re-runs | why |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r.key}` | {', '.join(r.reruns) or 'nothing'} | {r.why} |")
    return "\n".join(lines) + "\n"


def updated(doc: str) -> str:
    return doc_block.replace_block(doc, BEGIN, END, render(table()))


if __name__ == "__main__":
    sys.exit(doc_block.main(DOC, updated, "tools/render_reruns.py", __doc__.splitlines()[0]))
