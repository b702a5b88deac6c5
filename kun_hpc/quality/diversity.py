"""Instruction diversity of a pairs dataset (issue 14, item 4), measured on a sample of its instructions.

* **distinct-n** (n = 1, 2, 3, over characters): distinct n-grams / all n-grams of the sample, n-grams taken
  within each instruction (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation
  Models", NAACL). It falls as the sample grows (more text repeats more n-grams), so it is reported with
  the sample size and compares only runs measured on samples of the same size.
* **openings**: the instructions' first ``merge.quality.opening_chars`` characters, the most common ones.
* **verb-object pairs**, as the Self-Instruct paper plots them (Wang et al. 2022, "Self-Instruct: Aligning
  Language Models with Self-Generated Instructions", Figure 2: the root verb and its first direct noun
  object, top 20 verbs with their top 4 nouns). Without a dependency parser for Chinese here the pair is
  read from jieba's part-of-speech tags (``jieba.posseg``): the first verb (a ``v*`` tag) that is not a
  politeness or modal word (:data:`AUXILIARY_VERBS`: 请, 能, 想 ... precede the main verb), and the first
  noun (an ``n*`` tag) after it.
* **near-duplicates**: the share of instructions the final dedup by instruction removed (exact and near
  duplicates), from its apply markers.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from kun_hpc.io.shards import iter_shard_lines
from kun_hpc.quality.plots import bar_chart, cjk_fonts, sunburst
from kun_hpc.quality.section import QualityContext, Section, Table

NGRAMS = (1, 2, 3)
SUNBURST_VERBS = 20  # Self-Instruct's Figure 2: the top 20 verbs ...
NOUNS_PER_VERB = 4  # ... and their top 4 noun objects
TOP_PAIRS = 20  # verb-object pairs in the bar chart
# jieba tags these v, but in an instruction they stand before the verb that says what to do (请介绍, 能告诉,
# 帮我写, 让我们讨论): the first verb after them is the main one
AUXILIARY_VERBS = frozenset(
    ["请", "能", "能够", "会", "要", "想", "让", "帮", "帮忙", "帮助", "可以", "应该"]
)


# ------------------------------------------------------------------------------------------------ sample
def sample_positions(total: int, k: int) -> list[int]:
    """``min(k, total)`` row positions spread evenly over ``range(total)``: ``i * total // k``, first row
    included (deterministic: the same dataset gives the same sample)."""
    k = min(k, total)
    return [i * total // k for i in range(k)]


def sample_instructions(ctx: QualityContext, k: int) -> tuple[list[str], int]:
    """At most ``k`` instructions spread evenly over the dataset's JSONL shards (the assemble markers' shards,
    in dataset order), and the dataset's row count. Only the picked lines are parsed; a shard is read up to
    its last picked line. ValueError naming the file and line for a row without a string ``instruction`` or
    a shard shorter than its marker says."""
    shards = [
        (ctx.dataset / "jsonl" / s["output"], s["rows"])
        for m in ctx.assemble
        for s in m["shards"]
        if s["rows"]
    ]
    total = sum(rows for _, rows in shards)
    wanted = sample_positions(total, k)
    out: list[str] = []
    at = start = 0  # index into wanted; first dataset row of the shard
    for path, rows in shards:
        picks = []
        while at < len(wanted) and wanted[at] < start + rows:
            picks.append(wanted[at] - start)
            at += 1
        start += rows
        if picks:
            out += _read_instructions(path, picks)
    return out, total


def _read_instructions(path: Path, lines: list[int]) -> list[str]:
    """The ``instruction`` of the rows at the given 0-based line numbers (ascending) of a dataset shard."""
    out = []
    todo = iter(lines)
    nxt = next(todo)
    for i, line in enumerate(iter_shard_lines(path)):
        if i != nxt:
            continue
        value = orjson.loads(line).get("instruction")
        if not isinstance(value, str):
            raise ValueError(f"{path}:{i + 1}: the dataset row has no string 'instruction' ({value!r})")
        out.append(value)
        nxt = next(todo, None)
        if nxt is None:
            return out
    raise ValueError(f"{path}: has no line {nxt + 1}: fewer rows than its merge-assemble marker counts")


# --------------------------------------------------------------------------------------------- measures
def distinct_n(texts: Sequence[str], n: int) -> tuple[int, int]:
    """(distinct, total) character n-grams over ``texts``, each text's n-grams taken within it (a text
    shorter than n has none). distinct-n (Li et al. 2016) is distinct / total."""
    seen: set[str] = set()
    total = 0
    for t in texts:
        grams = [t[i : i + n] for i in range(len(t) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen), total


def openings(texts: Sequence[str], chars: int, top: int) -> list[tuple[str, int]]:
    """The ``top`` most common openings (a text's first ``chars`` characters; a shorter text is its own
    opening) with their counts, most common first (ties: first seen first)."""
    return Counter(t[:chars] for t in texts).most_common(top)


@functools.cache
def _tagger() -> Any:
    """jieba's part-of-speech tokenizer (``jieba.posseg.POSTokenizer``) with its dictionary loaded once,
    without jieba's log lines; imported on first use (a second at import: only the report needs it)."""
    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba.posseg.dt


