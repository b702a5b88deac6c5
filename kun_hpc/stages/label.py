"""Label: instruction back-translation. The Label model reads a text and writes the instruction it would
answer; the record gets ``instruction``. Kun's instruction post-rules (the ``rules`` section) run right away
when ``label.apply_rules``, so Point never pays for an instruction the rules would drop. For the same reason,
when the config names an Answer model (kun_hpc/stages/answer.py), an instruction with which the Answer prompt
would not fit its ``max_prompt_tokens`` is rejected here as ``answer_prompt_too_long`` (issue 12, kind 7)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from kun_hpc.core.records import Rejected
from kun_hpc.inference import Generation
from kun_hpc.stages.answer import AnswerBudget
from kun_hpc.stages.answer import configured as budgeted
from kun_hpc.stages.llm import LLMStage, accept_output
from kun_hpc.stages.rules import INSTRUCTION_SETTINGS, Drop, RuleSet


class Label(LLMStage):
    name = "label"
    needs = ("text",)

    def __init__(self, cfg, options=None):
        super().__init__(cfg, options)
        self.rules = RuleSet(cfg.rules) if self.options.get("apply_rules", True) else None
        self.budget: AnswerBudget | None = None

    def setup(self) -> None:
        super().setup()
        self.budget = AnswerBudget.from_config(self.cfg)

    @classmethod
    def model_keys(cls, cfg: DictConfig) -> tuple[str, ...]:
        return ("label", "answer") if budgeted(cfg) else ("label",)  # the budget reads Answer's tokenizer

    @classmethod
    def hash_inputs(cls, cfg: DictConfig) -> dict:
        """The instruction rules it applies and the Answer budget it checks decide its output too (the answer
        rules' settings do not: changing them re-runs the rules stage only)."""
        section = OmegaConf.to_container(cfg.rules, resolve=True)
        rules = {"rules": {k: section[k] for k in INSTRUCTION_SETTINGS}} if cfg.label.apply_rules else {}
        return {**rules, **AnswerBudget.hash_inputs(cfg)}

    def accept(self, record: dict, g: Generation) -> dict | Rejected:
        row = accept_output(record, "instruction", g, self.reject_truncated)
        if isinstance(row, Rejected):
            return row
        if self.rules is not None:
            cleaned = self.rules.instruction(row["instruction"])
            if isinstance(cleaned, Drop):
                return Rejected(row, cleaned.reason, cleaned.detail)
            row["instruction"] = cleaned
        if self.budget is not None:
            (why,) = self.budget.too_long([row["text"]], [row["instruction"]])
            if why is not None:
                return Rejected(row, "answer_prompt_too_long", why)
        return row

    def provenance(self) -> dict:
        rules = self.rules.instruction_rules if self.rules is not None else []
        budget = self.budget
        checked = {"answer_max_prompt_tokens": budget.max_prompt_tokens} if budget is not None else {}
        return {**super().provenance(), "instruction_rules": rules, **checked}
