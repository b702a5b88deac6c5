"""Expected token ids computed without kun_hpc's encoder: the right values of the control-text tests
(issue 12, kind 5).

:func:`plain_ids` runs a fast tokenizer's normalizer, pre-tokenizer and BPE model by hand, so the added
tokens (``<|im_end|>``, ...) are never matched: it is the text as plain text. :func:`expected_ids` splits a
template file's own text at its special tokens *before* the values go in: those, and only those, are
control tokens; everything else is plain text."""

from __future__ import annotations

import re
from typing import Any

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # the tiny model's special tokens
_SPECIAL = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")
_PLACEHOLDER = re.compile(r"\{(text|instruction)\}")


def plain_ids(tokenizer: Any, text: str) -> list[int]:
    """``text`` as plain text: normalizer, pre-tokenizer and model of the tokenizer, no added tokens."""
    backend = tokenizer.backend_tokenizer
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    pieces = backend.pre_tokenizer.pre_tokenize_str(text)
    return [token.id for piece, _ in pieces for token in backend.model.tokenize(piece)]


def expected_ids(tokenizer: Any, template_text: str, **values: str) -> list[int]:
    """The ids of a prompt made from ``template_text``: its own special tokens as special tokens, the rest
    (its literal text and the values filled in) as plain text."""
    ids: list[int] = []
    for k, part in enumerate(_SPECIAL.split(template_text)):
        if k % 2:
            ids.append(tokenizer.convert_tokens_to_ids(part))
        elif part:
            ids += plain_ids(tokenizer, _PLACEHOLDER.sub(lambda m: values[m.group(1)], part))
    return ids
