"""What the Label, Point and Answer stages share: one model per unit, one engine call per chunk.

A unit loads its model once (``setup``); each chunk of records becomes prompts rendered from the stage's
template file, sorted longest first and handed to the engine in a single call, so vLLM schedules the whole
chunk at once (make ``pipeline.chunk_records`` several times ``engine.max_num_seqs``: the batch drains at
each chunk's end). Sampled outputs do not depend on which records share a chunk or a batch: each record gets
its own seed, derived from its id, so a unit resumed after a kill makes the same outputs as a fault-free run.
A prompt is a :class:`~kun_hpc.inference.Prompt`: only the template file's own ``<|im_start|>`` /
``<|im_end|>`` are control tokens; the record's text, instruction or answer is encoded as plain text even
where it holds such a token's text (issue 12).

What a model writes is cleaned as the filter cleans its input (issue 12): :func:`output_text` applies
:func:`kun_hpc.filtering.clean.strip_controls` (line breaks to ``\\n``, every other control and format
character removed), and a record lists in ``output_cleaned`` each field (``instruction``, ``answer``) that
cleaning changed.

Bad model output is a :class:`Rejected` with a reason, never a crash: ``prompt_too_long`` (over
``max_prompt_tokens`` or the engine's ``max_model_len``), ``output_too_long`` (cut at ``max_new_tokens``
without a stop, when ``reject_truncated``), ``empty_output`` (nothing but whitespace once cleaned),
``invalid_utf8`` (byte-level tokens that do not form characters decode to U+FFFD: the model's fault, since
the filter rejects input holding one as ``damaged_text``, as the stage itself does for an input record whose
prompt fields hold one), and ``missing_field`` for an input record without the fields the prompt needs.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

import xxhash
from omegaconf import DictConfig, OmegaConf

from kun_hpc.config import find_file
from kun_hpc.core.records import Rejected
from kun_hpc.filtering.clean import find_damage, strip_controls
from kun_hpc.inference import (
    FINISH_LENGTH,
    FINISH_PROMPT_TOO_LONG,
    Engine,
    EngineSpec,
    Generation,
    Prompt,
    SamplingSpec,
    load_engine,
)
from kun_hpc.inference.prompt import PromptTemplate
from kun_hpc.stages.base import Stage


def record_seed(stage: str, record: Mapping[str, Any], base: int) -> int:
    """A record's sampling seed: from its id (its text when it has none), the stage and the base seed."""
    key = str(record.get("id") or xxhash.xxh64_hexdigest(str(record.get("text", "")).encode()))
    return xxhash.xxh64_intdigest(f"{stage}\0{key}".encode(), seed=base) & 0x7FFF_FFFF


def output_text(g: Generation) -> str:
    """What the model wrote, cleaned like the filter's input: :func:`strip_controls` (issue 12)."""
    return strip_controls(g.text)


def bad_generation(g: Generation, reject_truncated: bool, text: str | None = None) -> tuple[str, str] | None:
    """(reason, detail) when a generation is unusable, else None; ``text`` is its :func:`output_text`
    (computed here when not given)."""
    if text is None:
        text = output_text(g)
    if g.finish_reason == FINISH_PROMPT_TOO_LONG:
        return "prompt_too_long", f"{g.num_prompt_tokens} prompt tokens leave no room to generate"
    if reject_truncated and g.finish_reason == FINISH_LENGTH:
        return "output_too_long", f"{len(g.token_ids)} tokens without a stop"
    if not text.strip():
        return "empty_output", f"nothing left once cleaned: {g.text[:200]!r}" if g.text.strip() else ""
    if "\ufffd" in text:
        return "invalid_utf8", text[:200]
    return None


def accept_output(record: dict, field: str, g: Generation, reject_truncated: bool) -> dict | Rejected:
    """``record`` with ``field`` set to the generation's :func:`output_text` -- and ``field`` appended to its
    ``output_cleaned`` list when cleaning changed the text -- or that row rejected by
    :func:`bad_generation`."""
    text = output_text(g)
    row = {**record, field: text}
    if text != g.text:
        row["output_cleaned"] = [*record.get("output_cleaned", []), field]
    bad = bad_generation(g, reject_truncated, text)
    return Rejected(row, *bad) if bad else row


def plain(section: Any) -> dict:
    return OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)


