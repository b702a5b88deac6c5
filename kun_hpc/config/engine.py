"""The ``engine`` and ``sampling`` of an LLM stage: which model, which backend and how to run and sample it.

:class:`EngineSpec` and :class:`SamplingSpec` are both the config schema (``label.engine``,
``point.sampling``, ...) and what :mod:`kun_hpc.inference` loads and samples with. Constructed directly they
check their values (ValueError); in a config, :func:`validate_engine` and :func:`validate_sampling` report
the same faults naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from omegaconf import DictConfig

from kun_hpc.config.checks import check
from kun_hpc.config.choices import BACKENDS, DTYPES, Backend, Dtype

__all__ = ["BACKENDS", "DTYPES", "EngineSpec", "SamplingSpec", "validate_engine", "validate_sampling"]


@dataclass
class SamplingSpec:
    """How to sample. ``temperature == 0`` is greedy decoding (top_p and seed are then irrelevant).

    Stop strings end a generation; the returned text excludes the stop string (as vLLM does), which
    :attr:`Generation.stop_string` names (Point's ``stop_at_verdict`` puts a verdict tag back). A stop string
    that is a special token (``<|im_end|>``) never shows in the text, which is decoded without special tokens:
    both engines stop on it as a token, and only as a token: a model that writes its text as plain pieces
    wrote content, which is neither cut nor ended there (issue 12). The seed makes sampled outputs
    reproducible: both engines draw each prompt's tokens from a generator of its own, seeded with ``seed``
    or with the prompt's entry of ``generate(..., seeds=)``, so a prompt's output does not depend on the
    other prompts of its batch.
    """

    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # nucleus sampling, in (0, 1]
    repetition_penalty: float = 1.0  # 1.0: none; > 1 discourages repeats
    max_new_tokens: int = 512  # a generation stops here (then it is truncated)
    stop: list[str] = field(default_factory=list)  # strings (or special tokens) that end a generation
    seed: int = 0  # base seed; a record's seed comes from it and the record's id (not from its batch)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [str(s) for s in (self.stop or [])]
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamplingSpec:
        return cls(**_known(cls, d))


@dataclass
class EngineSpec:
    """Which model, which backend and how to run it.

    vLLM uses every field but ``batch_size`` and ``device``; transformers uses ``model``, ``dtype``,
    ``max_model_len``, ``trust_remote_code``, ``batch_size`` and ``device``. ``extra`` goes unchanged to
    ``vllm.LLM(...)`` or ``AutoModelForCausalLM.from_pretrained(...)``.

    ``dtype="auto"`` means the checkpoint's own dtype in both backends (vLLM's own "auto" would silently
    run a float32 checkpoint in bfloat16). ``enforce_eager`` skips vLLM's torch.compile / CUDA graphs: on
    CPU that cuts engine start from ~20-35 s to under a second of engine init.
    """

    model: str  # a local model folder (config.json, weights, tokenizer); nothing is downloaded
    backend: Backend = Backend.vllm  # vllm | transformers
    dtype: Dtype = Dtype.auto  # auto (the checkpoint's) | bfloat16 | float16 | float32
    tensor_parallel_size: int = 1  # vLLM: GPUs one model is split over
    gpu_memory_utilization: float = 0.9  # vLLM: share of GPU memory for weights and KV cache
    max_num_seqs: int = 256  # vLLM: sequences in flight at once
    max_model_len: int | None = None  # prompt + generation tokens; None: the model's
    enable_prefix_caching: bool = True  # vLLM: reuse the KV cache of a shared prompt prefix
    enable_chunked_prefill: bool | None = None  # None: vLLM's default
    enforce_eager: bool = False  # vLLM: no torch.compile / CUDA graphs (faster start, slower steps)
    max_num_batched_tokens: int | None = None  # None: vLLM's default
    trust_remote_code: bool = False  # run model code shipped in the model folder
    seed: int = 0  # the engine's global seed (sampling seeds: sampling.seed)
    batch_size: int = 16  # transformers: prompts per forward/generate call
    device: str = "auto"  # transformers: "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    # more keyword arguments for vllm.LLM(...) or AutoModelForCausalLM.from_pretrained(...)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = str(self.model)
        if self.backend not in BACKENDS:
            raise ValueError(f"engine backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"engine dtype must be one of {DTYPES}, got {self.dtype!r}")
        # plain strings at run time, whether given as strings or as members (a config's section)
        self.backend, self.dtype = str(self.backend), str(self.dtype)
        if self.batch_size < 1 or self.max_num_seqs < 1 or self.tensor_parallel_size < 1:
            raise ValueError("batch_size, max_num_seqs and tensor_parallel_size must be >= 1")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        self.extra = dict(self.extra or {})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineSpec:
        return cls(**_known(cls, d))


def _known(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(names)}")
    return dict(d)


def validate_engine(e: DictConfig, key: str) -> None:
    """An ``engine`` section at ``key`` (``label.engine``, ...); backend and dtype are checked at load."""
    for k in ("tensor_parallel_size", "max_num_seqs", "batch_size"):
        check(e[k] >= 1, f"{key}.{k}", "must be >= 1", e[k])
    check(0 < e.gpu_memory_utilization <= 1, f"{key}.gpu_memory_utilization", "must be in (0, 1]",
          e.gpu_memory_utilization)  # fmt: skip
    check(e.max_model_len is None or e.max_model_len >= 2, f"{key}.max_model_len", "must be >= 2",
          e.max_model_len)  # fmt: skip


def validate_sampling(sp: DictConfig, key: str) -> None:
    """A ``sampling`` section at ``key`` (``label.sampling``, ...)."""
    check(sp.temperature >= 0, f"{key}.temperature", "must be >= 0", sp.temperature)
    check(0 < sp.top_p <= 1, f"{key}.top_p", "must be in (0, 1]", sp.top_p)
    check(sp.repetition_penalty > 0, f"{key}.repetition_penalty", "must be > 0", sp.repetition_penalty)
    check(sp.max_new_tokens >= 1, f"{key}.max_new_tokens", "must be >= 1", sp.max_new_tokens)
    check(all(sp.stop), f"{key}.stop", "stop strings must be non-empty", list(sp.stop))
