"""Kun's stages: the ``label``, ``point`` and ``answer`` LLM stages and the ``rules`` post-rules.

The rule names are the config's vocabulary: :data:`INSTRUCTION_RULE_NAMES` and :data:`ANSWER_RULE_NAMES` are
what ``rules.instruction_rules`` / ``rules.answer_rules`` may list, and kun_hpc/stages/rules.py checks at
import that its registry implements exactly these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from omegaconf import MISSING, DictConfig, OmegaConf

from kun_hpc.config.checks import check
from kun_hpc.config.choices import POINT_MODES, PointMode
from kun_hpc.config.engine import EngineSpec, SamplingSpec, validate_engine, validate_sampling
from kun_hpc.config.paths import find_file

__all__ = [
    "ANSWER_RULE_NAMES",
    "INSTRUCTION_RULE_NAMES",
    "KUN_STOP",
    "LLM_STAGES",
    "POINT_MODES",
    "AnswerConfig",
    "LLMStageConfig",
    "LabelConfig",
    "PointConfig",
    "RulesConfig",
    "validate_kun",
]

LLM_STAGES = ("label", "point", "answer")
KUN_STOP = ["<|endoftext|>", "<|im_end|>", "<|im_start|>"]
# the rules kun_hpc/stages/rules.py implements; drift and copy are its unit rules (answer vs the unit)
INSTRUCTION_RULE_NAMES = (
    "strip_whitespace",
    "cut_whitespace_run",
    "repeated_lines",
    "not_empty",
    "instruction_keywords",
)
ANSWER_RULE_NAMES = (
    "strip_whitespace",
    "not_empty",
    "refusal",
    "answer_keywords",
    "min_chars",
    "repeated_opening",
    "drift",  # drift and copy last: the default answer rules are the others
    "copy",
)


def _engine() -> EngineSpec:
    return EngineSpec(model=MISSING)  # a local model folder: required when the stage runs


def _kun_sampling() -> SamplingSpec:
    """Kun's reference sampling (its vLLM inference script)."""
    return SamplingSpec(
        temperature=0.5, top_p=0.95, repetition_penalty=1.2, max_new_tokens=1024, stop=list(KUN_STOP)
    )


@dataclass
class RulesConfig:
    """Kun's post-rules (kun_hpc/stages/rules.py): rule names in the order they run, and their settings."""

    # run on Label's instructions (label.apply_rules) and again in the rules stage, after Answer
    instruction_rules: list[str] = field(default_factory=lambda: list(INSTRUCTION_RULE_NAMES))
    # run in the rules stage on each answer
    answer_rules: list[str] = field(default_factory=lambda: list(ANSWER_RULE_NAMES[:-2]))
    # instruction_keywords: an instruction naming one of these is dropped
    instruction_keywords: list[str] = field(
        default_factory=lambda: [
            "新闻",
            "材料",
            "图片",
            "链接",
            "网址",
            "根据",
            "简历",
            "简介",
            "文章",
            "摘要",
            "文本",
            "提取",
            "关键词",
            "网站",
        ]
    )
    # answer_keywords: an answer holding one of these is dropped
    answer_keywords: list[str] = field(default_factory=lambda: ["作为", "根据", "知识库", "2023", "抱歉"])
    whitespace_run: int = 5  # an instruction is cut at its first run of this many whitespace characters
    min_answer_chars: int = 20  # a shorter answer is dropped
    max_opening_repeats: int = 5  # an answer opening with one unit repeated more often than this is dropped
    max_unit_chars: int = 20  # ... a unit being 1 to this many characters
    # refusal (answer_refusal): an answer matching one of these regular expressions (assistant boilerplate
    # and refusals, Chinese and English; searched case-insensitively) is dropped, the match in the detail
    refusal_patterns: list[str] = field(
        default_factory=lambda: [
            r"作为一(个|名)?(AI|人工智能|语言模型|AI语言模型|大语言模型|智能助手)",
            r"作为(AI|人工智能|语言模型|AI语言模型|大语言模型|智能助手)",
            r"我(只)?是一个(AI|人工智能|语言模型|AI语言模型)",
            r"我(无法|不能|没有办法)(提供|回答|帮助|完成|满足|协助|访问|浏览)",
            r"(很|非常)?抱歉[，,]?\s*(我|但)",
            r"对不起[，,]?\s*(我|但)",
            r"\bas an ai\b",
            r"\bas a (large )?language model\b",
            r"\bI(?:['’]m| am) (sorry|unable|not able)\b",
            r"\bI (cannot|can['’]t|can not) (help|assist|provide|answer|fulfill|comply)\b",
        ]
    )
    # faithfulness of an answer to the unit it polished (kun_hpc/filtering/faithfulness.py), put on every pair
    # the rules stage keeps as `faithfulness`; the rules drift (answer_drift) and copy (answer_copy) drop
    # the flagged pairs when listed in answer_rules (they are not by default: flags are reported either way)
    novel_ngram: int = 3  # n of the character n-grams of novel_share (answer n-grams not in the unit)
    drift_min_novel: float = 0.8  # drift: novel_share >= this (the model wrote its own answer)
    copy_min_recall: float = 0.95  # copy: lcs_recall >= this (the unit's characters kept, in order) ...
    copy_min_precision: float = 0.95  # ... and lcs_precision >= this (hardly a character added)


