"""Token counts with the tokenizer of the model that will read the units (the Label model's).

The model folder's ``tokenizer.json`` is loaded with the Rust ``tokenizers`` library and texts are encoded in
batches (``encode_batch_fast``: no offsets, parallel in Rust). Counts include the special tokens the
tokenizer adds itself (``add_special_tokens=True``), as ``len(AutoTokenizer(...)(text).input_ids)`` and the
inference engines' ``encode`` do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kun_hpc.config.paths import TokenizerNotFound, tokenizer_file
from kun_hpc.text_libraries import versions

__all__ = ["TokenCounter", "TokenizerNotFound", "tokenizer_file"]


class TokenCounter:
    def __init__(self, path: str | Path, add_special_tokens: bool = True):
        from tokenizers import Tokenizer

        self.path = tokenizer_file(path)
        self.add_special_tokens = add_special_tokens
        self.tokenizer = Tokenizer.from_file(str(self.path))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self._encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)

    def count(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(e.ids) for e in self._encode(list(texts), add_special_tokens=self.add_special_tokens)]

    def info(self) -> dict:
        return {"tokenizer": str(self.path.resolve()), **versions("tokenizers")}
