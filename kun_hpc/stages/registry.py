"""The stages ``pipeline.stages`` may name: Kun's, by name, and your own, as "package.module:Class"."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Sequence

from omegaconf import MISSING, DictConfig, OmegaConf

from kun_hpc.config import LLM_STAGES, TRAIN_TASKS, ConfigError, find_file
from kun_hpc.config.checks import Problems, attempt, check, fail
from kun_hpc.inference.prompt import PromptTemplate
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
    """The class a ``pipeline.stages`` entry names: one of :data:`STAGES`, or ``package.module:Class``
    imported from where Python finds it, else from ``pipeline.import_paths`` (the working directory by
    default: :func:`kun_hpc.config.paths.use_import_paths` puts them on ``sys.path`` when the config loads),
    without ``PYTHONPATH=.`` (issue 16). Raises :class:`ConfigError` when it is unknown, cannot be imported,
    or is no :class:`Stage`."""
    target = STAGES.get(name, name)
    if ":" not in target:
        close = difflib.get_close_matches(name, STAGES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"config key 'pipeline.stages': unknown stage {name!r}{hint}; known: {sorted(STAGES)} "
            "or 'package.module:Class'"
        )
    module, _, cls = target.partition(":")
    try:
        found = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"config key 'pipeline.stages': cannot load stage {name!r}: {e} (your stages are imported from "
            "the installed packages, then pipeline.import_paths: the working directory by default)"
        ) from None
    if not (isinstance(found, type) and issubclass(found, Stage)):
        raise ConfigError(f"config key 'pipeline.stages': {name!r} is not a Stage subclass")
    return found


def stage_classes(names: Sequence[str]) -> list[type[Stage]]:
    """The class of each stage name that resolves (:func:`stage_class`); each that does not is a problem,
    collected under :meth:`~kun_hpc.config.checks.Problems.collect` (else raised)."""
    return [c for c in (attempt(stage_class, name) for name in names) if c is not None]


def make_stage(name: str, cfg: DictConfig) -> Stage:
    cls = stage_class(name)
    options = cfg.pipeline.options.get(stage_key(name), {})
    section = cfg.get(stage_key(name)) if stage_key(name) in cfg else None
    return cls(cfg, section if section else dict(options))


def check_model_folders(cfg: DictConfig, keys: Sequence[str], stages: Sequence[str] = ()) -> None:
    """Every model folder a stage of the run loads (``keys``: each stage's :meth:`Stage.model_keys`: an
    LLM stage's own, the Answer model whose tokenizer the filter and label count the Answer budget with, the
    filter's perplexity LM) is a local model folder; a typo would otherwise fail each of the stage's tasks,
    on Slurm after each was given its GPUs. ``stages``: the sections of the stages that run (a model loaded
    for its tokenizer only is said so). Each failure is collected under :meth:`Problems.collect`, else raised
    as :class:`ConfigError` naming the key."""
    for key in keys:
        model = OmegaConf.select(cfg, f"{key}.engine.model", default=None, throw_on_missing=False)
        if not model or model == MISSING:  # unset: the config checks say so (validate_kun, validate_filter)
            continue
        path = find_file(model)
        why = ""
        if key in LLM_STAGES and key not in stages:  # the Answer model, loaded for its tokenizer only
            why = f" (the {key} prompt budget is counted with its tokenizer; {key}.max_prompt_tokens=null"
            why += " turns that off)"
        if path.name == "model" and path.parent.name in TRAIN_TASKS:  # train.output's final model folder
            why += f"; `kun-hpc train {path.parent.name}` with this config writes it: train it first"
        if not (path / "config.json").is_file():
            fail(
                f"config key '{key}.engine.model': {path} is not a local model folder (no config.json); "
                f"models load from local folders only{why}"
            )


def check_template(cfg: DictConfig, key: str) -> None:
    """The prompt template of the LLM stage section ``key`` as its units will load it: found, unchanged
    since the run was configured (``<key>.template_sha256``), with exactly the placeholders of its stage.
    Raises :class:`ConfigError` naming ``<key>.template``."""
    section = cfg[key]
    path = find_file(section.template)
    if not path.is_file():  # worded as validate_kun words it for a stage in the pipeline: listed once
        check(False, f"{key}.template", "prompt template file not found", section.template)
        return
    try:
        PromptTemplate.load(path, str(section.template_sha256 or ""), stage_class(key).needs)
    except (OSError, RuntimeError, ValueError) as e:
        raise ConfigError(f"config key '{key}.template': {e}") from None


def preflight(cfg: DictConfig, problems: Problems | None = None, stages: Sequence[str] | None = None) -> None:
    """Before a command does any work with ``stages`` (default ``pipeline.stages``): what would fail each
    of their units, checked once in the submitting process, every problem found (issue 16).

    In order: each stage name is Kun's or a ``package.module:Class`` that imports and is a
    :class:`~kun_hpc.stages.base.Stage`; each model folder a stage loads (:func:`check_model_folders`); each
    prompt template it renders (:func:`check_template`: the LLM stages' own, and the Answer template the
    filter and label budget with); each stage's own :meth:`~kun_hpc.stages.base.Stage.preflight` (the
    filter's tokenizer, KenLM model and OpenCC check). The problems are added to ``problems`` (which may
    hold the config's own: :func:`kun_hpc.config.load`), else raised as one :class:`ConfigError`."""
    found = problems if problems is not None else Problems()
    names = list(cfg.pipeline.stages if stages is None else stages)
    sections = [stage_key(name) for name in names]
    with found.collect():
        classes = stage_classes(names)
        loaded = [k for c in classes for k in (attempt(c.model_keys, cfg) or ())]
        # a stage's own model in the order of the stages, then the models loaded for their tokenizers
        keys = sorted(dict.fromkeys(loaded), key=lambda k: sections.index(k) if k in sections else len(names))
        check_model_folders(cfg, keys, sections)
        for key in (k for k in keys if k in LLM_STAGES):
            attempt(check_template, cfg, key)
        for c in classes:
            attempt(c.preflight, cfg)
    if problems is None:
        found.raise_any()
