"""Where the config's files are, made absolute at load so that a command works from any working directory
and a run's saved config names the same files wherever it is read (issues 12 and 16).

A relative input path is found under the working dir, else under the repo (a checkout), else under the
installed package, which ships ``configs/`` (presets, prompt templates) as package data: so the defaults
``configs/prompts/label.txt`` and ``configs/default.yaml`` name the bundled files in a checkout, an editable
install and a wheel alike. A path found nowhere is made absolute under the working dir (where the user
meant it), so every path of a saved config is absolute; the only value kept as written is a model that
looks like a Hugging Face hub id (``Qwen/Qwen2-7B-Instruct``), which the engine then refuses by that name.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the kun_hpc package: configs/ is beside its modules
CONFIGS = PACKAGE_ROOT / "configs"  # presets, corpora, profiles, prompts (the repo's configs/ links here)
REPO_ROOT = PACKAGE_ROOT.parent  # a checkout's root; in a wheel install, site-packages (holds no inputs)

# Files the run reads, and folders it writes: made absolute when the config loads
MODEL_PATHS = (
    "label.engine.model",
    "point.engine.model",
    "answer.engine.model",
    "filter.perplexity.engine.model",
    "train.base_model",
)
INPUT_PATHS = (
    *MODEL_PATHS,
    "label.template",
    "point.template",
    "answer.template",
    "filter.tokenizer",
    "filter.perplexity.kenlm_model",
    "train.chat_template",
)
OUTPUT_PATHS = ("shard.output", "reshard.input", "reshard.output", "train.output", "merge.output")
_GLOB = re.compile(r"[*?[]")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(text: str) -> bool:
    """``org/name`` as a Hugging Face hub id is spelt (kun-hpc never downloads one: the engine refuses it)."""
    return bool(_HUB_ID.match(text)) and not text.startswith((".", "~"))


def search_roots() -> tuple[Path, ...]:
    """Where a relative input path is looked for, in order: the working dir, the repo when this is a
    checkout (its ``shards/sample``, ``models/``), the package (its ``configs/``)."""
    checkout = (REPO_ROOT / "pyproject.toml").is_file()
    return (Path.cwd(), REPO_ROOT, PACKAGE_ROOT) if checkout else (Path.cwd(), PACKAGE_ROOT)


def _found(root: Path, path: str) -> bool:
    if _GLOB.search(path):
        return bool(glob.glob(str(root / path), recursive=True))
    return (root / path).exists()


def find_file(path: str | Path) -> Path:
    """A config's path as the file it names: absolute as written; relative: the first of
    :func:`search_roots` that holds it (unchanged when none does)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    return next((root / p for root in search_roots() if (root / p).exists()), p)


def input_path(path: str, model: bool = False) -> str:
    """An input path as an absolute one: under the first of :func:`search_roots` where it exists (a glob:
    where it matches), else under the working dir. ``model``: a path found nowhere that looks like a hub id
    stays as written, so the engine's error names it as one."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return os.path.normpath(p)
    for root in search_roots():
        if _found(root, str(p)):
            return os.path.normpath(root / p)
    if model and looks_like_hub_id(path):
        return path
    return os.path.normpath(Path.cwd() / p)


def find_preset(preset: str | Path, folder: Path | None = None) -> Path:
    """The YAML file a preset names: a path (relative: under ``folder``, the including preset's, else as
    :func:`find_file`), else a bundled one, ``demo`` or ``profiles/cpu.yaml`` for ``configs/demo.yaml`` or
    ``configs/profiles/cpu.yaml`` (issue 16: so with a wheel install too). The first candidate when none
    exists (the caller says it is not found)."""
    p = Path(preset).expanduser()
    candidates = [folder / p if folder is not None else find_file(p)]
    if not p.is_absolute():
        candidates += [CONFIGS / p, CONFIGS / f"{p}.yaml"]
    return next((c for c in candidates if c.is_file()), candidates[0])


def absolute_paths(cfg: DictConfig) -> None:
    """Make the config's input paths (:data:`INPUT_PATHS`, ``corpora[i].paths``, ``train.seed_data``,
    ``merge.decontaminate.benchmarks``) and output folders (:data:`OUTPUT_PATHS`, relative to the working
    dir) absolute, in place (see the module docstring for where a relative one is found)."""
    for key in INPUT_PATHS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, str) and value:
            OmegaConf.update(cfg, key, input_path(value, model=key in MODEL_PATHS))
    for key in OUTPUT_PATHS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, str) and value:
            OmegaConf.update(cfg, key, os.path.abspath(os.path.expanduser(value)))
    lists = [c.paths for c in cfg.corpora if not OmegaConf.is_missing(c, "paths")]
    for paths in [*lists, cfg.train.seed_data, cfg.merge.decontaminate.benchmarks]:
        for i, value in enumerate(paths):
            paths[i] = input_path(str(value))


class TokenizerNotFound(FileNotFoundError):
    """``filter.tokenizer`` (or the Label model folder it defaults to) holds no tokenizer.json."""


def tokenizer_file(path: str | Path) -> Path:
    """``path`` itself when it is a tokenizer.json, else ``path/tokenizer.json``; TokenizerNotFound when
    neither exists."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if (p / "tokenizer.json").is_file():
        return p / "tokenizer.json"
    if p.is_dir():
        raise TokenizerNotFound(
            f"{p} has no tokenizer.json: the filter needs the model's fast (Rust) tokenizer file"
        )
    raise TokenizerNotFound(f"tokenizer {str(p)!r} does not exist (a model folder or a tokenizer.json)")


def filter_tokenizer(cfg: DictConfig) -> str | None:
    """What the filter counts tokens with: ``filter.tokenizer``, else the Label model's folder
    (``label.engine.model``); None when neither is set."""
    if cfg.filter.tokenizer:
        return str(cfg.filter.tokenizer)
    if "label" in cfg and not OmegaConf.is_missing(cfg.label.engine, "model") and cfg.label.engine.model:
        return str(cfg.label.engine.model)
    return None


def use_import_paths(cfg: DictConfig) -> None:
    """Your own stages (``package.module:Class`` in ``pipeline.stages``) import from
    ``pipeline.import_paths``: the working directory when it is empty, saved absolute, and appended to
    ``sys.path`` (after the installed packages, which they never hide) wherever the config is loaded, so a
    run's workers, ``status`` and ``logs`` find them from any directory without ``PYTHONPATH`` (issue 16).
    ``sys.path`` is the process's: one that loads several runs' configs finds a module name in the first
    run's folders first (one command loads one run)."""
    p = cfg.pipeline
    if not p.import_paths and any(":" in str(s) for s in p.stages):
        p.import_paths = [os.getcwd()]
    p.import_paths = [os.path.abspath(os.path.expanduser(str(d))) for d in p.import_paths]
    sys.path.extend(d for d in p.import_paths if d not in sys.path)
