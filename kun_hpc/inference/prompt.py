"""Prompts made of template text and data text: only the template's own special tokens are control tokens.

A prompt is a template (``configs/prompts/*.txt``, ``train.chat_template``) whose literal text holds the
ChatML control tokens ``<|im_start|>`` and ``<|im_end|>``, filled with data: a corpus unit, a seed pair, an
instruction or an answer a model wrote. A tokenizer fed the whole string turns *every* occurrence of a
special token's text into that token, so a unit or a seed output holding the literal text ``<|im_end|>``
would end the turn in the middle of the data, and a model trained on it learns to end its turn mid-answer
(issue 12, kind 5). A :class:`Prompt` keeps the two apart; :func:`encode_prompts` splits a prompt only at the
special tokens written in its template parts and encodes everything between them, template text and data
alike, as plain text (``split_special_tokens``): ``<|im_end|>`` in data becomes its ordinary pieces.

Hugging Face tokenizers split out special tokens before they normalize and pre-tokenize, so a string's ids
are the ids of the pieces between its special tokens, joined. Where a prompt's data holds no special token's
text, :func:`encode_prompts` therefore makes exactly the ids of the whole string encoded as before (it is
the same call): clean prompts, model outputs and greedy parity do not change.

A :class:`PromptTemplate` is such a template file with ``{text}`` / ``{instruction}`` placeholders: the LLM
stages and the training sets fill it with a record's fields as data parts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from kun_hpc.core.hashing import file_sha256

Part = tuple[str, bool]  # (text, is_data)


@dataclass(frozen=True)
class Prompt:
    """A prompt as template parts (``is_data`` False: special-token text in them is a control token) and
    data parts (always plain text). ``str(prompt)`` is the whole text. Adjacent parts of one kind are
    merged and empty ones dropped, so equal texts made of equal kinds compare equal. ``prompt + "..."``
    (or ``"..." + prompt``) adds template text: only text the code itself writes may be joined that way."""

    parts: tuple[Part, ...] = ()

    def __post_init__(self) -> None:
        merged: list[Part] = []
        for text, is_data in self.parts:
            if not isinstance(text, str):
                raise TypeError(f"prompt part is {type(text).__name__}, not str")
            if not text:
                continue
            if merged and merged[-1][1] == bool(is_data):
                merged[-1] = (merged[-1][0] + text, bool(is_data))
            else:
                merged.append((text, bool(is_data)))
        object.__setattr__(self, "parts", tuple(merged))

    @classmethod
    def of_template(cls, text: str) -> Prompt:
        return cls(((text, False),))

    @classmethod
    def of_data(cls, text: str) -> Prompt:
        return cls(((text, True),))

    @cached_property
    def text(self) -> str:
        return "".join(text for text, _ in self.parts)

    def __str__(self) -> str:
        return self.text

    def __add__(self, other: Prompt | str) -> Prompt:
        if isinstance(other, str):
            other = Prompt.of_template(other)
        if not isinstance(other, Prompt):
            return NotImplemented
        return Prompt(self.parts + other.parts)

    def __radd__(self, other: str) -> Prompt:
        if not isinstance(other, str):
            return NotImplemented
        return Prompt.of_template(other) + self


PromptLike = str | Prompt  # what the engines take: a str is template text throughout


def special_tokens(tokenizer: Any) -> set[str]:
    """The texts a tokenizer turns into one special (control) token: its ``all_special_tokens`` and every
    added token marked special (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, ... for Qwen)."""
    special = {str(t) for t in (getattr(tokenizer, "all_special_tokens", None) or [])}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    special.update(t.content for t in decoder.values() if getattr(t, "special", False))
    special.discard("")
    return special


def _matcher(specials: Iterable[str]) -> re.Pattern[str] | None:
    """Finds special-token texts the way the tokenizer does: leftmost, then longest."""
    ordered = sorted(specials, key=lambda s: (-len(s), s))
    return re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None


def _template_specials(prompt: Prompt, match: re.Pattern[str]) -> list[tuple[int, int]]:
    """Spans (in ``prompt.text``) of the special-token texts written in the template parts."""
    spans: list[tuple[int, int]] = []
    at = 0
    for text, is_data in prompt.parts:
        if not is_data:
            spans.extend((at + m.start(), at + m.end()) for m in match.finditer(text))
        at += len(text)
    return spans


def _added_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids ``add_special_tokens=True`` puts before and after a text (a BOS for Llama, none for Qwen)."""
    probe = "a"
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            return full[:k], full[k + len(bare) :]
    raise ValueError(
        f"tokenizer {type(tokenizer).__name__}: {probe!r} encodes as {bare} alone but as {full} with "
        "add_special_tokens=True, which does not hold those ids: cannot tell what it adds around a text, so "
        "a prompt whose data holds a special token's text cannot be encoded with it"
    )


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str | Prompt], add_special_tokens: bool = True
) -> list[list[int]]:
    """Token ids of each prompt, one list per prompt (``[]`` for none).

    A ``str`` is template text throughout: it is encoded as the tokenizer encodes it (its special-token
    texts become special tokens). A :class:`Prompt` whose data holds no special token's text gets exactly
    those ids too; one whose data does is encoded piece by piece between its template's special tokens,
    the pieces with ``split_special_tokens=True``, so the data's special-token text is plain text (issue 12).
    ``add_special_tokens`` adds what the tokenizer adds around a text (a BOS, ...) either way."""
    if not prompts:
        return []
    texts = [str(p) for p in prompts]
    match = _matcher(special_tokens(tokenizer))
    split: dict[int, list[tuple[int, int]]] = {}  # prompt index -> its template's special-token spans
    if match is not None:
        for i, p in enumerate(prompts):
            if isinstance(p, Prompt) and any(d for _, d in p.parts):
                trusted = _template_specials(p, match)
                if [m.span() for m in match.finditer(texts[i])] != trusted:
                    split[i] = trusted
    whole = [i for i in range(len(texts)) if i not in split]
    out: list[list[int]] = [[] for _ in texts]
    if whole:
        encoded = tokenizer([texts[i] for i in whole], add_special_tokens=add_special_tokens)["input_ids"]
        for i, ids in zip(whole, encoded, strict=True):
            out[i] = list(ids)
    if not split:
        return out
    pieces: list[str] = []
    for i, spans in split.items():
        starts = [0] + [end for _, end in spans]
        ends = [start for start, _ in spans] + [len(texts[i])]
        pieces.extend(texts[i][a:b] for a, b in zip(starts, ends, strict=True))
    plain = iter(tokenizer(pieces, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    before, after = _added_around(tokenizer) if add_special_tokens else ([], [])
    for i, spans in split.items():
        ids = [*before, *next(plain)]
        for start, end in spans:
            ids.append(tokenizer.convert_tokens_to_ids(texts[i][start:end]))
            ids.extend(next(plain))
        out[i] = ids + after
    return out


PLACEHOLDER = re.compile(r"\{(text|instruction)\}")


class PromptTemplate:
    """A prompt template file: its text with ``{text}`` / ``{instruction}`` placeholders, substituted in one
    pass (a record's text holding ``{instruction}`` stays as it is). :meth:`prompt` keeps the template's
    literal text (whose ``<|im_start|>`` / ``<|im_end|>`` are control tokens) apart from the values
    (data: encoded as plain text whatever they hold, issue 12); :meth:`render` is its text."""

    def __init__(self, text: str, path: Path | None = None):
        self.text = text
        self.path = path
        self.fields = set(PLACEHOLDER.findall(text))
        self.sha256 = ""

    @classmethod
    def load(cls, path: Path, expected_sha256: str, needs: Sequence[str]) -> PromptTemplate:
        path = Path(path)
        template = cls(path.read_bytes().decode("utf-8"), path)
        template.sha256 = file_sha256(path)
        if expected_sha256 and template.sha256 != expected_sha256:
            raise RuntimeError(
                f"prompt template {path} changed after this run was configured (sha256 "
                f"{template.sha256[:16]}, configured {expected_sha256[:16]}): run `kun-hpc run` again with "
                "your preset (a run folder keeps the hash it was run with) to re-plan with the new template"
            )
        missing = [f"{{{f}}}" for f in needs if f not in template.fields]
        extra = [f"{{{f}}}" for f in sorted(template.fields - set(needs))]
        if missing or extra:
            raise ValueError(
                f"prompt template {path}: needs the placeholders {' '.join(f'{{{f}}}' for f in needs)}"
                + (f"; missing {' '.join(missing)}" if missing else "")
                + (f"; {' '.join(extra)} cannot be filled by this stage" if extra else "")
            )
        return template

    def prompt(self, **values: str) -> Prompt:
        """The template filled with ``values`` (one per placeholder; KeyError for a missing one)."""
        parts: list[tuple[str, bool]] = []
        at = 0
        for m in PLACEHOLDER.finditer(self.text):
            parts += [(self.text[at : m.start()], False), (values[m.group(1)], True)]
            at = m.end()
        return Prompt((*parts, (self.text[at:], False)))

    def render(self, **values: str) -> str:
        """The text of :meth:`prompt`."""
        return self.prompt(**values).text


# the ChatML chat template (Jinja, as tokenizer_config.json holds one) for a tokenizer that has none: what a
# trained model folder (kun_hpc/train/sft.py) and an export's token counts (kun_hpc/merge/export.py) use
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
