"""Answer (polishment): the Primary Chat model rewrites the raw text as an answer to the instruction; the
record gets ``answer``. Text and instruction are the prompt's data: a special token's text in them is plain
text (issue 12).

The prompt must fit ``answer.max_prompt_tokens`` (512 in Kun). No record may be dropped here for a length an
earlier, cheaper stage could know (issue 12, kind 7), so :class:`AnswerBudget` is checked before, whenever
the config names an Answer model (also in an invocation whose ``pipeline.stages`` stops earlier): the filter
cuts units so that the prompt with an empty instruction leaves ``answer.instruction_tokens`` for the
instruction, and Label rejects an instruction with which the whole prompt would not fit
(``answer_prompt_too_long``). An instruction is never cut: a prompt over the budget here (a record made under
another budget) is rejected as ``prompt_too_long``, never sent with a shortened instruction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kun_hpc.config import find_file
from kun_hpc.core.records import Rejected
from kun_hpc.inference import Generation, encode_prompts, load_tokenizer
from kun_hpc.inference.prompt import PromptTemplate
from kun_hpc.stages.llm import LLMStage, accept_output


class Answer(LLMStage):
    name = "answer"
    needs = ("text", "instruction")

    def accept(self, record: dict, g: Generation) -> dict | Rejected:
        return accept_output(record, "answer", g, self.reject_truncated)

    def provenance(self) -> dict:
        return {**super().provenance(), "max_prompt_tokens": self.max_prompt_tokens}


class AnswerBudget:
    """What the Answer prompt leaves to a unit and to its instruction, counted with the Answer model's own
    tokenizer and template, exactly as the Answer stage will count them.

    ``max_prompt_tokens``: the whole prompt's budget; ``instruction_tokens``: the room kept for the
    instruction when units are cut. :meth:`unit_room` is the unit budget this leaves (for the filter's
    segmentation); :meth:`too_long` names the (text, instruction) pairs whose prompt does not fit.
    """

    def __init__(
        self, template: PromptTemplate, tokenizer: Any, max_prompt_tokens: int, instruction_tokens: int
    ):
        self.template = template
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.instruction_tokens = instruction_tokens

    @classmethod
    def from_config(cls, cfg: DictConfig) -> AnswerBudget | None:
        """The budget of the run's Answer stage; None when the config names no Answer model or no
        ``max_prompt_tokens``. Loads the Answer model's tokenizer (not the model): raises
        :class:`~kun_hpc.inference.ModelPathError` when ``answer.engine.model`` is not a model folder."""
        a = cfg.answer
        if not configured(cfg):
            return None
        template = PromptTemplate.load(find_file(a.template), str(a.template_sha256), Answer.needs)
        tokenizer = load_tokenizer(find_file(a.engine.model), bool(a.engine.trust_remote_code))
        return cls(template, tokenizer, int(a.max_prompt_tokens), int(a.instruction_tokens))

    @staticmethod
    def hash_inputs(cfg: DictConfig) -> dict:
        """What the budget depends on, for the config hash of the stages that apply it (filter, label)."""
        if not configured(cfg):
            return {}
        a = cfg.answer
        keep = {"max_prompt_tokens": a.max_prompt_tokens, "instruction_tokens": a.instruction_tokens}
        return {"answer_budget": {**keep, "template_sha256": a.template_sha256, "model": str(a.engine.model)}}

    def prompt_tokens(self, texts: Sequence[str], instructions: Sequence[str]) -> list[int]:
        """Tokens of each Answer prompt (text, instruction), as the engine encodes it."""
        prompts = [
            self.template.prompt(text=t, instruction=i) for t, i in zip(texts, instructions, strict=True)
        ]
        return [len(ids) for ids in encode_prompts(self.tokenizer, prompts)]

    def unit_room(self) -> int:
        """The most tokens a unit may have: the budget less the template and ``instruction_tokens`` (counted
        with an empty unit and instruction; the filter checks each unit's real prompt too)."""
        return self.max_prompt_tokens - self.instruction_tokens - self.prompt_tokens([""], [""])[0]

    def units_too_long(self, texts: Sequence[str]) -> list[str | None]:
        """Per unit, why its prompt leaves less than ``instruction_tokens`` to the instruction, or None."""
        limit = self.max_prompt_tokens - self.instruction_tokens
        return [
            None
            if n <= limit
            else f"the Answer prompt holds {n} tokens with it and an empty instruction: over "
            f"{limit} = answer.max_prompt_tokens {self.max_prompt_tokens} - answer.instruction_tokens "
            f"{self.instruction_tokens}"
            for n in self.prompt_tokens(texts, [""] * len(texts))
        ]

    def too_long(self, texts: Sequence[str], instructions: Sequence[str]) -> list[str | None]:
        """Per pair, why its Answer prompt would not fit ``max_prompt_tokens``, or None."""
        return [
            None
            if n <= self.max_prompt_tokens
            else f"the Answer prompt would hold {n} tokens > answer.max_prompt_tokens "
            f"{self.max_prompt_tokens}"
            for n in self.prompt_tokens(texts, instructions)
        ]


def configured(cfg: DictConfig) -> bool:
    """Whether the config budgets an Answer stage: it names an Answer model and ``max_prompt_tokens``. That,
    not this invocation's ``pipeline.stages``, decides: a run that filters and labels first and answers
    later cuts the same units and keeps the same config hashes."""
    a = cfg.answer
    return (
        not OmegaConf.is_missing(a.engine, "model")
        and bool(a.engine.model)
        and a.max_prompt_tokens is not None
    )
