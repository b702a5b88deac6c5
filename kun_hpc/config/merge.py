"""The ``dedup`` and ``merge`` sections: near-duplicate removal, decontamination, the quality report and the
final dataset (kun_hpc/merge/, kun_hpc/quality/)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from kun_hpc.config.checks import check
from kun_hpc.config.choices import DEDUP_KEYS, SURVIVOR_KEYS, DedupKey, SurvivorKey

__all__ = [
    "DEDUP_KEYS",
    "SURVIVOR_KEYS",
    "DecontaminateConfig",
    "DedupConfig",
    "MergeConfig",
    "NormalizeConfig",
    "QualityConfig",
    "validate_dedup",
    "validate_merge",
]


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
    """Exact and verified MinHash-LSH near-duplicate removal (kun_hpc/merge/dedup/), raw and at merge.
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
    keep: list[SurvivorKey] = field(
        default_factory=lambda: [SurvivorKey.score, SurvivorKey.length, SurvivorKey.id]
    )


@dataclass
class DecontaminateConfig:
    """Benchmark decontamination before the final dedup (kun_hpc/merge/decontaminate/): a pair whose
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
    dedup_by: list[DedupKey] = field(default_factory=lambda: [DedupKey.instruction])
    allow_partial: bool = False  # assemble from the complete groups only, and say what is missing
    parquet: bool = True  # also write the dataset as Parquet (one file per JSONL part)
    zstd_level: int = 3  # of the JSONL parts, 1 .. 22
    decontaminate: DecontaminateConfig = field(default_factory=lambda: DecontaminateConfig())
    quality: QualityConfig = field(default_factory=lambda: QualityConfig())


def validate_dedup(d: DictConfig) -> None:
    """The ``dedup`` section: LSH bands that divide the permutations, thresholds in range, survivor keys."""
    for key in ("ngram", "permutations", "bands", "long_bands", "long_shingles", "partitions",
                "shards_per_task", "batch_docs"):  # fmt: skip
        check(d[key] >= 1, f"dedup.{key}", "must be >= 1", d[key])
    check(d.seed >= 0, "dedup.seed", "must be >= 0 (it seeds numpy's generator)", d.seed)
    for key in ("threshold", "token_threshold"):
        check(0 < d[key] <= 1, f"dedup.{key}", "must be in (0, 1]", d[key])
    check(d.permutations <= 1024, "dedup.permutations", "must be <= 1024", d.permutations)
    for key in ("bands", "long_bands"):
        why = f"must divide dedup.permutations ({d.permutations}) into bands of equal rows"
        check(d[key] < 1 or d.permutations % d[key] == 0, f"dedup.{key}", why, d[key])  # < 1: told above
    keep = list(d.keep)
    check(bool(keep), "dedup.keep", f"must list some of {SURVIVOR_KEYS}", keep)


def validate_merge(m: DictConfig) -> None:
    """The ``merge`` section with its ``decontaminate`` and ``quality`` parts."""
    by = list(m.dedup_by)
    check(len(set(by)) == len(by), "merge.dedup_by", f"must list distinct keys among {DEDUP_KEYS}", by)
    check(1 <= m.zstd_level <= 22, "merge.zstd_level", "must be in 1..22", m.zstd_level)
    dc, q = m.decontaminate, m.quality
    check(dc.ngram >= 1, "merge.decontaminate.ngram", "must be >= 1", dc.ngram)
    check(bool(dc.jsonl_fields), "merge.decontaminate.jsonl_fields", "must name a field", dc.jsonl_fields)
    for k in ("diversity_sample", "top_openings", "opening_chars"):
        check(q[k] >= 1, f"merge.quality.{k}", "must be >= 1", q[k])
    n = q.samples_per_reason
    check(n >= 0, "merge.quality.samples_per_reason", "must be >= 0", n)
