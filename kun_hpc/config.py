"""Run configuration: OmegaConf structured configs, YAML presets, ``key=value`` overrides.

A config is loaded from a YAML preset in ``configs/`` merged over the dataclass defaults below, then
``key=value`` overrides from the command line. Type errors and unknown keys are reported by OmegaConf
with the full key path; semantic checks in :func:`validate` name the bad key too. The resolved config and
its hash are saved in each run directory (:func:`save_resolved`).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kun_hpc.inference.engine import BACKENDS, DTYPES, EngineSpec, SamplingSpec
from kun_hpc.io.atomic import atomic_write_bytes

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PRESET = REPO_ROOT / "configs" / "default.yaml"
CORPUS_FORMATS = ("wudao", "wanjuan", "skypile", "jsonl")
EXECUTORS = ("local", "slurm", "inline")


class ConfigError(ValueError):
    """A config value is wrong; the message names the key."""


@dataclass
class CorpusConfig:
    name: str = MISSING  # names its shard folder, its records' corpus field and its report rows
    format: str = MISSING  # one of CORPUS_FORMATS
    paths: list[str] = MISSING  # files, folders or globs; relative: under the working dir, else the repo
    text_field: str = "text"  # jsonl only: where the text is
    id_field: str | None = None  # jsonl only: native id field; None: content hash
    meta_fields: list[str] = field(default_factory=list)  # jsonl only: native fields kept under "meta"
    license: str = ""  # carried into the dataset card
    # `kun-hpc plan` before the corpus is sharded: its expected number of records (once shards exist, their
    # manifest counts instead); None: unknown
    expected_records: int | None = None


@dataclass
class ShardConfig:
    output: str = "${run.dir}/shards"  # shards/<corpus>/part-XXXXX.jsonl.zst
    records_per_shard: int = 10_000  # a shard closes at this many records
    bytes_per_shard: int | None = None  # uncompressed JSONL bytes; whichever limit comes first
    zstd_level: int = 3  # 1 (fast) .. 22 (small)
    split_bytes: int = 256 * 2**20  # a line-based input larger than this is split into pieces across tasks
    max_record_bytes: int = 16 * 2**20  # a longer line/object is quarantined as record_too_large
    max_bad_fraction: float = 1.0  # quarantined / read above this makes the command fail (1.0: never)


@dataclass
class ReshardConfig:
    input: str = "${shard.output}"  # every part-*.jsonl.zst under it, all corpora
    output: str = "${run.dir}/reshard"  # part-XXXXX.jsonl.zst, corpora mixed
    num_shards: int = 8  # records are spread over this many shards by a hash of their id
    zstd_level: int = 3  # 1 (fast) .. 22 (small)
    split_bytes: int = 256 * 2**20  # an input shard larger than this is split into pieces across tasks


@dataclass
class SlurmConfig:
    partition: str | None = None  # sbatch --partition; None: the cluster's default
    account: str | None = None  # sbatch --account
    qos: str | None = None  # sbatch --qos
    time_min: int = 60  # the time limit of each array task, in minutes
    cpus_per_task: int = 1  # sbatch --cpus-per-task
    mem_gb: float = 4.0  # memory per task (sbatch --mem)
    gpus_per_task: int = 0  # sbatch --gpus-per-task; 0: none asked for
    constraint: str | None = None  # sbatch --constraint, e.g. a100
    array_parallelism: int = 256  # the %N throttle of each array
    max_array_size: int | None = None  # None: read the live MaxArraySize from `scontrol show config`
    signal_delay_s: int = 120  # --signal lead time before the time limit
    extra_flags: dict[str, Any] = field(default_factory=dict)  # more sbatch --key=value flags


@dataclass
class ExecutorConfig:
    kind: str = "local"  # one of EXECUTORS
    max_parallel: int = 2  # local: tasks at once
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # default resources of every Slurm job
    # per-stage overrides of the fields above, e.g. {label: {gpus_per_task: 2, time_min: 600}}; "merge" is
    # the merge job that `kun-hpc run` submits after the arrays
    stage_resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    poll_interval_s: float = 30.0  # at most one squeue + one sacct call per interval while waiting


@dataclass
class PipelineConfig:
    # stage names in order (see kun_hpc/pipeline.py), or "package.module:Class" for your own stages
    stages: list[str] = field(default_factory=list)
    shards_per_task: int = 1  # a unit is (stage, group of this many shards); amortises model loading
    chunk_records: int = 1000  # a unit commits its output every this many input records
    options: dict[str, Any] = field(default_factory=dict)  # per-stage options of stages without a section
    # measured or expected input records per second per task, for `kun-hpc plan` estimates
    throughput: dict[str, float] = field(default_factory=dict)
    # for `kun-hpc plan` before stages ran: output records per input record of each stage (the next stage's
    # input); the filter cuts documents into units, so its factor may be > 1. Missing stages count as 1.
    expected_keep: dict[str, float] = field(default_factory=dict)


@dataclass
class RunConfig:
    name: str = "demo"  # names the run dir and the merge report
    dir: str = "runs/${run.name}"  # everything of the run: config, shards, stage outputs, logs, merge


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
    scorer: str = "none"  # none | lm (vLLM / transformers engine) | kenlm
    engine: dict[str, Any] = field(default_factory=dict)  # lm: EngineSpec fields (model, backend, ...)
    prefix: str = ""  # lm: prepended to each unit (e.g. "<|endoftext|>" so the first token is scored too)
    kenlm_model: str | None = None  # kenlm: an ARPA/binary model (python -m kun_hpc.filtering.ngram)
    batch_size: int = 1024  # units per scorer call
    thresholds: str = "percentile"  # absolute (cutoffs) | percentile (percentiles of a calibration sample)
    cutoffs: list[float] = field(default_factory=lambda: [100.0, 1000.0])  # absolute: [head_max, middle_max]
    percentiles: list[float] = field(default_factory=lambda: [33.3, 66.7])  # percentile: [head, tail] bounds
    drop: list[str] = field(default_factory=lambda: ["tail"])  # buckets rejected as ppl_<bucket>
    sample_docs_per_shard: int = 200  # calibration sample (kun-hpc filter-calibrate)
    sample_max_shards: int = 64  # ... of at most this many shards, spread evenly over all shards


@dataclass
class FilterConfig:
    # the Label model's tokenizer: a model folder (its tokenizer.json) or a tokenizer.json; None: the folder
    # of label.engine.model
    tokenizer: str | None = None
    max_tokens: int = 512  # a unit holds at most this many tokens (Kun: 512); longer: too_long
    min_tokens: int = 16  # too_short below this
    clean: FilterCleanConfig = field(default_factory=FilterCleanConfig)
    rules: FilterRulesConfig = field(default_factory=FilterRulesConfig)
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)


# ------------------------------------------------------------------------- Label / Point / Answer / rules
LLM_STAGES = ("label", "point", "answer")
POINT_MODES = ("reference", "calibrated")
KUN_STOP = ["<|endoftext|>", "<|im_end|>", "<|im_start|>"]


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
    instruction_rules: list[str] = field(
        default_factory=lambda: [
            "strip_whitespace",
            "cut_whitespace_run",
            "repeated_lines",
            "not_empty",
            "instruction_keywords",
        ]
    )
    # run in the rules stage on each answer
    answer_rules: list[str] = field(
        default_factory=lambda: [
            "strip_whitespace",
            "not_empty",
            "refusal",
            "answer_keywords",
            "min_chars",
            "repeated_opening",
        ]
    )
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
    # faithfulness of an answer to the unit it polished (kun_hpc/quality/faithfulness.py), put on every pair
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
    # run rules.instruction_rules on each new instruction (before Point pays for it); the rules section is
    # then part of the Label stage's config hash (Label.hash_inputs)
    apply_rules: bool = True


@dataclass
class PointConfig(LLMStageConfig):
    template: str = "configs/prompts/point.txt"
    # reference: keep a judgement holding the good tag (【好】) and not the bad one (【差】);
    # calibrated: score = P(good) / (P(good) + P(bad)) of the token after verdict_open, kept if >= threshold
    mode: str = "reference"
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


def find_file(path: str | Path) -> Path:
    """A config's relative path: under the working dir if it is there, else under the repo."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or not (REPO_ROOT / p).exists():
        return p
    return REPO_ROOT / p


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def load(preset: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Defaults <- YAML preset <- ``key=value`` overrides, validated and resolved.

    Without a preset, ``configs/default.yaml`` (the bundled sample on the local executor) is used.
    """
    if preset is None and DEFAULT_PRESET.is_file():
        preset = DEFAULT_PRESET
    try:
        cfg = OmegaConf.structured(Config)
        if preset is not None:
            for layer in preset_layers(Path(preset)):
                cfg = OmegaConf.merge(cfg, layer)
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must be key=value, got: {' '.join(bad)}")
            for item in overrides:
                key, _, value = item.partition("=")
                OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"v={value}"]).v, merge=True)
        # an absolute run dir before anything is resolved from it: the saved config of a run then names the
        # same folders from any working directory
        cfg.run.dir = str(Path(OmegaConf.select(cfg, "run.dir")).expanduser().resolve())
        OmegaConf.resolve(cfg)
        absolute_paths(cfg)
        _fill_template_hashes(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e)) from None
    validate(cfg)
    return cfg


def preset_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[DictConfig]:
    """A preset and the presets it builds on, to merge in order (last wins).

    A preset may start with ``include: [other.yaml, ...]`` (paths relative to its own folder): those are
    merged first, in order, then the preset itself. So a user's config can be a cluster profile plus a
    corpus plus a few lines of its own.
    """
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"config include loop: {chain}")
    layer = OmegaConf.load(path)
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"config file {path}: must be a mapping of sections, not a list")
    includes = layer.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    layers = []
    for inc in includes:
        layers += preset_layers(path.parent / str(inc), (*seen, path))
    return [*layers, layer]


# Files the run reads, and folders it writes: made absolute when the config loads, so that a command works
# from any working directory and a run's saved config names the same files wherever it is read (issue 12).
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


def _fill_template_hashes(cfg: DictConfig) -> None:
    """Record each prompt template's sha256 in its section (kept when already set: a run's saved config
    holds the hash the run was submitted with, and the stage refuses a template changed since)."""
    for key in LLM_STAGES:
        section = cfg[key]
        if not section.template_sha256 and not OmegaConf.is_missing(section, "template"):
            path = find_file(section.template)
            if path.is_file():
                section.template_sha256 = file_sha256(path)


def _describe(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0]
    return f"config key '{key}': {msg}" if key else f"config: {msg}"


def _check(ok: bool, key: str, why: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {why} (got {value!r})")


def validate(cfg: DictConfig) -> None:
    """Semantic checks that types alone do not catch; each error names its key."""
    _check(cfg.executor.kind in EXECUTORS, "executor.kind", f"must be one of {EXECUTORS}", cfg.executor.kind)
    _check(cfg.executor.max_parallel >= 1, "executor.max_parallel", "must be >= 1", cfg.executor.max_parallel)
    names = [c.name for c in cfg.corpora]
    for i, c in enumerate(cfg.corpora):
        for key in ("name", "format", "paths"):
            _check(not OmegaConf.is_missing(c, key), f"corpora.{i}.{key}", "must be set", "???")
        _check(
            c.format in CORPUS_FORMATS, f"corpora.{i}.format", f"must be one of {CORPUS_FORMATS}", c.format
        )
        _check(bool(c.paths), f"corpora.{i}.paths", "must list at least one path", c.paths)
        _check(names.count(c.name) == 1, f"corpora.{i}.name", "must be unique", c.name)
        _check(
            c.name.replace("_", "").replace("-", "").isalnum(),
            f"corpora.{i}.name",
            "must be letters, digits, '-' or '_'",
            c.name,
        )
    s = cfg.shard
    _check(s.records_per_shard >= 1, "shard.records_per_shard", "must be >= 1", s.records_per_shard)
    _check(
        s.bytes_per_shard is None or s.bytes_per_shard >= 1,
        "shard.bytes_per_shard",
        "must be >= 1",
        s.bytes_per_shard,
    )
    _check(1 <= s.zstd_level <= 22, "shard.zstd_level", "must be in 1..22", s.zstd_level)
    _check(s.split_bytes >= 1, "shard.split_bytes", "must be >= 1", s.split_bytes)
    _check(s.max_record_bytes >= 1, "shard.max_record_bytes", "must be >= 1", s.max_record_bytes)
    _check(
        0.0 <= s.max_bad_fraction <= 1.0, "shard.max_bad_fraction", "must be in [0, 1]", s.max_bad_fraction
    )
    r = cfg.reshard
    _check(r.num_shards >= 1, "reshard.num_shards", "must be >= 1", r.num_shards)
    _check(1 <= r.zstd_level <= 22, "reshard.zstd_level", "must be in 1..22", r.zstd_level)
    _check(r.split_bytes >= 1, "reshard.split_bytes", "must be >= 1", r.split_bytes)
    sl = cfg.executor.slurm
    _check(sl.time_min >= 1, "executor.slurm.time_min", "must be >= 1", sl.time_min)
    _check(
        sl.array_parallelism >= 1, "executor.slurm.array_parallelism", "must be >= 1", sl.array_parallelism
    )
    validate_filter(cfg)
    validate_kun(cfg)
    validate_train(cfg)
    validate_dedup(cfg)
    dc, q = cfg.merge.decontaminate, cfg.merge.quality
    _check(dc.ngram >= 1, "merge.decontaminate.ngram", "must be >= 1", dc.ngram)
    _check(bool(dc.jsonl_fields), "merge.decontaminate.jsonl_fields", "must name a field", dc.jsonl_fields)
    for k in ("diversity_sample", "top_openings", "opening_chars"):
        _check(q[k] >= 1, f"merge.quality.{k}", "must be >= 1", q[k])
    n = q.samples_per_reason
    _check(n >= 0, "merge.quality.samples_per_reason", "must be >= 0", n)
    validate_estimates(cfg)


def validate_kun(cfg: DictConfig) -> None:
    """The label / point / answer / rules sections; model and template only for stages in the pipeline."""
    active = {s.rsplit(":", 1)[-1].lower() for s in cfg.pipeline.stages}
    for key in LLM_STAGES:
        sec = cfg[key]
        e, sp = sec.engine, sec.sampling
        _check(e.backend in BACKENDS, f"{key}.engine.backend", f"must be one of {BACKENDS}", e.backend)
        _check(e.dtype in DTYPES, f"{key}.engine.dtype", f"must be one of {DTYPES}", e.dtype)
        for k in ("tensor_parallel_size", "max_num_seqs", "batch_size"):
            _check(e[k] >= 1, f"{key}.engine.{k}", "must be >= 1", e[k])
        _check(
            0 < e.gpu_memory_utilization <= 1,
            f"{key}.engine.gpu_memory_utilization",
            "must be in (0, 1]",
            e.gpu_memory_utilization,
        )
        _check(
            e.max_model_len is None or e.max_model_len >= 2,
            f"{key}.engine.max_model_len",
            "must be >= 2",
            e.max_model_len,
        )
        _check(sp.temperature >= 0, f"{key}.sampling.temperature", "must be >= 0", sp.temperature)
        _check(0 < sp.top_p <= 1, f"{key}.sampling.top_p", "must be in (0, 1]", sp.top_p)
        rp = sp.repetition_penalty
        _check(rp > 0, f"{key}.sampling.repetition_penalty", "must be > 0", rp)
        _check(sp.max_new_tokens >= 1, f"{key}.sampling.max_new_tokens", "must be >= 1", sp.max_new_tokens)
        _check(all(sp.stop), f"{key}.sampling.stop", "stop strings must be non-empty", list(sp.stop))
        _check(
            sec.max_prompt_tokens is None or sec.max_prompt_tokens >= 1,
            f"{key}.max_prompt_tokens",
            "must be >= 1 or null",
            sec.max_prompt_tokens,
        )
        if key in active:
            _check(
                not OmegaConf.is_missing(e, "model") and bool(e.model),
                f"{key}.engine.model",
                "the stage needs a local model folder (tools/make_tiny_model.py builds a tiny one)",
                None,
            )
            _check(
                not OmegaConf.is_missing(sec, "template") and find_file(sec.template).is_file(),
                f"{key}.template",
                "prompt template file not found",
                OmegaConf.select(sec, "template", default=None, throw_on_missing=False),
            )
    a = cfg.answer
    _check(
        a.instruction_tokens >= 1
        and (a.max_prompt_tokens is None or a.instruction_tokens < a.max_prompt_tokens),
        "answer.instruction_tokens",
        "must be >= 1 and < answer.max_prompt_tokens",
        a.instruction_tokens,
    )
    p = cfg.point
    _check(p.mode in POINT_MODES, "point.mode", f"must be one of {POINT_MODES}", p.mode)
    _check(0 <= p.threshold <= 1, "point.threshold", "must be in [0, 1]", p.threshold)
    for k in ("good", "bad", "verdict_open", "verdict_close"):
        _check(bool(p[k]), f"point.{k}", "must be non-empty", p[k])
    _check(p.good != p.bad, "point.bad", "must differ from point.good", p.bad)
    from kun_hpc.stages.rules import ANSWER_RULES, INSTRUCTION_RULES

    rules = cfg.rules
    for field_, known in (("instruction_rules", INSTRUCTION_RULES), ("answer_rules", ANSWER_RULES)):
        unknown = [r for r in rules[field_] if r not in known]
        _check(not unknown, f"rules.{field_}", f"unknown rules; known: {sorted(known)}", unknown)
    for k in ("whitespace_run", "max_opening_repeats", "max_unit_chars"):
        _check(rules[k] >= 1, f"rules.{k}", "must be >= 1", rules[k])
    _check(rules.min_answer_chars >= 0, "rules.min_answer_chars", "must be >= 0", rules.min_answer_chars)
    _check(rules.novel_ngram >= 1, "rules.novel_ngram", "must be >= 1", rules.novel_ngram)
    for k in ("drift_min_novel", "copy_min_recall", "copy_min_precision"):
        _check(0 <= rules[k] <= 1, f"rules.{k}", "must be in [0, 1]", rules[k])
    for i, pattern in enumerate(rules.refusal_patterns):
        try:
            re.compile(pattern)
        except re.error as e:
            _check(False, f"rules.refusal_patterns.{i}", f"not a regular expression: {e}", pattern)


def validate_filter(cfg: DictConfig) -> None:
    f = cfg.filter
    _check(f.max_tokens >= 1, "filter.max_tokens", "must be >= 1", f.max_tokens)
    _check(1 <= f.min_tokens <= f.max_tokens, "filter.min_tokens", "must be in 1..max_tokens", f.min_tokens)
    r = f.rules
    for key in ("min_cjk_ratio", "max_dup_line_frac", "max_dup_ngram_frac"):
        _check(0 <= r[key] <= 1, f"filter.rules.{key}", "must be in [0, 1]", r[key])
    _check(r.dup_ngram_n >= 1, "filter.rules.dup_ngram_n", "must be >= 1", r.dup_ngram_n)
    p = f.perplexity
    for key, allowed in (("scorer", ("none", "lm", "kenlm")), ("thresholds", ("absolute", "percentile"))):
        _check(p[key] in allowed, f"filter.perplexity.{key}", f"must be one of {allowed}", p[key])
    for key in ("batch_size", "sample_docs_per_shard", "sample_max_shards"):
        _check(p[key] >= 1, f"filter.perplexity.{key}", "must be >= 1", p[key])
    buckets = ("head", "middle", "tail")
    drop = list(p.drop)
    _check(set(drop) <= set(buckets) and len(set(drop)) < 3, "filter.perplexity.drop",
           f"must list some of {buckets}, not all", drop)  # fmt: skip
    cut = list(p.cutoffs)
    _check(len(cut) == 2 and 0 < cut[0] <= cut[1], "filter.perplexity.cutoffs",
           "must be [head_max, middle_max] with 0 < head_max <= middle_max", cut)  # fmt: skip
    pct = list(p.percentiles)
    _check(len(pct) == 2 and 0 <= pct[0] <= pct[1] <= 100, "filter.perplexity.percentiles",
           "must be [head, tail] with 0 <= head <= tail <= 100", pct)  # fmt: skip
    if p.scorer == "lm":
        engine = OmegaConf.to_container(p.engine, resolve=True)
        _check(bool(engine.get("model")), "filter.perplexity.engine.model", "the lm scorer needs one", None)
        from kun_hpc.inference.engine import EngineSpec

        try:
            EngineSpec.from_dict(engine)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config key 'filter.perplexity.engine': {e}") from None
    if p.scorer == "kenlm":
        _check(bool(p.kenlm_model), "filter.perplexity.kenlm_model", "the kenlm scorer needs one", None)


def to_yaml(cfg: DictConfig | Any) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True)


def config_hash(section: DictConfig | Any) -> str:
    """Stable short hash of a (sub)config: same values, same hash, whatever the key order."""
    if isinstance(section, (DictConfig, ListConfig)):
        section = OmegaConf.to_container(section, resolve=True)
    text = orjson.dumps(section, option=orjson.OPT_SORT_KEYS, default=repr).decode()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_resolved(cfg: DictConfig, run_dir: str | Path) -> str:
    """Write ``config.yaml`` and ``config.sha256`` into the run dir; return the hash."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = to_yaml(cfg)
    digest = config_hash(cfg)

    atomic_write_bytes(run_dir / "config.yaml", text.encode())
    atomic_write_bytes(run_dir / "config.sha256", (digest + "\n").encode())
    return digest


