"""The ``filter`` stage: raw documents -> self-contained units of <= ``filter.max_tokens`` tokens, filtered.

Each input document fans out into units (see :mod:`kun_hpc.filtering.chain`): kept units go to the output
shard, rejected ones to the rejected file with their reason, and the unit's marker counts documents and units
(:mod:`kun_hpc.core.counts`). It runs on every executor, chunked and resumable like every stage.

Percentile thresholds and the cluster
-------------------------------------
With ``filter.perplexity.thresholds: percentile`` the head/middle/tail cut-offs must be the same for every
shard, so they are computed once per run, before any filter unit starts, by ``kun-hpc filter-calibrate``
(``kun-hpc run`` calls it itself when the run has no valid calibration): one job on the configured executor
(the ``filter`` stage's Slurm resources) takes a deterministic sample -- the first
``perplexity.sample_docs_per_shard`` documents of up to ``perplexity.sample_max_shards`` shards spread evenly
over the sorted list of all shards of all corpora -- runs it through the same cleaning, segmentation and cheap
rules, scores the surviving units with the configured scorer, and writes the two percentiles of their
perplexities to ``<run>/filter/calibration.json``, under a key hashing what decides them
(:func:`calibration_key`: the ``filter`` settings, the tokenizer and the shards). Filter units read that
file and refuse to start when it is missing or was made under a different key, so the cut-offs of every unit
of a run are the same numbers, computed from one sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from omegaconf import DictConfig, OmegaConf

from kun_hpc import config
from kun_hpc.config import ConfigError, config_hash
from kun_hpc.config.checks import attempt, check
from kun_hpc.config.outputs import output_values
from kun_hpc.config.paths import filter_tokenizer
from kun_hpc.core.hashing import file_sha256
from kun_hpc.core.records import Rejected
from kun_hpc.filtering.buckets import Cutoffs, percentile_cutoffs
from kun_hpc.filtering.chain import FilterChain
from kun_hpc.filtering.tokens import TokenizerNotFound, tokenizer_file
from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.io.layout import shard_root
from kun_hpc.io.shards import list_shards, read_shard
from kun_hpc.stages.answer import AnswerBudget
from kun_hpc.stages.answer import configured as budgeted
from kun_hpc.stages.base import Stage
from kun_hpc.stages.shard import shard_config_hash
from kun_hpc.stages.steps import Array, Step
from kun_hpc.text_libraries import t2s_converter

CALIBRATION = Path("filter") / "calibration.json"


class FilterStage(Stage):
    name = "filter"

    def setup(self) -> None:
        self.chain = make_chain(self.cfg, stage_cutoffs(self.cfg))
        self.chain.load_scorer()

    def process(self, batch: list[dict]) -> list[list[dict | Rejected]]:
        return self.chain.process(batch)

    def close(self) -> None:
        chain = getattr(self, "chain", None)
        if chain is not None:
            chain.close()

    def provenance(self) -> dict:
        info = self.chain.info()
        keys = ("tokenizer", "tokenizers", "max_tokens", "answer_budget", "clean", "perplexity", "cutoffs")
        return {k: info[k] for k in keys if k in info}

    @classmethod
    def preflight(cls, cfg: DictConfig) -> None:
        """The tokenizer units are counted with and the KenLM model (each a problem of its own under
        :meth:`~kun_hpc.config.checks.Problems.collect`), then OpenCC: a release that corrupts text fails here
        once, before any unit is submitted."""
        attempt(tokenizer_path, cfg)
        p = cfg.filter.perplexity
        if p.scorer == "kenlm" and p.kenlm_model:
            why = "no such file (build one with `python -m kun_hpc.filtering.ngram`)"
            check(Path(p.kenlm_model).is_file(), "filter.perplexity.kenlm_model", why, p.kenlm_model)
        if cfg.filter.clean.t2s:
            t2s_converter(cfg.filter.clean.opencc_config)

    @classmethod
    def prepare(cls, cfg: DictConfig) -> Step:
        return calibration(cfg)

    @classmethod
    def model_keys(cls, cfg: DictConfig) -> tuple[str, ...]:
        lm = ("filter.perplexity",) if cfg.filter.perplexity.scorer == "lm" else ()  # its engine.model
        answer = ("answer",) if budgeted(cfg) else ()  # units are cut to the Answer prompt with its tokenizer
        return (*lm, *answer)

    @classmethod
    def hash_inputs(cls, cfg: DictConfig) -> dict:
        return {"tokenizer": tokenizer_sha256(cfg), **AnswerBudget.hash_inputs(cfg)}


def tokenizer_path(cfg: DictConfig) -> str:
    """``filter.tokenizer``, or the Label model's folder (``label.engine.model``) when that is None; a
    ConfigError when neither is set, the tokenizer.json is missing, or it changed since the config was saved
    (``filter.tokenizer_sha256``)."""
    path = filter_tokenizer(cfg)
    if path is None:
        raise ConfigError(
            "config key 'filter.tokenizer': not set, and neither is 'label.engine.model' to take it from "
            "(units are counted with the Label model's tokenizer)"
        )
    try:
        found = tokenizer_file(path)
    except TokenizerNotFound as e:
        raise ConfigError(f"config key 'filter.tokenizer': {e}") from None
    if cfg.filter.tokenizer_sha256 and file_sha256(found) != cfg.filter.tokenizer_sha256:
        raise ConfigError(
            f"config key 'filter.tokenizer': {found} changed since this run's config was saved (sha256 "
            f"{cfg.filter.tokenizer_sha256[:12]}...); run kun-hpc run from your preset again to re-run the "
            "filter with it"
        )
    return path


def tokenizer_sha256(cfg: DictConfig) -> str:
    """The content hash of the tokenizer.json the filter counts with, as recorded at load
    (``filter.tokenizer_sha256``): a tokenizer edited in place re-runs the filter, one moved or copied
    elsewhere does not, and reading a run's hashes needs no tokenizer file. Computed from the file (a
    ConfigError when it is missing) when the config was built without one."""
    return cfg.filter.tokenizer_sha256 or file_sha256(tokenizer_file(tokenizer_path(cfg)))


def make_chain(cfg: DictConfig, cutoffs: Cutoffs | None = None) -> FilterChain:
    """The run's filter chain: its tokenizer, and the Answer stage's budget when the run has one."""
    return FilterChain(
        cfg.filter, cutoffs, tokenizer=tokenizer_path(cfg), budget=AnswerBudget.from_config(cfg)
    )


# ------------------------------------------------------------------------------------------ calibration
def needs_calibration(cfg: DictConfig) -> bool:
    p = cfg.filter.perplexity
    return p.scorer != "none" and p.thresholds == "percentile"


def calibration_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CALIBRATION


def calibration_key(cfg: DictConfig) -> str:
    """What the cut-offs depend on: the filter's output keys (:mod:`kun_hpc.config.outputs`) but those the
    sample never meets (the buckets dropped, the absolute cut-offs), the tokenizer's content and the
    shards' records (:func:`~kun_hpc.stages.shard.shard_config_hash` of each corpus)."""
    section = output_values(cfg.filter, "filter")
    for unused in ("drop", "cutoffs"):
        section["perplexity"].pop(unused)
    parts = {
        "filter": section,
        "shards": {str(c.name): shard_config_hash(cfg, c) for c in cfg.corpora},
        "tokenizer": tokenizer_sha256(cfg),
        **AnswerBudget.hash_inputs(cfg),  # the budget decides where units are cut
    }
    # sorted keys: the config a worker reloads from config.yaml has its dicts' keys sorted
    return config_hash(OmegaConf.create(parts))