def tags(text: str) -> Iterator[tuple[str, str]]:
    """(word, part-of-speech flag) of ``text`` by ``jieba.posseg`` with its dictionary only, lazily. jieba's
    HMM for words outside the dictionary is off: in ``posseg`` it is pure-Python Viterbi over every
    (state, tag) pair, ~250x slower (0.1 s for a 60-character instruction here, measured), and an
    instruction's verb and object are common words the dictionary holds; unknown characters are tagged
    ``x``."""
    for w in _tagger().cut(text, HMM=False):
        yield w.word, w.flag


def verb_object(text: str) -> tuple[str, str] | None:
    """The instruction's (verb, noun) pair: the first verb (flag ``v*``, not in :data:`AUXILIARY_VERBS`)
    and the first noun (flag ``n*``) after it; None when there is no such pair."""
    verb = None
    for word, flag in tags(text):
        if verb is None:
            if flag.startswith("v") and word not in AUXILIARY_VERBS:
                verb = word
        elif flag.startswith("n"):
            return verb, word
    return None


def verb_tree(pairs: Counter[tuple[str, str]], verbs: int, nouns: int) -> list[dict]:
    """The ``verbs`` verbs with the most pairs, each with its pair count and its ``nouns`` most common nouns:
    ``[{"verb", "count", "nouns": [{"noun", "count"}]}]`` (ties: first seen first)."""
    by_verb: dict[str, Counter[str]] = {}
    for (v, n), c in pairs.items():
        by_verb.setdefault(v, Counter())[n] += c
    top = sorted(by_verb.items(), key=lambda kv: -sum(kv[1].values()))[:verbs]
    return [
        {
            "verb": v,
            "count": sum(c.values()),
            "nouns": [{"noun": n, "count": k} for n, k in c.most_common(nouns)],
        }
        for v, c in top
    ]


def near_duplicate_share(dedup: Sequence[tuple[str, list[dict]]], key: str = "instruction") -> dict | None:
    """What the final dedup pass by ``key`` removed: ``{"in", "duplicate_exact", "near_duplicate",
    "removed", "share"}`` (share = removed / in, None when nothing went in), summed over its apply markers;
    None when the merge made no such pass."""
    for k, markers in dedup:
        if k != key:
            continue
        rejected: Counter[str] = Counter()
        for m in markers:
            rejected.update(m["rejected"])
        n_in = sum(m["in"] for m in markers)
        exact, near = rejected["duplicate_exact"], rejected["near_duplicate"]
        share = (exact + near) / n_in if n_in else None
        return {
            "in": n_in,
            "duplicate_exact": exact,
            "near_duplicate": near,
            "removed": exact + near,
            "share": share,
        }
    return None