# ------------------------------------------------------------------------------------------ training (SFT)
TRAIN_TASKS = ("label", "chat")
TRAIN_DISTRIBUTED = ("none", "ddp", "fsdp")
TRAIN_DTYPES = ("auto", "float32", "bfloat16", "float16")
SEED_FORMATS = ("auto", "json", "jsonl")
FSDP_SHARDING = ("full", "grad_op", "no_shard")  # ZeRO-3, ZeRO-2, plain data parallel


@dataclass
class TrainFSDPConfig:
    sharding: str = "full"  # full: params + grads + optimizer state sharded (ZeRO-3); grad_op: ZeRO-2
    # the module classes wrapped as FSDP units (one per decoder layer); empty: the model's _no_split_modules
    wrap_classes: list[str] = field(default_factory=list)
    reshard_after_forward: bool = True  # full: free gathered params after forward (less memory, more comm)
    cpu_offload: bool = False  # params/grads/optimizer state live on CPU between uses (slow; huge models)
    reduce_dtype: str = "float32"  # gradient reduce-scatter dtype under bf16 params


@dataclass
class TrainConfig:
    """SFT of the Label model (seed pairs inverted) and the Primary Chat model (forward); kun_hpc/train/."""

    task: str = "label"  # label | chat: set by `kun-hpc train label|chat`
    base_model: str = MISSING  # a local model folder (the reference: Yi-34B; the published runs: Yi-6B too)
    output: str = "${run.dir}/train/${train.task}"  # data/, checkpoints/step-N, model/ (the final HF folder)
    seed_data: list[str] = field(default_factory=lambda: ["shards/sample/seed"])  # files, folders or globs
    seed_format: str = "auto"  # auto (by suffix: .json array, .jsonl lines) | json | jsonl
    # the forward (chat) frame, a template with {text}; the Label set uses label.template itself
    chat_template: str = "configs/prompts/chat.txt"
    epochs: int = 4  # Kun: 6 for the Label model, 4 for the Primary Chat model
    lr: float = 1e-5  # peak learning rate (Kun: 1e-5), after linear warmup, then cosine
    min_lr_ratio: float = 0.0  # the cosine ends at lr * this
    warmup_ratio: float = 0.03  # fraction of the optimizer steps spent warming up
    weight_decay: float = 0.0  # AdamW
    adam_beta1: float = 0.9  # AdamW
    adam_beta2: float = 0.95  # AdamW
    adam_eps: float = 1e-8  # AdamW
    max_grad_norm: float = 1.0  # 0: no clipping
    micro_batch_size: int = 4  # sequences per process per forward
    grad_accum: int = 1  # micro-batches per optimizer step; global batch = micro x accum x world size
    max_len: int = 1024  # a longer example (prompt + target tokens) is rejected as too_long
    length_group: bool = True  # batch examples of similar length (less padding); order stays seeded
    length_group_window: int = 64  # ... sorted within windows of this many micro-batches
    save_steps: int = 200  # checkpoint every this many optimizer steps (and at the end)
    keep_checkpoints: int = 2  # the newest this many checkpoints are kept
    dtype: str = "auto"  # auto: bfloat16 on GPU, float32 on CPU
    gradient_checkpointing: bool = True  # recompute activations in backward: less memory, more compute
    distributed: str = "ddp"  # none (one process) | ddp | fsdp; ddp/fsdp with one process behave as none
    fsdp: TrainFSDPConfig = field(default_factory=TrainFSDPConfig)
    seed: int = 42  # data order, initialisation of anything new, dropout
    max_steps: int | None = None  # caps the schedule (None: epochs x steps per epoch)
    stop_at_step: int | None = None  # checkpoint and stop here, schedule unchanged (what a preemption does)
    log_steps: int = 10  # a loss line every this many optimizer steps
    nproc: int = 1  # --executor local: processes on this machine (gloo on CPU, nccl on GPU)
    nodes: int = 1  # --executor slurm: nodes, with tasks_per_node tasks (one per GPU) each
    tasks_per_node: int = 1  # --executor slurm: processes per node, one per GPU
    # --executor slurm: resources per task (gpus_per_task: 1 for one task per GPU), time, partition, ...
    slurm: SlurmConfig = field(default_factory=lambda: SlurmConfig(time_min=24 * 60, mem_gb=16.0))