class LLMStage(Stage):
    """Base of the LLM stages. Options: the stage's config section (``engine``, ``sampling``, ``template``,
    ``template_sha256``, ``max_prompt_tokens``, ``reject_truncated``; see kun_hpc/config/kun.py).

    Subclasses set ``needs`` (record fields the prompt uses) and implement :meth:`prompt` and :meth:`accept`;
    :meth:`infer_stream` is the engine call (generation by default)."""

    name = "llm"

    @classmethod
    def model_keys(cls, cfg: DictConfig) -> tuple[str, ...]:
        return (cls.name,)

    needs: tuple[str, ...] = ("text",)

    def __init__(self, cfg: DictConfig, options: Any = None):
        super().__init__(cfg, options)
        o = self.options
        self.spec = EngineSpec.from_dict(plain(o["engine"]))
        self.sampling = SamplingSpec.from_dict(plain(o["sampling"]))
        self.max_prompt_tokens: int | None = o.get("max_prompt_tokens")
        self.reject_truncated = bool(o.get("reject_truncated", True))
        self.template_path = find_file(o["template"]).resolve()
        self.template_sha256 = str(o.get("template_sha256") or "")
        self.template: PromptTemplate | None = None
        self.engine: Engine | None = None  # a test may set one before setup()
        self._owns_engine = False

    # ---------------------------------------------------------------------------------------- lifecycle
    def setup(self) -> None:
        self.template = PromptTemplate.load(self.template_path, self.template_sha256, self.needs)
        if self.engine is None:
            self.engine = load_engine(dataclasses.replace(self.spec, model=str(find_file(self.spec.model))))
            self._owns_engine = True

    def close(self) -> None:
        if self._owns_engine and self.engine is not None:
            self.engine.close()
            self.engine = None
            self._owns_engine = False

    def provenance(self) -> dict:
        info = self.engine.info() if self.engine is not None else {}
        return {
            "model": info.get("model", self.spec.model),
            "backend": info.get("backend", self.spec.backend),
            "dtype": info.get("dtype", self.spec.dtype),
            "sampling": self.sampling.to_dict(),
            "template": str(self.template_path),
            "template_sha256": self.template.sha256[:16] if self.template else "",
        }

    # ------------------------------------------------------------------------------------------ a chunk
    def process(self, batch: list[dict]) -> list[dict | Rejected]:
        return next(self.process_stream(iter([batch])))

    def process_stream(self, batches: Iterator[list[dict]]) -> Iterator[list[dict | Rejected]]:
        """Each chunk's prompts, longest first, go to the engine as one group of :meth:`infer_stream`:
        vLLM queues the next chunk while the last sequences of this one decode."""
        prepared: deque[tuple[list, list[tuple[int, Prompt, dict]]]] = deque()

        def groups() -> Iterator[tuple[list[Prompt], list[int]]]:
            for batch in batches:
                out, todo = self._prepare(batch)
                prepared.append((out, todo))
                seeds = [record_seed(self.name, r, self.sampling.seed) for *_, r in todo]
                yield [p for _, p, _ in todo], seeds

        for results in self.infer_stream(groups()):
            out, todo = prepared.popleft()
            for (i, _, r), res in zip(todo, results, strict=True):
                out[i] = self.accept(r, res)
            yield out

    def _prepare(self, batch: list[dict]) -> tuple[list, list[tuple[int, Prompt, dict]]]:
        """Results known before inference (rejections) and what to infer: (index in batch, prompt, record
        as the prompt saw it), longest prompt first."""
        out: list[dict | Rejected | None] = [None] * len(batch)
        todo: list[tuple[int, Prompt, dict]] = []
        for i, r in enumerate(batch):
            missing = [f for f in self.needs if not isinstance(r.get(f), str)]
            if missing:
                out[i] = Rejected(r, "missing_field", ",".join(missing))
                continue
            damage = next(((f, d) for f in self.needs if (d := find_damage(r[f])) is not None), None)
            if damage is not None:  # input the filter did not see (no filter stage): not the model's fault
                out[i] = Rejected(r, "damaged_text", damage[1].describe(f"record's {damage[0]}"))
                continue
            made = self.prompt(r)
            if isinstance(made, Rejected):
                out[i] = made
            else:
                todo.append((i, made[0], {**r, **made[1]}))
        if todo and self.max_prompt_tokens:
            fits = []
            for item, ids in zip(todo, self.engine.encode([p for _, p, _ in todo]), strict=True):
                if len(ids) > self.max_prompt_tokens:
                    detail = f"{len(ids)} > {self.max_prompt_tokens} tokens"
                    out[item[0]] = Rejected(batch[item[0]], "prompt_too_long", detail)
                else:
                    fits.append(item)
            todo = fits
        todo.sort(key=lambda t: -len(t[1].text))  # longest first; ties keep their input order
        return out, todo

    def prompt(self, record: dict) -> tuple[Prompt, dict] | Rejected:
        """The prompt for a record (the record's fields are its data parts) and the fields to set on it
        before :meth:`accept` (or a rejection)."""
        return self.template.prompt(**{f: record[f] for f in self.needs}), {}

    def infer_stream(self, groups: Iterator[tuple[list[Prompt], list[int]]]) -> Iterator[list[Any]]:
        """The engine call, one result list per group of (prompts, seeds): generation by default."""
        return self.engine.generate_stream(groups, self.sampling)

    def accept(self, record: dict, result: Any) -> dict | Rejected:
        raise NotImplementedError
