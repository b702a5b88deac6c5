"""Cut cleaned documents into self-contained units of at most ``max_tokens`` tokens.

A document that fits is one unit. A longer one is cut at the coarsest boundary that splits
it -- paragraphs (lines), then sentences, then clauses, then spaces -- each piece going one level finer only
while it is still over the budget. Consecutive pieces are then packed greedily back into units up to the
budget, so units are as long as the budget allows and end at the coarsest boundary available. A piece with no
boundary left that is still too long (a 600-token run-on sentence, a table without punctuation) becomes a
``too_long`` segment: rejected with its text, never cut mid-sentence and never dropped silently.

The marks are derived from Unicode, not listed by hand (issue 12: a hand list missed ``⋯⋯``):

* sentences end after a run of Unicode's ``Sentence_Terminal`` characters (。！？｡．!? ‼ ⁇ ︒ ﹗ ...), of
  characters whose NFKC form is made of them (‥ … ︙), of ellipses (punctuation or symbols named
  ``... ELLIPSIS``: … ⋯ ⋮ ︙ ᠁) and of semicolons (; and its NFKC forms ；﹔︔);
* clauses end after a run of commas, enumeration commas and colons (, 、 : and their NFKC forms ，﹐︐ 、﹑︑､
  ：﹕︓), a reasoned list since Unicode has no clause property;
* the closing brackets and quotes that follow (categories Pe and Pf, and " ' ＂ ＇) stay with the sentence or
  clause they close.

A full stop, comma or colon whose NFKC form is ``.``, ``,`` or ``:`` does not cut between two letters or
digits (3.14, ３．１４, 1,000, 10:30, www.example.com stay whole), while a run of two or more such dots
(``...``) always cuts.

Every unit is a contiguous span of the cleaned text, trimmed of spaces and newlines; the spans of a
document's segments cover all of its non-whitespace characters, in order. Token counts are computed on the
unit's exact text (a packed unit is re-counted: BPE merges across a boundary, e.g. "。\\n", so counts are not
additive), batched over all documents of a call.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import regex

# Planes 0 and 1 hold every punctuation and symbol character Unicode assigns (planes 2-3 are ideographs).
_PLANES_0_1 = "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, 0x20000)))
# the characters that NFKC changes: full-width, small and vertical presentation forms, ligatures, ...
_NFKC = {
    c: unicodedata.normalize("NFKC", c)
    for c in regex.findall(r"\P{Decomposition_Type=None}", _PLANES_0_1)
    if unicodedata.normalize("NFKC", c) != c
}


def _made_of(marks: set[str]) -> set[str]:
    """``marks`` and every character whose NFKC form is non-empty and made only of ``marks`` (‼ for !)."""
    return marks | {c for c, n in _NFKC.items() if n and all(x in marks for x in n)}


def _forms_of(base: str) -> set[str]:
    """``base`` and the characters whose NFKC form is exactly ``base`` (full-width, small, vertical)."""
    return {base} | {c for c, n in _NFKC.items() if n == base}


def _class(chars: set[str] | frozenset[str]) -> str:
    return "[" + "".join(regex.escape(c) for c in sorted(chars)) + "]"


# dots cut like other terminals, except between two letters or digits (3.14); two or more always cut
DOTS = frozenset(_forms_of("."))
_ELLIPSES = {c for c in regex.findall(r"[\p{P}\p{S}]", _PLANES_0_1) if "ELLIPSIS" in unicodedata.name(c, "")}
_STERM = set(regex.findall(r"\p{Sentence_Terminal}", _PLANES_0_1))
SENTENCE_MARKS = frozenset((_made_of(_STERM) | _forms_of(";") | _ELLIPSES) - DOTS)
# commas and colons do not cut between two letters or digits (1,000, 10:30); enumeration commas always cut
NUMBER_SEPARATORS = frozenset(_forms_of(",") | _forms_of(":"))
CLAUSE_MARKS = frozenset(_forms_of("、"))
# closing brackets and quotes (Pe, Pf) and the straight quotes, which close as often as they open
_CLOSE = r"(?:[\p{Pe}\p{Pf}]|" + _class(_forms_of('"') | _forms_of("'")) + ")*"
_ALNUM = r"[\p{Nd}\p{Latin}\p{Greek}\p{Cyrillic}]"


def _between_alnum(chars: frozenset[str]) -> str:
    """One of ``chars`` unless it sits between two letters or digits."""
    c = _class(chars)
    return f"(?:(?<!{_ALNUM}){c}|{c}(?!{_ALNUM}))"


# level -> where to cut (after each match); level 0 is the whole document
BOUNDARIES: dict[int, regex.Pattern[str]] = {
    1: regex.compile(r"\n+"),
    2: regex.compile(
        rf"(?:(?:{_class(SENTENCE_MARKS)}|{_class(DOTS)}{{2,}}|{_between_alnum(DOTS)})+{_CLOSE})+"
    ),
    3: regex.compile(rf"(?:(?:{_class(CLAUSE_MARKS)}|{_between_alnum(NUMBER_SEPARATORS)})+{_CLOSE})+"),
    4: regex.compile(r" +"),
}
LEVEL_NAMES = ("document", "paragraph", "sentence", "clause", "space")
_TRIM = " \n"

Counter = Callable[[Sequence[str]], list[int]]


@dataclass
class Segment:
    start: int  # span in the cleaned text
    end: int
    tokens: int
    too_long: bool = False
    level: int = 0  # finest boundary level cut to make it (0: the whole document)


def trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start] in _TRIM:
        start += 1
    while end > start and text[end - 1] in _TRIM:
        end -= 1
    return start, end


def split_span(text: str, start: int, end: int, level: int) -> list[tuple[int, int]]:
    """The non-empty trimmed pieces of ``text[start:end]`` cut after each boundary of ``level``."""
    spans = []
    cut = start
    for m in BOUNDARIES[level].finditer(text, start, end):
        s, e = trim(text, cut, m.end())
        if s < e:
            spans.append((s, e))
        cut = m.end()
    s, e = trim(text, cut, end)
    if s < e:
        spans.append((s, e))
    return spans


def segment_texts(texts: Sequence[str], max_tokens: int, count: Counter) -> list[list[Segment]]:
    """Segments of each text, in text order (an empty or all-whitespace text has none)."""
    pieces: list[list[Segment]] = [[] for _ in texts]
    pending: list[tuple[int, int, int, int]] = []  # (doc, start, end, level)
    for d, t in enumerate(texts):
        s, e = trim(t, 0, len(t))
        if s < e:
            pending.append((d, s, e, 0))
    while pending:
        counts = count([texts[d][s:e] for d, s, e, _ in pending])
        finer: list[tuple[int, int, int, int]] = []
        for (d, s, e, level), n in zip(pending, counts, strict=True):
            if n <= max_tokens:
                pieces[d].append(Segment(s, e, n, False, level))
                continue
            children: list[tuple[int, int]] = []
            while level < max(BOUNDARIES) and len(children) < 2:
                level += 1
                children = split_span(texts[d], s, e, level)
            if len(children) >= 2:
                finer += [(d, cs, ce, level) for cs, ce in children]
            else:
                pieces[d].append(Segment(s, e, n, True, level))
        pending = finer
    for p in pieces:
        p.sort(key=lambda seg: seg.start)
    return _pack(texts, pieces, max_tokens, count)


def _pack(
    texts: Sequence[str], pieces: list[list[Segment]], max_tokens: int, count: Counter
) -> list[list[Segment]]:
    """Greedily merge consecutive fitting pieces up to the budget, then verify each merge's real count and
    halve the merges that came out over it."""
    groups: list[list[list[Segment]]] = []
    for doc in pieces:
        out: list[list[Segment]] = []
        for seg in doc:
            last = out[-1] if out else None
            if (
                last is not None
                and not seg.too_long
                and not last[-1].too_long
                and sum(x.tokens for x in last) + seg.tokens <= max_tokens
            ):
                last.append(seg)
            else:
                out.append([seg])
        groups.append(out)
    result: list[list[Segment | None]] = [[None] * len(g) for g in groups]
    todo: list[tuple[int, int, list[Segment]]] = []  # (doc, group index, pieces)
    for d, doc_groups in enumerate(groups):
        for k, g in enumerate(doc_groups):
            if len(g) == 1:
                result[d][k] = g[0]
            else:
                todo.append((d, k, g))
    # a group that splits becomes several units: collect them under its index, then flatten
    split_into: dict[tuple[int, int], list[list[Segment]]] = {}
    while todo:
        counts = count([texts[d][g[0].start : g[-1].end] for d, _, g in todo])
        again = []
        for (d, k, g), n in zip(todo, counts, strict=True):
            if n <= max_tokens:
                merged = Segment(g[0].start, g[-1].end, n, False, max(x.level for x in g))
                split_into.setdefault((d, k), []).append([merged])
                continue
            half = _halve(g)
            for part in (g[:half], g[half:]):
                if len(part) == 1:
                    split_into.setdefault((d, k), []).append(part)
                else:
                    again.append((d, k, part))
        todo = again
    final: list[list[Segment]] = []
    for d, doc_groups in enumerate(groups):
        segs: list[Segment] = []
        for k in range(len(doc_groups)):
            if result[d][k] is not None:
                segs.append(result[d][k])  # type: ignore[arg-type]
            else:
                segs += sorted((p[0] for p in split_into[(d, k)]), key=lambda x: x.start)
        final.append(segs)
    return final


def _halve(group: list[Segment]) -> int:
    """Where to cut a group in two of about equal token counts (1 .. len - 1)."""
    total = sum(x.tokens for x in group)
    acc = 0
    for i, x in enumerate(group[:-1], start=1):
        acc += x.tokens
        if acc * 2 >= total:
            return i
    return len(group) - 1
