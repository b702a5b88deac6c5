"""The stages ``pipeline.stages`` may name: Kun's, by name, and your own, as "package.module:Class"."""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from kun_hpc.config import ConfigError, find_file
from kun_hpc.io.layout import stage_key
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
        raise ConfigError(
            f"config key 'pipeline.stages': unknown stage {name!r}; known: {sorted(STAGES)} "
            "or 'package.module:Class'"
        )
    module, _, cls = target.partition(":")
    try:
        found = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"config key 'pipeline.stages': cannot load stage {name!r}: {e}") from None
    if not (isinstance(found, type) and issubclass(found, Stage)):
        raise ConfigError(f"config key 'pipeline.stages': {name!r} is not a Stage subclass")
    return found


def make_stage(name: str, cfg: DictConfig) -> Stage:
    cls = stage_class(name)
    options = cfg.pipeline.options.get(stage_key(name), {})
    section = cfg.get(stage_key(name)) if stage_key(name) in cfg else None
    return cls(cfg, section if section else dict(options))


def check_model_folders(cfg: DictConfig) -> None:
    """Before submitting: every model folder a stage of the run loads (:meth:`Stage.model_keys`: an LLM
    stage's own, and the Answer model whose tokenizer the filter and label count the Answer budget with) is a
    local model folder; a typo would otherwise fail each of the stage's tasks, on Slurm after each was given
    its GPUs. Raises :class:`ConfigError` naming the key."""
    stages = [stage_key(name) for name in cfg.pipeline.stages]
    keys = dict.fromkeys(k for name in cfg.pipeline.stages for k in stage_class(name).model_keys(cfg))
    # a stage's own model in the order of the stages, then the models loaded for their tokenizers
    for key in sorted(keys, key=lambda k: stages.index(k) if k in stages else len(stages)):
        path = find_file(cfg[key].engine.model)
        if not (path / "config.json").is_file():
            why = ""
            if key not in stages:  # loaded without running its stage: the Answer model, for its tokenizer
                why = f" (the {key} prompt budget is counted with its tokenizer; {key}.max_prompt_tokens=null"
                why += " turns that off)"
            raise ConfigError(
                f"config key '{key}.engine.model': {path} is not a local model folder (no config.json); "
                f"models load from local folders only{why}"
            )


def preflight(cfg: DictConfig) -> None:
    """Once per run, before any unit is submitted: :func:`check_model_folders`, then each stage's
    :meth:`~kun_hpc.stages.base.Stage.preflight` (the filter's OpenCC check), so that what would fail every
    unit fails here once."""
    check_model_folders(cfg)
    for name in cfg.pipeline.stages:
        stage_class(name).preflight(cfg)
