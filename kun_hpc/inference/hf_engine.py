"""transformers backend: batched ``generate`` and batched prompt log-probs with left padding.

Prompts are sorted by length and cut into batches of ``batch_size`` (less padding), then put back in order.
Left padding needs care twice: position ids must count only real tokens (``generate`` does this itself, a
plain forward does not), and a padded row's log-probs are only those whose *previous* token is real.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers.decoders import DecodeStream
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from kun_hpc.inference.engine import (
    FINISH_LENGTH,
    FINISH_STOP,
    Engine,
    EngineSpec,
    Generation,
    SamplingSpec,
    check_prompts,
    load_tokenizer,
    resolved_dtype,
)
from kun_hpc.inference.prompt import PromptLike

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class HFEngine(Engine):
    def __init__(self, spec: EngineSpec, path: Path):
        self.spec = spec
        self.model_path = path
        self.device = _device(spec.device)
        self._tokenizer = load_tokenizer(path, spec.trust_remote_code)
        kwargs: dict[str, Any] = {
            "dtype": TORCH_DTYPES.get(resolved_dtype(spec, path), "auto"),
            "local_files_only": True,
            "trust_remote_code": spec.trust_remote_code,
            **spec.extra,
        }
        self.model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(self.device).eval()
        cfg = self.model.config
        self._max_len = int(spec.max_model_len or getattr(cfg, "max_position_embeddings", 0) or 2048)
        # the ids that end a generation, as vLLM takes them: the tokenizer's eos and generation_config's
        # (which from_pretrained derives from config.json when the folder has no generation_config.json)
        eos: set[int] = set()
        for source in (self._tokenizer.eos_token_id, self.model.generation_config.eos_token_id):
            if source is not None:
                eos.update([source] if isinstance(source, int) else source)
        self.eos_ids = sorted(eos)
        pad = self._tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)
        # sampling comes only from SamplingSpec: a chat model's generation_config.json (top_k 20,
        # repetition_penalty 1.05, ...) must not leak in, as it does not in vLLM with explicit SamplingParams
        self.model.generation_config = GenerationConfig(
            eos_token_id=self.eos_ids or None, pad_token_id=self.pad_id, bos_token_id=cfg.bos_token_id
        )

    # ------------------------------------------------------------------------------------------ interface
    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_len

    def info(self) -> dict[str, Any]:
        return {**super().info(), "dtype": str(self.model.dtype).removeprefix("torch.")}

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[PromptLike], sampling: SamplingSpec, seeds: Sequence[int] | None = None
    ) -> list[Generation]:
        ids, seeds, out, todo = self._prepare_generate(prompts, sampling, seeds)
        stop_ids, stops = self.stop_token_ids(sampling.stop), self.text_stops(sampling.stop)
        for batch in self._batches(todo, ids):
            rows = [ids[i] for i in batch]
            gens = self._generate_batch(rows, sampling, [seeds[i] for i in batch], stop_ids, stops)
            for i, g in zip(batch, gens, strict=True):
                out[i] = g
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def next_token_logprobs(
        self, prompts: Sequence[PromptLike], token_ids: Sequence[int]
    ) -> list[list[float] | None]:
        ids, todo = self._prepare_scoring(prompts)
        wanted = torch.tensor([int(t) for t in token_ids], dtype=torch.long)
        out: list[list[float] | None] = [None] * len(ids)
        for batch in self._batches(todo, ids):
            input_ids, mask = self._left_pad([ids[i] for i in batch])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = (
                self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False)
                .logits[:, -1]
                .float()
            )
            lp = (logits - logits.logsumexp(-1, keepdim=True)).cpu()[:, wanted]
            for i, row in zip(batch, lp.tolist(), strict=True):
                out[i] = row
        return out

    @torch.inference_mode()
    def prompt_logprobs(self, prompts: Sequence[PromptLike]) -> list[list[float]]:
        prompts = check_prompts(prompts)
        ids = self.encode(prompts)
        self._check_fits(ids, 0)
        out: list[list[float]] = [[] for _ in ids]
        for batch in self._batches([i for i, x in enumerate(ids) if len(x) > 1], ids):
            rows = [ids[i] for i in batch]
            input_ids, mask = self._left_pad(rows)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(
                input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False
            )
            logits = logits.logits[:, :-1].float()
            target = input_ids[:, 1:]
            lp = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
            # left padding: token t's log-prob is valid only where token t-1 is real, i.e. the last n-1
            lp = lp.cpu()
            for i, row, values in zip(batch, rows, lp, strict=True):
                out[i] = values[values.shape[0] - (len(row) - 1) :].tolist()
        return out

    # ------------------------------------------------------------------------------------------- helpers
    def _batches(self, order: list[int], ids: list[list[int]]) -> list[list[int]]:
        order = sorted(order, key=lambda i: -len(ids[i]))  # longest first: memory trouble shows up at once
        size = self.spec.batch_size
        return [order[k : k + size] for k in range(0, len(order), size)]

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):
            if r:
                input_ids[k, width - len(r) :] = torch.tensor(r, dtype=torch.long)
                mask[k, width - len(r) :] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _generate_batch(
        self,
        rows: list[list[int]],
        sampling: SamplingSpec,
        seeds: list[int],
        stop_ids: list[int],
        stops: list[str],
    ) -> list[Generation]:
        """``stop_ids``: the special stop tokens; ``stops``: the stop strings matched against the text."""
        input_ids, mask = self._left_pad(rows)
        width = input_ids.shape[1]
        room = self._max_len - min(len(r) for r in rows)
        eos = sorted(set(self.eos_ids) | set(stop_ids))
        cfg = GenerationConfig(
            max_new_tokens=min(sampling.max_new_tokens, room),
            do_sample=False,  # sampling, if any, is RowSampler's: greedy then takes the token it drew
            num_beams=1,
            repetition_penalty=1.0,  # applied by RepetitionPenalty below
            eos_token_id=eos or None,
            pad_token_id=self.pad_id,
        )
        processors = LogitsProcessorList()
        if sampling.repetition_penalty != 1.0:
            processors.append(RepetitionPenalty(sampling.repetition_penalty, mask))
        if not sampling.greedy:
            processors.append(RowSampler(seeds, sampling.temperature, sampling.top_p))
        criteria = StoppingCriteriaList()
        if stops:
            criteria.append(StopStrings(self._tokenizer, stops, width))
        seqs = self.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            generation_config=cfg,
            logits_processor=processors,
            stopping_criteria=criteria,
        )
        new = seqs[:, width:].cpu().tolist()
        return [self._finish(r, toks, stops, eos) for r, toks in zip(rows, new, strict=True)]

    def _finish(self, prompt: list[int], toks: list[int], stops: list[str], eos_ids: list[int]) -> Generation:
        """Cut one row's new tokens where vLLM stops and detokenize them as vLLM does (an incremental
        ``DecodeStream`` primed with the prompt: an incomplete trailing character is held back), so text,
        token ids and finish reason match vLLM's."""
        toks = toks[: self._max_len - len(prompt)]
        eos = set(eos_ids)
        backend = getattr(self._tokenizer, "backend_tokenizer", None)
        # a slow tokenizer has no backend: decode whole prefixes instead
        stream = None if backend is None else DecodeStream(ids=prompt, skip_special_tokens=True)
        text = ""
        for k, t in enumerate(toks):
            if t in eos:
                return Generation(text, toks[: k + 1], FINISH_STOP, len(prompt))
            if stream is not None:
                piece = stream.step(backend, t) or ""
            else:
                piece = self._decode(toks[: k + 1])[len(text) :]
            text += piece
            if piece and stops:
                cut = _stop_cut(text, len(piece), stops)
                if cut is not None:
                    at, stop = cut
                    return Generation(text[:at], toks[: k + 1], FINISH_STOP, len(prompt), stop)
        return Generation(text, toks, FINISH_LENGTH, len(prompt))

    def _decode(self, toks: list[int]) -> str:
        return self._tokenizer.decode(toks, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _stop_cut(text: str, new_chars: int, stops: list[str]) -> tuple[int, str] | None:
    """Where ``text`` is cut, and on which stop string, if the newest ``new_chars`` completed a stop string
    (the one ending first)."""
    best: tuple[int, int, str] | None = None
    for s in stops:
        i = text.find(s, max(0, len(text) - new_chars - len(s) + 1))
        if i >= 0 and (best is None or i + len(s) < best[0]):
            best = (i + len(s), i, s)
    return None if best is None else best[1:]


class RepetitionPenalty(LogitsProcessor):
    """vLLM's (and CTRL's) repetition penalty over prompt and generated tokens, ignoring left padding
    (transformers' own processor would also penalise the pad token in padded rows)."""

    def __init__(self, penalty: float, prompt_mask: torch.Tensor):
        self.penalty = penalty
        self.prompt_mask = prompt_mask.bool()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        real = torch.ones_like(input_ids, dtype=torch.long)
        width = self.prompt_mask.shape[1]
        real[:, :width] = self.prompt_mask.long()
        seen = torch.zeros_like(scores, dtype=torch.long).scatter_add_(1, input_ids, real) > 0
        penalised = torch.where(scores > 0, scores / self.penalty, scores * self.penalty)
        return torch.where(seen, penalised, scores)


class RowSampler(LogitsProcessor):
    """Temperature + top-p sampling with one ``torch.Generator`` per row, seeded per prompt: a row's draws
    never depend on the other rows of its batch (vLLM seeds each request the same way). It returns logits
    where only the drawn token is finite, so greedy decoding takes it."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = (scores.float() / self.temperature).softmax(-1).cpu()
        if self.top_p < 1.0:
            # keep the smallest set of most likely tokens whose mass reaches top_p (the first always)
            sorted_p, order = probs.sort(-1, descending=True)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= self.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        picks = [
            int(torch.multinomial(row, 1, generator=g)) for row, g in zip(probs, self.generators, strict=True)
        ]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(picks), device=out.device), torch.tensor(picks, device=out.device)] = 0.0
        return out


class StopStrings(StoppingCriteria):
    """Stops a row once its generated text contains a stop string (checked on a tail window each step)."""

    def __init__(self, tokenizer: Any, stops: list[str], prompt_width: int):
        self.tokenizer = tokenizer
        self.stops = stops
        self.prompt_width = prompt_width
        # every token holds at least one byte, so the tokens that complete a stop string fit in this window
        self.window = max(len(s.encode("utf-8")) for s in stops) + 1

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        tail = input_ids[:, self.prompt_width :][:, -self.window :]
        texts = self.tokenizer.batch_decode(
            tail, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        done = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
