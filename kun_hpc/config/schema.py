"""The whole run config: one field per section, and :func:`validate`, the semantic checks of all of them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from omegaconf import DictConfig, OmegaConf

from kun_hpc.config.checks import Problems, check, dotted
from kun_hpc.config.corpora import CorpusConfig, validate_corpora
from kun_hpc.config.filter import FilterConfig, validate_filter
from kun_hpc.config.kun import LLM_STAGES, AnswerConfig, LabelConfig, PointConfig, RulesConfig, validate_kun
from kun_hpc.config.merge import DedupConfig, MergeConfig, validate_dedup, validate_merge
from kun_hpc.config.runtime import (
    ExecutorConfig,
    PipelineConfig,
    ReshardConfig,
    RunConfig,
    ShardConfig,
    validate_executor,
    validate_pipeline,
    validate_reshard,
    validate_shard,
)
from kun_hpc.config.train import TrainConfig, validate_train

__all__ = ["USED_BY_THEIR_STEP", "Config", "validate"]


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    corpora: list[CorpusConfig] = field(default_factory=list)
    shard: ShardConfig = field(default_factory=ShardConfig)
    reshard: ReshardConfig = field(default_factory=ReshardConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    point: PointConfig = field(default_factory=PointConfig)
    answer: AnswerConfig = field(default_factory=AnswerConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig())
    dedup: DedupConfig = field(default_factory=lambda: DedupConfig())
    merge: MergeConfig = field(default_factory=lambda: MergeConfig())


def validate(cfg: DictConfig, problems: Problems | None = None) -> None:
    """Semantic checks that types alone do not catch (the choices are enums OmegaConf checks as the config
    is built), each problem naming its key: every required key left unset (``???``, but an LLM stage's and
    ``train``'s, which only the step that uses them needs), then each section's checks. Every problem is
    found: added to ``problems``, or, without it, raised together as one :class:`ConfigError` (issue 16)."""
    found = problems if problems is not None else Problems()
    with found.collect():
        for key in sorted(OmegaConf.missing_keys(cfg), key=_in_schema_order):
            if dotted(key).split(".")[0] not in USED_BY_THEIR_STEP:
                check(False, dotted(key), "must be set", "???")
    for section, fn in _SECTION_CHECKS:
        found.run(fn, cfg[section] if section else cfg)
    if problems is None:
        found.raise_any()


# sections whose required keys only the step that uses them needs: an LLM stage's (validate_kun checks them
# for the stages in pipeline.stages) and train's (kun-hpc train)
USED_BY_THEIR_STEP = (*LLM_STAGES, "train")

_SECTION_CHECKS = (
    ("executor", validate_executor),
    ("corpora", validate_corpora),
    ("shard", validate_shard),
    ("reshard", validate_reshard),
    ("filter", validate_filter),
    ("", validate_kun),
    ("train", validate_train),
    ("dedup", validate_dedup),
    ("merge", validate_merge),
    ("pipeline", validate_pipeline),
)


def _in_schema_order(key: str) -> tuple[int, str]:
    """Sections in the order of :class:`Config`, then the keys within one as the user lists them."""
    names = [f.name for f in fields(Config)]
    section = dotted(key).split(".")[0]
    return (names.index(section) if section in names else len(names), dotted(key))
