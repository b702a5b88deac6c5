"""Benchmark (not a test): the split of ``kun-hpc export`` on templated instructions, by ``--similarity``.

    python tools/bench_export.py --input PATH/chinese_poetry_poems.jsonl.zst [--limit N]
                                 [--similarity 0.01,0.3,0.4,0.5,0.6] [--work DIR]

Input. The first ``--limit`` poems (all by default) of the zstd JSONL corpus become pairs whose
instruction is one template with two slots, ``请赏析{author}的《{title}》。``, and whose output is the poem:
the case where union-find over LSH buckets chains everything together. They are assembled into a run's
dataset by the merge's own ``assemble_unit`` (50,000 rows a shard), under a run folder whose config is the
defaults, so the split reads the default ``dedup`` settings (3-grams, 120 permutations, 40 bands).

Measured per similarity: ``kun_hpc.merge.export.export(RUN, "alpaca", val_fraction=0.02, seed=0)``'s wall
seconds (one process, one core's worth of Python: reading, normalizing, MinHash, grouping, writing) and
the peak RSS of the process so far, and from its manifest the groups, the largest group and its share of
the rows, the validation rows and the rows the full bucket check moved back to train. A similarity under
3 / permutations (0.025) links every pair that shares a bucket (a shared band is 3 equal MinHash values):
the rule with no verification at all.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARD_ROWS = 50_000


def build_run(src: Path, work: Path, limit: int | None) -> tuple[Path, int]:
    """A run folder with the default config and a merged dataset of the poetry pairs; (folder, rows)."""
    import zstandard

    from kun_hpc import config
    from kun_hpc.io.shards import ZstdJsonlWriter
    from kun_hpc.merge.assemble import AssembleTask, assemble_unit

    run = work / "run"
    config.save_resolved(config.load(None, [f"run.dir={run}"]), run)
    dataset = run / "merge" / "dataset"
    shards, w, n = [], None, 0
    with zstandard.ZstdDecompressor().stream_reader(src.open("rb")) as raw:
        for line in io.TextIOWrapper(raw, encoding="utf-8"):
            if limit is not None and n >= limit:
                break
            poem = json.loads(line)
            if n % SHARD_ROWS == 0:
                if w is not None:
                    w.close()
                w = ZstdJsonlWriter(work / "input" / f"part-{len(shards):05d}.jsonl.zst", 3)
                shards.append(w.path)
            instruction = f"请赏析{poem.get('author', '')}的《{poem.get('title', '')}》。"
            w.write({"id": f"poetry/{n:07d}", "corpus": "poetry", "text": poem["text"],
                     "instruction": instruction, "answer": poem["text"], "score": 0.5})  # fmt: skip
            n += 1
    if w is not None:
        w.close()
    for i, shard in enumerate(shards):
        assemble_unit(AssembleTask("pairs", (str(shard),), str(dataset), i, False, 3))
    return run, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", required=True, help="the poetry corpus (chinese_poetry_poems.jsonl.zst)")
    ap.add_argument("--limit", type=int, help="the first N poems (default all)")
    ap.add_argument("--similarity", default="0.01,0.3,0.4,0.5,0.6", help="comma-separated values to run")
    ap.add_argument("--work", help="a folder for the run (default a temporary one)")
    args = ap.parse_args()
    from kun_hpc.merge.export import export

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        t = time.perf_counter()
        run, rows = build_run(Path(args.input), work, args.limit)
        print(f"{rows:,} pairs assembled in {time.perf_counter() - t:.0f} s ({run})", file=sys.stderr)
        print(
            "| similarity | groups | largest group | validation rows | moved to train | seconds | peak RSS |"
        )
        print("|---|---|---|---|---|---|---|")
        for s in (float(v) for v in args.similarity.split(",")):
            t = time.perf_counter()
            result = export(run, "alpaca", work / f"export-{s}", similarity=s)
            seconds = time.perf_counter() - t
            g = result.manifest["split"]["groups"]
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
            print(
                f"| {s} | {g['all']:,} | {g['largest']:,} ({g['largest'] / rows:.1%}) | "
                f"{result.rows['validation']:,} | {g['moved_to_train']['rows']:,} | {seconds:.0f} | "
                f"{rss:.1f} GiB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
