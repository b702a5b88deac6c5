"""A character n-gram language model for Chinese, written as ARPA for KenLM (cc_net's approach without lmplz).

cc_net scores text with KenLM models trained per language on Wikipedia, after its own normalisation and
tokenisation. KenLM's trainer (``lmplz``) is not shipped with the ``ufal-kenlm`` wheel, so this module builds
the model itself from a corpus sample: the tokens are characters (runs of ASCII letters/digits stay one
token), and the model is an interpolated absolute-discounting back-off model, written as a standard ARPA
file that ``kenlm.Model`` loads.

Model (order N, counts c, per-order discount D_k = n1 / (n1 + 2 n2) from the count-of-counts, clipped to
[0.1, 0.9]): ``p(w | h) = max(c(hw) - D, 0) / c(h.) + g(h) p(w | h')`` with ``g(h) = D N1+(h.) / c(h.)``,
where ``c(h.)`` is how often h is followed by anything and ``h'`` drops h's first token; unigrams interpolate
with the uniform distribution over the vocabulary plus ``<unk>``. ARPA stores each seen n-gram's full
interpolated probability and ``g(h)`` as h's back-off weight, so KenLM's back-off lookup computes exactly
this model, and every ``p(. | h)`` sums to 1 (the tests check that through KenLM itself).

    python -m kun_hpc.filtering.ngram --order 4 --out lm.arpa shards/wudao/part-00000.jsonl.zst ...
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_TOKEN = re.compile(r"[a-z0-9]+|\S")
_DIGIT = re.compile(r"\d")


def lm_tokens(text: str) -> list[str]:
    """cc_net-style normalisation (lower case, every digit 0) then one token per character, except that a run
    of ASCII letters/digits is one token. Whitespace separates and is dropped."""
    return _TOKEN.findall(_DIGIT.sub("0", text.lower()))


def lm_sentence(text: str) -> str:
    """The space-joined token string KenLM scores."""
    return " ".join(lm_tokens(text))


def count_ngrams(texts: Iterable[str], order: int) -> list[Counter[tuple[str, ...]]]:
    """counts[k-1][ngram] for k = 1..order; each text is one sentence ``<s> tokens </s>``."""
    counts: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order)]
    for text in texts:
        toks = lm_tokens(text)
        if not toks:
            continue
        seq = (BOS, *toks, EOS)
        for k in range(1, order + 1):
            c = counts[k - 1]
            start = 1 if k == 1 else 0  # <s> is never predicted
            for i in range(start, len(seq) - k + 1):
                c[seq[i : i + k]] += 1
    return counts


def _discount(c: Counter) -> float:
    n1 = sum(1 for v in c.values() if v == 1)
    n2 = sum(1 for v in c.values() if v == 2)
    if n1 == 0 or n2 == 0:
        return 0.5
    return min(0.9, max(0.1, n1 / (n1 + 2 * n2)))


def build_model(counts: list[Counter[tuple[str, ...]]]) -> tuple[list[dict], list[dict]]:
    """(probabilities, back-off weights) per order, as natural probabilities keyed by n-gram tuple."""
    order = len(counts)
    uni = counts[0]
    vocab = {w for (w,) in uni} | {EOS, UNK}
    total = sum(uni.values())
    d1 = _discount(uni)
    probs: list[dict] = [{} for _ in range(order)]
    backoffs: list[dict] = [{} for _ in range(order)]
    leftover = d1 * len(uni) / total
    for w in vocab:
        probs[0][(w,)] = max(uni.get((w,), 0) - d1, 0) / total + leftover / len(vocab)
    probs[0][(BOS,)] = 0.0
    for k in range(2, order + 1):
        c = counts[k - 1]
        d = _discount(c)
        ctx_total: Counter[tuple[str, ...]] = Counter()
        ctx_types: Counter[tuple[str, ...]] = Counter()
        for g, v in c.items():
            ctx_total[g[:-1]] += v
            ctx_types[g[:-1]] += 1
        gamma = {h: d * ctx_types[h] / ctx_total[h] for h in ctx_total}
        backoffs[k - 2] = gamma
        lower = probs[k - 2]
        for g, v in c.items():
            h = g[:-1]
            probs[k - 1][g] = (v - d) / ctx_total[h] + gamma[h] * lower[g[1:]]
    return probs, backoffs


def write_arpa(probs: list[dict], backoffs: list[dict], path: str | Path) -> Path:
    path = Path(path)
    order = len(probs)
    lines = ["", "\\data\\"]
    lines += [f"ngram {k}={len(probs[k - 1])}" for k in range(1, order + 1)]
    for k in range(1, order + 1):
        lines += ["", f"\\{k}-grams:"]
        bo = backoffs[k - 1] if k < order else {}
        for g in sorted(probs[k - 1]):
            p = probs[k - 1][g]
            lp = -99.0 if p <= 0 else math.log10(p)
            row = f"{lp:.7f}\t{' '.join(g)}"
            if k < order:
                row += f"\t{math.log10(bo[g]) if g in bo else 0.0:.7f}"
            lines.append(row)
    lines += ["", "\\end\\", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)
    return path


def build_arpa(texts: Iterable[str], path: str | Path, order: int = 4) -> dict:
    """Count ``texts``, estimate the model and write it to ``path``; returns a summary."""
    if order < 2:
        raise ValueError(f"order must be >= 2, got {order}")
    counts = count_ngrams(texts, order)
    if not counts[0]:
        raise ValueError("no tokens in the training texts")
    probs, backoffs = build_model(counts)
    write_arpa(probs, backoffs, path)
    return {"path": str(path), "order": order, "ngrams": [len(p) for p in probs]}


def _texts(paths: list[str], field: str, limit: int | None) -> Iterable[str]:
    from kun_hpc.io.shards import read_shard

    n = 0
    for p in paths:
        for rec in read_shard(p):
            if limit is not None and n >= limit:
                return
            text = rec.get(field)
            if isinstance(text, str) and text.strip():
                n += 1
                yield text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build a character n-gram ARPA model for the KenLM scorer.")
    ap.add_argument("inputs", nargs="+", help="JSONL(.zst) files, e.g. shards of a corpus sample")
    ap.add_argument("--out", required=True, help="the .arpa file to write")
    ap.add_argument("--order", type=int, default=4)
    ap.add_argument("--field", default="text")
    ap.add_argument("--limit", type=int, default=None, help="at most this many texts")
    args = ap.parse_args(argv)
    info = build_arpa(_texts(args.inputs, args.field, args.limit), args.out, args.order)
    print(f"wrote {info['path']}: order {info['order']}, n-grams {info['ngrams']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
