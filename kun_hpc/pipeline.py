"""The whole data flow in one place.

::

    native corpus files --shard--> <run>/shards/<corpus>/part-XXXXX.jsonl.zst   (kun_hpc/stages/shard.py)
    [dedup.raw: shards --exact + MinHash dedup across all shards--> <run>/dedup_raw/<corpus>/...]
    shards --stage 1--> <run>/stages/<stage 1>/<corpus>/part-XXXXX.jsonl.zst  --stage 2--> ...  --> merge

The per-shard stages are listed in ``pipeline.stages`` (in Kun: filter, label, point, answer, rules).
Shard i of a stage is made from shard i of the stage before, so the grid is a set of chains, one per
group of ``pipeline.shards_per_task`` shards: on Slurm, unit g of stage k+1 starts as soon as unit g of
stage k succeeded (``--dependency=aftercorr``), not when the whole stage is done. Every unit writes a
completion marker ``<run>/done/<stage>/<unit>.json``; a re-run submits only units without a valid one
(see :mod:`kun_hpc.cluster.grid`). The dedup steps (raw, and at merge) are global phases instead
(:mod:`kun_hpc.cluster.phases`, :mod:`kun_hpc.merge.dedup`); ``kun-hpc merge`` assembles the dataset and
its report (:mod:`kun_hpc.merge.assemble`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from omegaconf import DictConfig

from kun_hpc import config as config_mod
from kun_hpc.stages.base import Stage

# name -> "module:Class"; imported lazily so a CPU stage never imports vLLM.
STAGES: dict[str, str] = {
    "filter": "kun_hpc.stages.filter:FilterStage",
    "label": "kun_hpc.stages.label:Label",
    "point": "kun_hpc.stages.point:Point",
    "answer": "kun_hpc.stages.answer:Answer",
    "rules": "kun_hpc.stages.rules:Rules",
}


def stage_class(name: str) -> type[Stage]:
    target = STAGES.get(name, name)
    if ":" not in target:
        raise config_mod.ConfigError(
            f"config key 'pipeline.stages': unknown stage {name!r}; known: {sorted(STAGES)} "
            "or 'package.module:Class'"
        )
    module, _, cls = target.partition(":")
    try:
        found = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise config_mod.ConfigError(
            f"config key 'pipeline.stages': cannot load stage {name!r}: {e}"
        ) from None
    if not (isinstance(found, type) and issubclass(found, Stage)):
        raise config_mod.ConfigError(f"config key 'pipeline.stages': {name!r} is not a Stage subclass")
    return found


def stage_key(name: str) -> str:
    """Folder-safe name of a stage: custom stages ("package.module:Class") go by their class name."""
    return name.rsplit(":", 1)[-1].lower()


def make_stage(name: str, cfg: DictConfig) -> Stage:
    cls = stage_class(name)
    options = cfg.pipeline.options.get(stage_key(name), {})
    section = cfg.get(stage_key(name)) if stage_key(name) in cfg else None
    return cls(cfg, section if section else dict(options))


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a run was submitted with (workers read it from the run folder)."""
    return config_mod.load(Path(run_dir) / "config.yaml")


def shard_root(cfg: DictConfig) -> Path:
    return Path(cfg.shard.output)


def stage_dir(cfg: DictConfig, stage: str) -> Path:
    return Path(cfg.run.dir) / "stages" / stage_key(stage)


def dedup_raw_dir(cfg: DictConfig) -> Path:
    """Where ``dedup.raw`` writes the deduplicated shards that the first stage then reads."""
    return Path(cfg.run.dir) / "dedup_raw"


def check_model_folders(cfg: DictConfig) -> None:
    """Before submitting: every LLM stage's model is a local model folder (a typo would otherwise fail each
    of the stage's tasks, on Slurm after each was given its GPUs)."""
    for name in cfg.pipeline.stages:
        key = stage_key(name)
        if key not in config_mod.LLM_STAGES:
            continue
        path = config_mod.find_file(cfg[key].engine.model)
        if not (path / "config.json").is_file():
            raise config_mod.ConfigError(
                f"config key '{key}.engine.model': {path} is not a local model folder (no config.json); "
                "models load from local folders only"
            )