@dataclass
class LLMStageConfig:
    engine: EngineSpec = field(default_factory=_engine)
    sampling: SamplingSpec = field(default_factory=_kun_sampling)
    # the prompt: a file with {text} / {instruction} placeholders; a relative path is looked up in the
    # working dir, then in the repo
    template: str = MISSING
    template_sha256: str = ""  # filled from the file at load: editing a template re-runs its stage
    max_prompt_tokens: int | None = None  # a longer prompt is rejected (prompt_too_long); None: the engine's
    reject_truncated: bool = True  # a generation cut at max_new_tokens is rejected (output_too_long)


@dataclass
class LabelConfig(LLMStageConfig):
    template: str = "configs/prompts/label.txt"
    # run rules.instruction_rules on each new instruction (before Point pays for it); the instruction rules'
    # settings are then part of the Label stage's config hash (Label.hash_inputs), the answer rules' are not
    apply_rules: bool = True


@dataclass
class PointConfig(LLMStageConfig):
    template: str = "configs/prompts/point.txt"
    # reference: keep a judgement holding the good tag (【好】) and not the bad one (【差】);
    # calibrated: score = P(good) / (P(good) + P(bad)) of the token after verdict_open, kept if >= threshold
    mode: PointMode = PointMode.reference
    threshold: float = 0.5  # calibrated: the lowest score kept
    good: str = "好"  # the verdict word that keeps an instruction
    bad: str = "差"  # the verdict word that drops it
    verdict_open: str = "【"  # the bracket before the verdict word
    verdict_close: str = "】"  # the bracket after it
    reject_truncated: bool = False  # a long judgement still carries its verdict
    # reference: end a judgement at its first complete verdict tag (【好】 or 【差】) instead of letting the
    # model write on; cheaper, but a judgement can then never hold both tags (the reference rejects those as
    # verdict_both): docs/quality.md compares tokens per judgement for both settings
    stop_at_verdict: bool = False


@dataclass
class AnswerConfig(LLMStageConfig):
    template: str = "configs/prompts/answer.txt"
    # the whole prompt (template + unit + instruction), in the Answer model's tokens (Kun: 512); the filter
    # cuts units and Label drops instructions so that it fits (kun_hpc/stages/answer.py AnswerBudget)
    max_prompt_tokens: int | None = 512
    # the room kept for the instruction: units are cut to max_prompt_tokens - the template - this
    instruction_tokens: int = 64


def validate_kun(cfg: DictConfig) -> None:
    """The label / point / answer / rules sections; model and template only for stages in the pipeline."""
    active = {s.rsplit(":", 1)[-1].lower() for s in cfg.pipeline.stages}
    for key in LLM_STAGES:
        sec = cfg[key]
        validate_engine(sec.engine, f"{key}.engine")
        validate_sampling(sec.sampling, f"{key}.sampling")
        check(sec.max_prompt_tokens is None or sec.max_prompt_tokens >= 1, f"{key}.max_prompt_tokens",
              "must be >= 1 or null", sec.max_prompt_tokens)  # fmt: skip
        if key in active:
            check(
                not OmegaConf.is_missing(sec.engine, "model") and bool(sec.engine.model),
                f"{key}.engine.model",
                "the stage needs a local model folder (tools/make_tiny_model.py builds a tiny one)",
                None,
            )
            check(not OmegaConf.is_missing(sec, "template") and find_file(sec.template).is_file(),
                  f"{key}.template", "prompt template file not found",
                  OmegaConf.select(sec, "template", default=None, throw_on_missing=False))  # fmt: skip
    a = cfg.answer
    fits = a.max_prompt_tokens is None or a.instruction_tokens < a.max_prompt_tokens
    check(a.instruction_tokens >= 1 and fits, "answer.instruction_tokens",
          "must be >= 1 and < answer.max_prompt_tokens", a.instruction_tokens)  # fmt: skip
    validate_point(cfg.point)
    validate_rules(cfg.rules)


def validate_point(p: DictConfig) -> None:
    """Point's verdict settings; its mode is checked at load."""
    check(0 <= p.threshold <= 1, "point.threshold", "must be in [0, 1]", p.threshold)
    for k in ("good", "bad", "verdict_open", "verdict_close"):
        check(bool(p[k]), f"point.{k}", "must be non-empty", p[k])
    check(p.good != p.bad, "point.bad", "must differ from point.good", p.bad)


def validate_rules(rules: DictConfig) -> None:
    """Rule names among those known, settings in range, refusal patterns that compile."""
    for field_, known in (("instruction_rules", INSTRUCTION_RULE_NAMES), ("answer_rules", ANSWER_RULE_NAMES)):
        unknown = [r for r in rules[field_] if r not in known]
        check(not unknown, f"rules.{field_}", f"unknown rules; known: {sorted(known)}", unknown)
    for k in ("whitespace_run", "max_opening_repeats", "max_unit_chars"):
        check(rules[k] >= 1, f"rules.{k}", "must be >= 1", rules[k])
    check(rules.min_answer_chars >= 0, "rules.min_answer_chars", "must be >= 0", rules.min_answer_chars)
    check(rules.novel_ngram >= 1, "rules.novel_ngram", "must be >= 1", rules.novel_ngram)
    for k in ("drift_min_novel", "copy_min_recall", "copy_min_precision"):
        check(0 <= rules[k] <= 1, f"rules.{k}", "must be in [0, 1]", rules[k])
    for i, pattern in enumerate(rules.refusal_patterns):
        try:
            re.compile(pattern)
        except re.error as e:
            check(False, f"rules.refusal_patterns.{i}", f"not a regular expression: {e}", pattern)
