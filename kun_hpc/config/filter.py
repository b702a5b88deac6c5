"""The ``filter`` section: cleaning, the cheap rules, units and the perplexity buckets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kun_hpc.config.checks import check
from kun_hpc.config.choices import BUCKETS, PerplexityBucket, PerplexityScorer, PerplexityThresholds
from kun_hpc.config.engine import EngineSpec
from kun_hpc.core.errors import ConfigError

__all__ = ["FilterCleanConfig", "FilterConfig", "FilterRulesConfig", "PerplexityConfig", "validate_filter"]


@dataclass
class FilterCleanConfig:
    fix_unicode: bool = True  # ftfy (curly quotes and full-width punctuation are kept)
    t2s: bool = False  # OpenCC Traditional -> Simplified
    opencc_config: str = "t2s"  # OpenCC config name: t2s, tw2s, hk2s, tw2sp, ...


@dataclass
class FilterRulesConfig:
    # the cheap rules, in this order after too_short (filter.min_tokens); 0 (ratio) or 1 (fraction) disables
    min_cjk_ratio: float = 0.3  # low_cjk: Han characters / non-space characters
    max_dup_line_frac: float = 0.3  # dup_lines: characters in repeated lines / characters
    dup_ngram_n: int = 10  # n of the character n-grams of dup_ngrams
    max_dup_ngram_frac: float = 0.3  # dup_ngrams: characters in repeated character n-grams / characters


@dataclass
class PerplexityConfig:
    scorer: PerplexityScorer = PerplexityScorer.none  # none | lm (vLLM / transformers engine) | kenlm
    engine: dict[str, Any] = field(default_factory=dict)  # lm: EngineSpec fields (model, backend, ...)
    prefix: str = ""  # lm: prepended to each unit (e.g. "<|endoftext|>" so the first token is scored too)
    kenlm_model: str | None = None  # kenlm: an ARPA/binary model (python -m kun_hpc.filtering.ngram)
    batch_size: int = 1024  # units per scorer call
    # absolute (cutoffs) | percentile (percentiles of a calibration sample)
    thresholds: PerplexityThresholds = PerplexityThresholds.percentile
    cutoffs: list[float] = field(default_factory=lambda: [100.0, 1000.0])  # absolute: [head_max, middle_max]
    percentiles: list[float] = field(default_factory=lambda: [33.3, 66.7])  # percentile: [head, tail] bounds
    # buckets rejected as ppl_<bucket>
    drop: list[PerplexityBucket] = field(default_factory=lambda: [PerplexityBucket.tail])
    sample_docs_per_shard: int = 200  # calibration sample (kun-hpc filter-calibrate)
    sample_max_shards: int = 64  # ... of at most this many shards, spread evenly over all shards


@dataclass
class FilterConfig:
    # the Label model's tokenizer: a model folder (its tokenizer.json) or a tokenizer.json; None: the folder
    # of label.engine.model
    tokenizer: str | None = None
    # filled from the tokenizer.json at load: editing it re-runs the filter, moving it does not
    tokenizer_sha256: str = ""
    max_tokens: int = 512  # a unit holds at most this many tokens (Kun: 512); longer: too_long
    min_tokens: int = 16  # too_short below this
    clean: FilterCleanConfig = field(default_factory=FilterCleanConfig)
    rules: FilterRulesConfig = field(default_factory=FilterRulesConfig)
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)


def validate_filter(f: DictConfig) -> None:
    """The ``filter`` section; the perplexity scorer, thresholds and buckets are checked at load."""
    check(f.max_tokens >= 1, "filter.max_tokens", "must be >= 1", f.max_tokens)
    check(1 <= f.min_tokens <= f.max_tokens, "filter.min_tokens", "must be in 1..max_tokens", f.min_tokens)
    r = f.rules
    for key in ("min_cjk_ratio", "max_dup_line_frac", "max_dup_ngram_frac"):
        check(0 <= r[key] <= 1, f"filter.rules.{key}", "must be in [0, 1]", r[key])
    check(r.dup_ngram_n >= 1, "filter.rules.dup_ngram_n", "must be >= 1", r.dup_ngram_n)
    p = f.perplexity
    for key in ("batch_size", "sample_docs_per_shard", "sample_max_shards"):
        check(p[key] >= 1, f"filter.perplexity.{key}", "must be >= 1", p[key])
    drop = list(p.drop)
    check(len(set(drop)) < len(BUCKETS), "filter.perplexity.drop", f"must list some of {BUCKETS}, not all",
          drop)  # fmt: skip
    cut = list(p.cutoffs)
    check(len(cut) == 2 and 0 < cut[0] <= cut[1], "filter.perplexity.cutoffs",
          "must be [head_max, middle_max] with 0 < head_max <= middle_max", cut)  # fmt: skip
    pct = list(p.percentiles)
    check(len(pct) == 2 and 0 <= pct[0] <= pct[1] <= 100, "filter.perplexity.percentiles",
          "must be [head, tail] with 0 <= head <= tail <= 100", pct)  # fmt: skip
    if p.scorer == "lm":
        engine = OmegaConf.to_container(p.engine, resolve=True)
        check(bool(engine.get("model")), "filter.perplexity.engine.model", "the lm scorer needs one", None)
        try:
            EngineSpec.from_dict(engine)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config key 'filter.perplexity.engine': {e}") from None
    if p.scorer == "kenlm":
        check(bool(p.kenlm_model), "filter.perplexity.kenlm_model", "the kenlm scorer needs one", None)
