"""Answer (polishment): the Primary Chat model rewrites the raw text as an answer to the instruction; the
record gets ``answer``. The prompt must fit ``max_prompt_tokens`` (512 in Kun): the instruction is cut, by
tokens, so that it does; the record keeps the instruction as the model saw it. A text too long to leave room
for any of its instruction is rejected as ``prompt_too_long``. Text and instruction are the prompt's data: a
special token's text in them is plain text (issue 12), also where the instruction is cut."""

from __future__ import annotations

from kun_hpc.inference import Generation, Prompt, encode_prompts
from kun_hpc.stages.base import Rejected
from kun_hpc.stages.llm import LLMStage, accept_output


class Answer(LLMStage):
    name = "answer"
    needs = ("text", "instruction")
    budget_in_prompt = True

    def prompt(self, record: dict) -> tuple[Prompt, dict] | Rejected:
        text, instruction = record["text"], record["instruction"]
        full = self.template.prompt(text=text, instruction=instruction)
        budget = self.max_prompt_tokens
        if budget is None or self._tokens(full) <= budget:
            return full, {}
        if self._tokens(self.template.prompt(text=text, instruction="")) >= budget:
            return Rejected(record, "prompt_too_long", f"the text alone fills the {budget}-token prompt")
        cut = self.fit_instruction(text, instruction, budget)
        if not cut.strip():
            return Rejected(record, "prompt_too_long", f"no room for the instruction in {budget} tokens")
        return self.template.prompt(text=text, instruction=cut), {"instruction": cut}

    def fit_instruction(self, text: str, instruction: str, budget: int) -> str:
        """The longest token prefix of the instruction with which the prompt fits ``budget`` tokens (an
        incomplete character at the cut is dropped)."""
        tok = self.engine.tokenizer
        (ids,) = encode_prompts(tok, [Prompt.of_data(instruction)], add_special_tokens=False)

        def prefix(k: int) -> str:
            return tok.decode(ids[:k], clean_up_tokenization_spaces=False).rstrip("\ufffd")

        lo, hi = 0, len(ids)  # prefix(lo) fits; find the largest such lo
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._tokens(self.template.prompt(text=text, instruction=prefix(mid))) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return prefix(lo)

    def _tokens(self, prompt: Prompt) -> int:
        return len(self.engine.encode([prompt])[0])

    def accept(self, record: dict, g: Generation) -> dict | Rejected:
        return accept_output(record, "answer", g, self.reject_truncated)

    def provenance(self) -> dict:
        return {**super().provenance(), "max_prompt_tokens": self.max_prompt_tokens}
