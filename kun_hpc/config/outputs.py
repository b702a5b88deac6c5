"""Which config keys decide what a run writes, and which only decide how, where or when it runs (issue 16,
item 1): the one place that says so.

A stage's, phase's or step's config hash (kun_hpc/cluster/grid.py, the shard and reshard steps, the filter's
calibration, the dedup phases, the merge) covers the keys that change its output and no other:
:data:`NOT_OUTPUT` lists the keys that do not, each with the reason, as ``fnmatch`` patterns over the dotted
key (``*`` matches dots too, so ``*.engine.max_num_seqs`` is every LLM stage's and the perplexity scorer's).
:func:`output_values` is a section's plain values without them, what the hashes take. docs/reruns.md, made
by tools/render_reruns.py from the hashes the code computes, shows what a change of each key re-runs.

A model is named by its folder (``*.engine.model``, ``filter.perplexity.kenlm_model``): its weights, often
many GB, are not hashed, so a model replaced in place is not seen; give it a new folder. Prompt templates
and the filter's tokenizer are hashed by their content.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["NOT_OUTPUT", "decides_output", "output_values"]

_SCHEDULING = (
    "how the engine schedules and places the same model: each prompt is sampled with a seed of its own "
    "whatever shares its batch (float rounding of other kernels aside)"
)
_COMPRESSION = "the zstd level of files whose records it does not change"
_PLAN = "read by `kun-hpc plan` only"

NOT_OUTPUT: dict[str, str] = {
    "run.name": "names the run folder and the report, which every merge writes anew",
    "run.dir": "where the run is, not what it holds",
    "executor.*": "where and how units run: executor, Slurm resources, parallelism, polling",
    "corpora.*.license": "carried into the dataset card, which every merge writes anew",
    "corpora.*.expected_records": _PLAN,
    "shard.output": "where the shards go, not what they hold",
    "shard.zstd_level": _COMPRESSION,
    "shard.max_bad_fraction": "judges the shard step's quarantine (exit 3); writes nothing",
    "reshard.output": "where the reshard goes, not what it holds",
    "reshard.zstd_level": _COMPRESSION,
    "pipeline.chunk_records": (
        "how often a unit commits: a unit resumes at the input record it stopped at, whatever the chunk "
        "size then, and a stage's output of a record does not depend on the records of its chunk"
    ),
    "pipeline.import_paths": "where your stages' modules are found: the stage's name is in its hash",
    "pipeline.throughput": _PLAN,
    "pipeline.expected_keep": _PLAN,
    "*.engine.tensor_parallel_size": _SCHEDULING,
    "*.engine.gpu_memory_utilization": _SCHEDULING,
    "*.engine.max_num_seqs": _SCHEDULING,
    "*.engine.max_num_batched_tokens": _SCHEDULING,
    "*.engine.enable_prefix_caching": _SCHEDULING,
    "*.engine.enable_chunked_prefill": _SCHEDULING,
    "*.engine.enforce_eager": _SCHEDULING,
    "*.engine.batch_size": _SCHEDULING,
    "*.engine.device": _SCHEDULING,
    "filter.tokenizer": "the tokenizer's path: the filter's hash holds its tokenizer.json's content",
    "filter.perplexity.batch_size": "units per scorer call: each unit is scored on its own",
    "label.template": "the template file's path: its content is label.template_sha256",
    "point.template": "the template file's path: its content is point.template_sha256",
    "answer.template": "the template file's path: its content is answer.template_sha256",
    "train.*": "`kun-hpc train` only; a trained model reaches the stages as a model folder (*.engine.model)",
    "dedup.batch_docs": "documents hashed per numpy batch: bounds memory, not which records are kept",
    # the dedup phases' units are laid out by these (their own hash keeps them: those phases run again), but
    # which records a dedup keeps does not depend on them, so nothing after the raw dedup runs again
    "dedup.partitions": "how the bucket phase splits its work: the dedup phases run again, nothing after",
    "dedup.shards_per_task": "shards per dedup unit: the dedup phases run again, nothing after them",
    "merge.output": "where the merge goes, not what it holds",
    "merge.auto": "whether `kun-hpc run` merges by itself",
    "merge.allow_partial": "admits incomplete groups; the merge's hashes cover the inputs it then reads",
    "merge.zstd_level": _COMPRESSION,
    "merge.quality.*": "the report's quality sections, which every merge computes anew",
}


@lru_cache(maxsize=4096)
def decides_output(key: str) -> bool:
    """Whether the dotted config ``key`` (``rules.min_answer_chars``, ``corpora.0.license``) can change what
    a step writes: it matches no pattern of :data:`NOT_OUTPUT`."""
    return not any(fnmatchcase(key, pattern) for pattern in NOT_OUTPUT)


def output_values(section: Any, key: str) -> Any:
    """The plain values (resolved, choices as strings) of the config ``section`` found at ``key``, without
    the entries :func:`decides_output` rejects, at any depth. A value that is not a section is returned
    as it is."""
    if isinstance(section, (DictConfig, ListConfig)):
        section = OmegaConf.to_container(section, resolve=True, enum_to_str=True)
    return _prune(section, key)


def _prune(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return {k: _prune(v, f"{key}.{k}") for k, v in value.items() if decides_output(f"{key}.{k}")}
    if isinstance(value, list):
        return [_prune(v, f"{key}.{i}") for i, v in enumerate(value) if decides_output(f"{key}.{i}")]
    return value