# ------------------------------------------------------------------------------------------------ plots
# ---------------------------------------------------------------------------------------------- section
def shown(text: str) -> str:
    """A text as a table cell: line breaks and tabs made visible (``↵``, ``⇥``)."""
    return text.replace("\r\n", "↵").replace("\n", "↵").replace("\r", "↵").replace("\t", "⇥")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def section(ctx: QualityContext) -> Section | None:
    """The "Instruction diversity" section of a pairs dataset (None for a text dataset): distinct-1/2/3, top
    openings, verb-object pairs (tables, bar charts and the sunburst) and the near-duplicate share."""
    if ctx.kind != "pairs":
        return None
    q = ctx.cfg.merge.quality
    texts, rows = sample_instructions(ctx, int(q.diversity_sample))
    n = len(texts)
    dup = near_duplicate_share(ctx.dedup)
    dup_line = (
        "No final dedup by instruction ran (merge.dedup_by): the near-duplicate share is not measured."
        if dup is None
        else f"Near-duplicate instructions before the final dedup: {dup['removed']:,} of {dup['in']:,} "
        f"({_pct(dup['share'])}) were removed by the dedup by instruction ({dup['duplicate_exact']:,} exact, "
        f"{dup['near_duplicate']:,} near duplicates)."
    )
    data: dict = {"rows": rows, "sample": n, "near_duplicates": dup}
    if not n:
        return Section("diversity", "Instruction diversity", data, ["The dataset is empty.", dup_line])
    distinct = {}
    for k in NGRAMS:
        d, t = distinct_n(texts, k)
        distinct[str(k)] = {"distinct": d, "total": t, "ratio": d / t if t else None}
    opens = openings(texts, int(q.opening_chars), int(q.top_openings))
    pairs: Counter[tuple[str, str]] = Counter()
    none = 0
    for text in texts:
        p = verb_object(text)
        if p is None:
            none += 1
        else:
            pairs[p] += 1
    tree = verb_tree(pairs, SUNBURST_VERBS, NOUNS_PER_VERB)
    data |= {
        "distinct": distinct,
        "openings": [{"opening": o, "count": c, "share": c / n} for o, c in opens],
        "verb_object": {
            "pairs": [{"verb": v, "noun": o, "count": c} for (v, o), c in pairs.most_common(TOP_PAIRS)],
            "distinct_pairs": len(pairs),
            "verbs": tree,
            "none": none,
            "none_share": none / n,
        },
    }
    ratios = " / ".join(
        f"{distinct[str(k)]['ratio']:.3f}" if distinct[str(k)]["ratio"] is not None else "n/a" for k in NGRAMS
    )
    lines = [
        f"Measured on {n:,} of the dataset's {rows:,} instructions, spread evenly over its shards "
        "(merge.quality.diversity_sample).",
        f"distinct-1 / 2 / 3 (characters): {ratios} -- distinct character n-grams / all n-grams of the "
        "sample (Li et al. 2016). The ratio falls as the sample grows: compare runs on samples of one size.",
        "Verb-object pairs (Self-Instruct, Wang et al. 2022; here the first verb and the first noun after "
        f"it by jieba's part-of-speech tags): {len(pairs):,} distinct pairs; {none:,} instructions "
        f"({_pct(none / n)}) have none.",
        dup_line,
    ]
    tables = [
        Table(
            ["opening", "instructions", "share"],
            [[shown(o), f"{c:,}", _pct(c / n)] for o, c in opens],
            f"Most common openings (first {q.opening_chars} characters)",
        ),
        Table(
            ["verb", "pairs", "share", f"top {NOUNS_PER_VERB} nouns"],
            [
                [
                    v["verb"],
                    f"{v['count']:,}",
                    _pct(v["count"] / n),
                    ", ".join(f"{x['noun']} ({x['count']:,})" for x in v["nouns"]),
                ]
                for v in tree
            ],
            f"Top {SUNBURST_VERBS} verbs and their nouns",
        ),
    ]
    plots = []
    if opens:
        plots.append(
            bar_chart(
                ctx.folder / "diversity_openings.png",
                [shown(o) for o, _ in opens],
                {"instructions": [c for _, c in opens]},
                "most common instruction openings",
                ylabel="instructions",
                horizontal=True,
            )
        )
    if pairs:
        top = pairs.most_common(TOP_PAIRS)
        plots.append(
            bar_chart(
                ctx.folder / "diversity_verb_object.png",
                [f"{v} {o}" for (v, o), _ in top],
                {"instructions": [c for _, c in top]},
                "most common verb-object pairs",
                ylabel="instructions",
                horizontal=True,
            )
        )
        title = f"top {len(tree)} verbs (inner) and their top {NOUNS_PER_VERB} nouns (outer)"
        plots.append(sunburst(ctx.folder / "diversity_sunburst.png", tree, title))
    if plots and not cjk_fonts():
        lines.append(
            "No CJK font is installed where the report was made (Debian: fonts-noto-cjk): the "
            "plots' Chinese labels show as boxes; the tables hold the same words and counts."
        )
    top3 = ", ".join(f"{shown(o)} ({_pct(c / n)})" for o, c in opens[:3])
    card = [
        f"Instruction diversity (sample of {n:,}): distinct-1/2/3 {ratios}; top openings {top3}"
        + ("" if dup is None else f"; near duplicates removed by the final dedup {_pct(dup['share'])}")
    ]
    return Section("diversity", "Instruction diversity", data, lines, tables, plots, card)
