"""Where the config's files are: relative paths found under the working dir, else under the repo, and made
absolute at load so a command works from any working directory and a run's saved config names the same files
wherever it is read (issue 12)."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent.parent

# Files the run reads, and folders it writes: made absolute when the config loads
INPUT_PATHS = (
    "label.engine.model",
    "point.engine.model",
    "answer.engine.model",
    "label.template",
    "point.template",
    "answer.template",
    "filter.tokenizer",
    "filter.perplexity.engine.model",
    "filter.perplexity.kenlm_model",
    "train.base_model",
    "train.chat_template",
)
OUTPUT_PATHS = ("shard.output", "reshard.input", "reshard.output", "train.output", "merge.output")
_GLOB = re.compile(r"[*?[]")


def find_file(path: str | Path) -> Path:
    """A config's relative path: under the working dir if it is there, else under the repo."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or not (REPO_ROOT / p).exists():
        return p
    return REPO_ROOT / p


def input_path(path: str) -> str:
    """An input path as an absolute one: found under the working dir, else under the repo (as
    :func:`find_file`; a glob: where it matches). A path found in neither stays as written, so an error names
    it as the user wrote it (and a hub id stays recognisable)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    for root in (Path.cwd(), REPO_ROOT):
        found = glob.glob(str(root / p), recursive=True) if _GLOB.search(path) else (root / p).exists()
        if found:
            return os.path.normpath(root / p)
    return path


def absolute_paths(cfg: DictConfig) -> None:
    """Make the config's input paths (:data:`INPUT_PATHS`, ``corpora[i].paths``, ``train.seed_data``,
    ``merge.decontaminate.benchmarks``) and
    output folders (:data:`OUTPUT_PATHS`, relative to the working dir) absolute, in place."""
    for key in INPUT_PATHS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, str) and value:
            OmegaConf.update(cfg, key, input_path(value))
    for key in OUTPUT_PATHS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, str) and value:
            OmegaConf.update(cfg, key, os.path.abspath(os.path.expanduser(value)))
    lists = [c.paths for c in cfg.corpora if not OmegaConf.is_missing(c, "paths")]
    for paths in [*lists, cfg.train.seed_data, cfg.merge.decontaminate.benchmarks]:
        for i, value in enumerate(paths):
            paths[i] = input_path(str(value))