def validate_train(cfg: DictConfig) -> None:
    t = cfg.train
    _check(t.task in TRAIN_TASKS, "train.task", f"must be one of {TRAIN_TASKS}", t.task)
    _check(t.distributed in TRAIN_DISTRIBUTED, "train.distributed", f"must be one of {TRAIN_DISTRIBUTED}",
           t.distributed)  # fmt: skip
    _check(t.dtype in TRAIN_DTYPES, "train.dtype", f"must be one of {TRAIN_DTYPES}", t.dtype)
    _check(t.seed_format in SEED_FORMATS, "train.seed_format", f"must be one of {SEED_FORMATS}",
           t.seed_format)  # fmt: skip
    _check(t.fsdp.sharding in FSDP_SHARDING, "train.fsdp.sharding", f"must be one of {FSDP_SHARDING}",
           t.fsdp.sharding)  # fmt: skip
    _check(t.fsdp.reduce_dtype in TRAIN_DTYPES[1:], "train.fsdp.reduce_dtype",
           f"must be one of {TRAIN_DTYPES[1:]}", t.fsdp.reduce_dtype)  # fmt: skip
    _check(bool(t.seed_data), "train.seed_data", "must list at least one path", list(t.seed_data))
    _check(t.epochs >= 1, "train.epochs", "must be >= 1", t.epochs)
    _check(t.lr > 0, "train.lr", "must be > 0", t.lr)
    _check(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]", t.min_lr_ratio)
    _check(0 <= t.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)", t.warmup_ratio)
    for k in ("micro_batch_size", "grad_accum", "save_steps", "keep_checkpoints", "log_steps", "nproc",
              "nodes", "tasks_per_node", "length_group_window"):  # fmt: skip
        _check(t[k] >= 1, f"train.{k}", "must be >= 1", t[k])
    _check(t.max_len >= 8, "train.max_len", "must be >= 8", t.max_len)
    for k in ("max_steps", "stop_at_step"):
        _check(t[k] is None or t[k] >= 1, f"train.{k}", "must be >= 1 or null", t[k])
    _check(t.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0", t.max_grad_norm)


# ------------------------------------------------------------------------------------------ dedup / merge
DEDUP_KEYS = ("text", "instruction", "pair")
SURVIVOR_KEYS = ("score", "length", "id")


@dataclass
class NormalizeConfig:
    """The dedup key of a text: what two texts may differ in and still count as the same content
    (kun_hpc/merge/normalize.py; the rule with examples: docs/merge.md)."""

    width: bool = True  # full-width ASCII and the ideographic space -> half width (NFKC on those only)
    # punctuation separates like whitespace (a run of both is one space); symbols, # % & * / \ @ _, code
    # marks touching an ASCII letter or digit (f'(x), arr[i], 3-5) and
    # . , : between digits stay. false: punctuation is compared as it is
    punctuation: bool = True
    lowercase: bool = True  # Latin letters compare case-insensitively
    t2s: bool = False  # OpenCC Traditional -> Simplified
    opencc_config: str = "t2s"  # OpenCC config name: t2s, tw2s, hk2s, ...


@dataclass
class DedupConfig:
    """Exact and verified MinHash-LSH near-duplicate removal (kun_hpc/merge/dedup.py), raw and at merge.
    What the defaults catch, with the S-curves: docs/merge.md."""

    raw: bool = False  # dedup the shards before the per-shard stages (their input is then <run>/dedup_raw)
    exact: bool = True  # drop records whose key equals another's (duplicate_exact)
    near: bool = True  # drop verified near duplicates (near_duplicate)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    ngram: int = 3  # character n-gram shingles of the key (separators removed)
    threshold: float = 0.5  # a candidate is a near duplicate when the n-gram Jaccard of the keys reaches this
    # ... and the numbers, words and symbols of the two keys are the same (short texts) or, for two long
    # texts, agree this well (difflib ratio of their sequences: a changed view counter is still one page)
    token_threshold: float = 0.8
    permutations: int = 120  # MinHash values per record
    bands: int = 40  # LSH bands of a short text (rows = permutations / bands)
    long_bands: int = 20  # LSH bands of a text with at least long_shingles distinct n-grams
    long_shingles: int = 200  # distinct n-grams that make a text long (both bandings from threshold * this)
    seed: int = 1  # seeds the MinHash permutations: change it and clusters may change
    partitions: int = 16  # bucket tasks; each reads 1/partitions of all band keys, a slice at a time
    shards_per_task: int = 1  # signature and apply tasks
    batch_docs: int = 2048  # documents hashed per numpy batch (bounds a signature task's memory)
    # the survivor of a cluster: the first key that differs decides (highest score, longest, smallest id)
    keep: list[str] = field(default_factory=lambda: ["score", "length", "id"])


@dataclass
class DecontaminateConfig:
    """Benchmark decontamination before the final dedup (kun_hpc/merge/decontaminate.py): a pair whose
    instruction or answer (a text record: its text) shares a character n-gram with a benchmark question or
    answer is rejected as `contaminated`, naming the benchmark file and row."""

    # benchmark files, folders or globs: CSV in the C-Eval (id,question,A,B,C,D,answer[,explanation]) or
    # CMMLU (,Question,A,B,C,D,Answer) layout, or JSONL; [] for none
    benchmarks: list[str] = field(default_factory=list)
    jsonl_fields: list[str] = field(default_factory=lambda: ["question", "answer"])  # JSONL: texts indexed
    ngram: int = 13  # n of the character n-grams (of the text without whitespace and punctuation)


@dataclass
class QualityConfig:
    """The quality section of the merge report and the dataset card (kun_hpc/quality/, docs/quality.md)."""

    enabled: bool = True  # false: the report and card carry the funnel only
    diversity_sample: int = 20_000  # instructions (spread over the dataset shards) measured for diversity
    top_openings: int = 20  # most common instruction openings listed
    opening_chars: int = 4  # an opening: the instruction's first this many characters
    samples_per_reason: int = 3  # sample records shown per stage and per reject reason


@dataclass
class MergeConfig:
    """Final dedup, assembly, dataset card and funnel report (kun_hpc/merge/)."""

    output: str = "${run.dir}/merge"  # dataset/{jsonl,parquet}, the dataset card and the report
    # `kun-hpc run` merges when the grid is complete (on Slurm without --wait: a merge job after the arrays)
    auto: bool = True
    # passes of final dedup, in order: instruction | pair (instruction + output) | text; [] for none. A run
    # whose last stage makes no answers is merged as a text dataset and dedups by text
    dedup_by: list[str] = field(default_factory=lambda: ["instruction"])
    allow_partial: bool = False  # assemble from the complete groups only, and say what is missing
    parquet: bool = True  # also write the dataset as Parquet (one file per JSONL part)
    zstd_level: int = 3  # of the JSONL parts, 1 .. 22
    decontaminate: DecontaminateConfig = field(default_factory=lambda: DecontaminateConfig())
    quality: QualityConfig = field(default_factory=lambda: QualityConfig())


def validate_dedup(cfg: DictConfig) -> None:
    d = cfg.dedup
    for key in ("ngram", "permutations", "bands", "long_bands", "long_shingles", "partitions",
                "shards_per_task", "batch_docs"):  # fmt: skip
        _check(d[key] >= 1, f"dedup.{key}", "must be >= 1", d[key])
    _check(d.seed >= 0, "dedup.seed", "must be >= 0 (it seeds numpy's generator)", d.seed)
    for key in ("threshold", "token_threshold"):
        _check(0 < d[key] <= 1, f"dedup.{key}", "must be in (0, 1]", d[key])
    _check(d.permutations <= 1024, "dedup.permutations", "must be <= 1024", d.permutations)
    for key in ("bands", "long_bands"):
        why = f"must divide dedup.permutations ({d.permutations}) into bands of equal rows"
        _check(d.permutations % d[key] == 0, f"dedup.{key}", why, d[key])
    keep = list(d.keep)
    _check(bool(keep) and set(keep) <= set(SURVIVOR_KEYS), "dedup.keep", f"must list some of {SURVIVOR_KEYS}",
           keep)  # fmt: skip
    by = list(cfg.merge.dedup_by)
    _check(set(by) <= set(DEDUP_KEYS) and len(set(by)) == len(by), "merge.dedup_by",
           f"must list distinct keys among {DEDUP_KEYS}", by)  # fmt: skip
    _check(1 <= cfg.merge.zstd_level <= 22, "merge.zstd_level", "must be in 1..22", cfg.merge.zstd_level)


def validate_estimates(cfg: DictConfig) -> None:
    """What `kun-hpc plan` reads: expected corpus sizes, funnel fractions, throughputs."""
    for i, c in enumerate(cfg.corpora):
        n = c.expected_records
        _check(n is None or n >= 0, f"corpora.{i}.expected_records", "must be >= 0 or null", n)
    for section in ("expected_keep", "throughput"):
        for stage, v in cfg.pipeline[section].items():
            _check(v is not None and v >= 0, f"pipeline.{section}.{stage}", "must be a number >= 0", v)
