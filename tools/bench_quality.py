"""Benchmark (not a test): the time the quality measures (issue 14) add to a merge.

    python tools/bench_quality.py [--input sample|PATH/chinese_poetry_poems.jsonl.zst] [--limit N]
                                  [--work bench-out/quality] [--repeat 2] [--reuse] [--json OUT]

The input's records are made pairs by a CPU stage of this file (``AsPairs``): a poem (``--input`` a zstd
JSONL of ``{author, title, text}``, the chinese-poetry corpus) becomes the answer to
"请写一首题为《title》的诗。", its text the unit; a record of the bundled sample (``--input sample``: WuDao,
WanJuan, SkyPile as they ship) the answer to "请介绍：<its first 20 characters>". Then the rules stage (Kun's
post-rules, which also measures every kept pair's faithfulness) and the merge (final dedup by instruction,
assembly, report), all on the inline executor: one process, one core. The run folder names the stage as
``tools.bench_quality:AsPairs``: to read it with ``kun-hpc status`` / ``merge`` / ``inspect`` by hand, run
them from the repo root with ``PYTHONPATH=.``.

Measured, best of ``--repeat``:

* ``faithfulness``: :func:`kun_hpc.filtering.faithfulness.measure` alone over every pair the rules stage kept
  (what the rules stage spends on it), records/s;
* the merge once (its dedup passes, which quality does not change), then its assembly, report and card
  again with ``merge.quality.enabled`` false and true, alternating (the dataset, report and assemble
  markers removed before each): records/s are records in / seconds; ``added`` is the difference, and the
  report sections' own seconds per section.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kun_hpc import cli, config  # noqa: E402
from kun_hpc.cluster.executors import InlineExecutor  # noqa: E402
from kun_hpc.filtering.faithfulness import RuleParams, measure  # noqa: E402
from kun_hpc.io.shards import list_shards, read_shard  # noqa: E402
from kun_hpc.quality import report as quality_report  # noqa: E402
from kun_hpc.run import merge_dataset as run_merge  # noqa: E402
from kun_hpc.stages.base import Stage  # noqa: E402


class AsPairs(Stage):
    """A record as an (instruction, answer) pair whose answer is its text (see the module docstring)."""

    name = "aspairs"
    makes_pairs = True

    def process(self, batch: list[dict]) -> list[dict]:
        out = []
        for r in batch:
            title = (r.get("meta") or {}).get("title")
            ask = f"请写一首题为《{title}》的诗。" if title else f"请介绍：{r['text'][:20]}"
            out.append({**r, "instruction": ask, "answer": r["text"]})
        return out


def overrides(inp: str, limit: int | None, work: Path) -> list[str]:
    common = [
        f"run.dir={work / 'run'}",
        "run.name=bench-quality",
        "executor.kind=inline",
        "dedup.raw=false",
        "merge.auto=false",
        "pipeline.stages=[tools.bench_quality:AsPairs,rules]",
        "shard.records_per_shard=20000",
        "pipeline.chunk_records=5000",
    ]
    if inp == "sample":
        return common
    source = Path(inp)
    if limit:  # the first N records, as a corpus of their own
        import zstandard

        head = work / "input" / "poems.jsonl"
        head.parent.mkdir(parents=True, exist_ok=True)
        with zstandard.open(source, "rt", encoding="utf-8") as f, open(head, "w", encoding="utf-8") as out:
            for i, line in enumerate(f):
                if i >= limit:
                    break
                out.write(line)
        source = head
    corpus = f"[{{name: poetry, format: jsonl, paths: ['{source}'], meta_fields: [title, author]}}]"
    return [*common, f"corpora={corpus}"]


def timed_merge(cfg, enabled: bool) -> tuple[float, dict]:
    """The merge's time after its dedup passes (kept from the first merge: quality changes nothing there):
    assembly (which sums the faithfulness histograms), the report and the card; and each section's."""
    run = Path(cfg.run.dir)
    for folder in ("dataset", "report"):
        shutil.rmtree(Path(cfg.merge.output) / folder, ignore_errors=True)
    shutil.rmtree(run / "done" / "merge-assemble", ignore_errors=True)
    cfg.merge.quality.enabled = enabled
    seconds: dict[str, float] = {}
    builders = quality_report.BUILDERS
    timed = []
    for b in builders:

        def wrapped(ctx, b=b):
            start = time.perf_counter()
            try:
                return b(ctx)
            finally:
                key = f"{b.__module__.rsplit('.', 1)[-1]}.{b.__name__}"
                seconds[key] = seconds.get(key, 0) + time.perf_counter() - start

        timed.append(wrapped)
    quality_report.BUILDERS = timed
    try:
        start = time.perf_counter()
        run_merge(cfg, InlineExecutor())
        return time.perf_counter() - start, seconds
    finally:
        quality_report.BUILDERS = builders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default="sample")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--work", type=Path, default=REPO / "bench-out" / "quality")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--reuse", action="store_true", help="keep the run of an earlier call in --work")
    a = ap.parse_args()
    if not a.reuse:
        shutil.rmtree(a.work, ignore_errors=True)
    args = overrides(a.input, a.limit, a.work.resolve())
    start = time.perf_counter()
    if cli.main(["run", *args]) != 0:  # with --reuse: nothing left to do
        sys.exit("bench_quality: the run failed")
    prepare = time.perf_counter() - start
    cfg = config.load(None, args)
    rules_root = Path(cfg.run.dir) / "stages" / "rules"
    pairs = [
        r
        for p in list_shards(rules_root)
        if {"rejected", "quarantine"}.isdisjoint(p.relative_to(rules_root).parts)
        for r in read_shard(p)
    ]
    params = RuleParams.from_config(cfg.rules)
    best = float("inf")
    for _ in range(a.repeat):
        start = time.perf_counter()
        for r in pairs:
            measure(r["text"], r["answer"], params)
        best = min(best, time.perf_counter() - start)
    start = time.perf_counter()
    run_merge(cfg, InlineExecutor())  # the dedup passes, once
    dedup = time.perf_counter() - start
    merges = {False: (float("inf"), {}), True: (float("inf"), {})}
    for _ in range(a.repeat):
        for enabled in (False, True):
            took = timed_merge(cfg, enabled)
            if took[0] < merges[enabled][0]:
                merges[enabled] = took
    n = len(pairs)
    off, on = merges[False][0], merges[True][0]
    result = {
        "input": a.input,
        "limit": a.limit,
        "pairs": n,
        "run_seconds": round(prepare, 1),
        "faithfulness": {"seconds": round(best, 2), "records_per_s": round(n / best)},
        "first_merge_seconds": round(dedup, 1),
        "merge_off": {"seconds": round(off, 2), "records_per_s": round(n / off)},
        "merge_on": {"seconds": round(on, 2), "records_per_s": round(n / on)},
        "added_seconds": round(on - off, 2),
        "ratio_on_off": round(on / off, 3),
        "sections_seconds": {k: round(v, 2) for k, v in merges[True][1].items()},
    }
    print(f"{a.input}: {n:,} pairs (run: shard + AsPairs + rules in {prepare:.1f} s)")
    print(f"| measure | seconds | records/s (one core) |\n|---|---|---|\n"
          f"| faithfulness (in the rules stage) | {best:.2f} | {n / best:,.0f} |\n"
          f"| assemble + report, quality off | {off:.2f} | {n / off:,.0f} |\n"
          f"| assemble + report, quality on | {on:.2f} | {n / on:,.0f} |")  # fmt: skip
    print(f"the whole first merge (dedup passes included, quality on): {dedup:.1f} s")
    print(
        f"quality adds {on - off:.2f} s to the merge (x{on / off:.2f}); per section: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in result["sections_seconds"].items())
    )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