def read_calibration(cfg: DictConfig) -> dict | None:
    """The run's calibration if it exists and matches the current config, else None."""
    try:
        data = orjson.loads(calibration_path(cfg.run.dir).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return data if data.get("key") == calibration_key(cfg) else None


def stage_cutoffs(cfg: DictConfig) -> Cutoffs | None:
    """The cut-offs filter units use: None without a scorer, the config's when absolute, else the run's
    calibration (which must exist)."""
    p = cfg.filter.perplexity
    if p.scorer == "none":
        return None
    if p.thresholds == "absolute":
        return Cutoffs(float(p.cutoffs[0]), float(p.cutoffs[1]))
    data = read_calibration(cfg)
    if data is None:
        raise ConfigError(
            f"config key 'filter.perplexity.thresholds' is 'percentile' but {calibration_path(cfg.run.dir)} "
            "is missing or was made under another config: run `kun-hpc filter-calibrate` with the same "
            "config first (`kun-hpc run` does it itself)"
        )
    return Cutoffs(**data["cutoffs"])


@dataclass(frozen=True)
class CalibrationTask:
    run_dir: str

    @property
    def unit(self) -> str:
        return "filter-calibrate"


def sample_shards(shards: list[Path], k: int) -> list[Path]:
    """Up to ``k`` shards spread evenly over the sorted list (first and last included)."""
    shards = sorted(shards)
    if len(shards) <= k:
        return shards
    if k == 1:
        return shards[:1]
    return [shards[round(i * (len(shards) - 1) / (k - 1))] for i in range(k)]


def calibrate(task: CalibrationTask) -> dict:
    """Compute the percentile cut-offs from the run's sample and write them (runs as a job)."""
    cfg = config.load_run(task.run_dir)
    p = cfg.filter.perplexity
    started = time.time()
    shards = sample_shards(list_shards(shard_root(cfg)), p.sample_max_shards)
    if not shards:
        raise FileNotFoundError(f"filter calibration: no shards under {shard_root(cfg)}")
    docs: list[dict] = []
    for path in shards:
        for n, rec in enumerate(read_shard(path)):
            if n >= p.sample_docs_per_shard:
                break
            docs.append(rec)
    chain = make_chain(cfg)
    try:
        texts = [u["text"] for units in chain.cheap(docs) for u in units if type(u) is dict]
        scorer = chain.load_scorer()
        assert scorer is not None
        scores = scorer.score(texts)
        info = scorer.info()
    finally:
        chain.close()
    cutoffs = percentile_cutoffs(scores, list(p.percentiles))
    data = {
        "key": calibration_key(cfg),
        "cutoffs": cutoffs.to_dict(),
        "percentiles": list(p.percentiles),
        "scorer": info,
        "sample": {
            "shards": [str(s) for s in shards],
            "docs": len(docs),
            "units": len(texts),
            "docs_per_shard": p.sample_docs_per_shard,
        },
        "seconds": round(time.time() - started, 3),
    }
    atomic_write_bytes(calibration_path(task.run_dir), orjson.dumps(data, option=orjson.OPT_INDENT_2))
    return data


def calibration(cfg: DictConfig, force: bool = False) -> Step:
    """The run's calibration (a :mod:`~kun_hpc.stages.steps` step: one job, :func:`calibrate`), computed
    when missing, stale or ``force``d; None when the filter needs none. Raises RuntimeError when it
    failed."""
    if not needs_calibration(cfg):
        return None
    if not force:
        data = read_calibration(cfg)
        if data is not None:
            return data
    (outcome,) = yield Array(
        calibrate, [CalibrationTask(str(cfg.run.dir))], "filter calibrate", "filter-calibrate"
    )
    if not outcome.ok:
        where = f" (log: {outcome.log})" if outcome.log else ""
        raise RuntimeError(f"filter calibration failed: {outcome.error.strip()}{where}")
    return outcome.result
