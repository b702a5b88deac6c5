"""The whole run config: one field per section, and :func:`validate`, the semantic checks of all of them."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from kun_hpc.config.corpora import CorpusConfig, validate_corpora
from kun_hpc.config.filter import FilterConfig, validate_filter
from kun_hpc.config.kun import AnswerConfig, LabelConfig, PointConfig, RulesConfig, validate_kun
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

__all__ = ["Config", "validate"]


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


def validate(cfg: DictConfig) -> None:
    """Semantic checks that types alone do not catch (the choices are enums OmegaConf checks as the config
    is built); each error names its key."""
    validate_executor(cfg.executor)
    validate_corpora(cfg.corpora)
    validate_shard(cfg.shard)
    validate_reshard(cfg.reshard)
    validate_filter(cfg.filter)
    validate_kun(cfg)
    validate_train(cfg.train)
    validate_dedup(cfg.dedup)
    validate_merge(cfg.merge)
    validate_pipeline(cfg.pipeline)
