"""Benchmark (not a test): near-duplicate removal, kun-hpc's dedup against datatrove's MinHash pipeline.

    python tools/bench_dedup.py --input PATH/chinese_poetry_poems.jsonl.zst [--limit N] [--planted N]
                                [--repeat R] [--variants kun,datatrove] [--json OUT.json]

The input (zstd JSONL of ``{author, title, text}``) is rewritten once, with ids (``poetry/<line>``), into
``--shards`` zstd JSONL shards, plus ``--planted`` near-duplicates: copies of randomly chosen poems with one
character in 40 (at least one) replaced, spread over the shards. Every variant reads these same shards.

* ``kun``: kun_hpc.merge.dedup's four phases (signatures, buckets, clusters, apply) on the inline executor
  in one process: character 5-gram shingles, 14 bands x 8 rows, exact + near, default normalisation.
* ``datatrove``: datatrove 0.10.1's MinhashDedupSignature -> Buckets -> Cluster -> Filter with the same
  14 x 8 bands and 5-grams (of words: its Chinese word tokenizer, spaCy + jieba), on LocalPipelineExecutor
  with one worker (so in one process; the buckets stage runs its 14 tasks one after another).

Each variant runs in its own interpreter (``--child``); its peak RSS is that process's. The clock covers the
whole dedup including reading and writing the kept records. ``recall`` is the share of planted pairs where
the copy or its original was removed. With ``--repeat R`` the best wall time counts.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from bench_shard import Clock  # noqa: E402  (wall and CPU seconds of a with block)

VARIANTS = ("kun", "datatrove")


def prepare(src: Path, work: Path, limit: int | None, planted: int, shards: int) -> dict:
    import zstandard

    from kun_hpc.io.shards import ZstdJsonlWriter

    docs = []
    with zstandard.ZstdDecompressor().stream_reader(src.open("rb")) as raw:
        for i, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8")):
            if limit is not None and i >= limit:
                break
            docs.append({"id": f"poetry/{i}", "text": json.loads(line)["text"]})
    rng = random.Random(1)
    pairs = []
    for k, base in enumerate(rng.sample(docs, planted)):
        chars = list(base["text"])
        for j in rng.sample(range(len(chars)), max(1, len(chars) // 40)):
            chars[j] = chr(rng.randrange(0x4E00, 0x9FA5))
        copy = {"id": f"planted/{k}", "text": "".join(chars)}
        docs.insert(rng.randrange(len(docs)), copy)
        pairs.append((base["id"], copy["id"]))
    folder = work / "input"
    paths = []
    for s in range(shards):
        w = ZstdJsonlWriter(folder / f"part-{s:05d}.jsonl.zst")
        for d in docs[s::shards]:
            w.write(d)
        w.close()
        paths.append(str(w.path))
    return {
        "shards": paths,
        "docs": len(docs),
        "pairs": pairs,
        "bytes": sum(len(d["text"].encode()) for d in docs),
    }


def run_kun(inp: dict, work: Path) -> dict:
    from kun_hpc import config
    from kun_hpc.cluster.executors import InlineExecutor
    from kun_hpc.cluster.phases import run_phases
    from kun_hpc.io.shards import list_shards, read_shard
    from kun_hpc.merge.dedup import dedup_phases, make_job, settings_of

    out = work / "kun"
    cfg = config.load(None, [f"run.dir={out}"])
    shards = [Path(p) for p in inp["shards"]]
    job = make_job("dedup", "text", shards, shards[0].parent, out / "out", settings_of(cfg.dedup), str(out))
    with Clock() as clock:
        markers = run_phases(dedup_phases(job, "bench"), InlineExecutor(), out / "logs")[-1]
    removed = [r["id"] for p in list_shards(out / "out" / "rejected") for r in read_shard(p)]
    kept = sum(m["out"] for m in markers)
    return {"wall_s": clock.wall_s, "cpu_s": clock.cpu_s, "records": inp["docs"], "kept": kept,
            "removed": removed}  # fmt: skip


def run_datatrove(inp: dict, work: Path) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.typeshelper import Languages

    _xxhash_accepts_str()
    base = work / "datatrove"
    folder = str(Path(inp["shards"][0]).parent)
    mh = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    n = len(inp["shards"])

    def reader():
        return JsonlReader(folder, glob_pattern="*.jsonl.zst", text_key="text", id_key="id")

    def ex(steps, tasks, name):
        logs = str(base / "logs" / name)
        return LocalPipelineExecutor(steps, tasks=tasks, workers=1, logging_dir=logs, skip_completed=False)

    stages = [
        ex(
            [reader(), MinhashDedupSignature(str(base / "sigs"), mh, language=Languages.mandarin_chinese)],
            n,
            "s",
        ),
        ex([MinhashDedupBuckets(str(base / "sigs"), str(base / "buckets"), config=mh)], mh.num_buckets, "b"),
        ex([MinhashDedupCluster(str(base / "buckets"), str(base / "remove"), config=mh)], 1, "c"),
        ex(
            [
                reader(),
                MinhashDedupFilter(str(base / "remove"), exclusion_writer=JsonlWriter(str(base / "removed"))),
                JsonlWriter(str(base / "kept")),
            ],
            n,
            "f",
        ),
    ]
    with Clock() as clock:
        for st in stages:
            st.run()
    removed, kept = [], 0
    import gzip

    for p in sorted((base / "removed").rglob("*.jsonl.gz")):
        with gzip.open(p, "rt") as f:
            removed += [json.loads(line)["id"] for line in f]
    for p in sorted((base / "kept").rglob("*.jsonl.gz")):
        with gzip.open(p, "rt") as f:
            kept += sum(1 for _ in f)
    return {
        "wall_s": clock.wall_s,
        "cpu_s": clock.cpu_s,
        "records": inp["docs"],
        "kept": kept,
        "removed": removed,
    }


def _xxhash_accepts_str() -> None:
    """datatrove 0.10.1 hashes ``str`` with xxhash, which xxhash >= 4 refuses; encode first (its own
    default hash function, so the comparison stays with datatrove's intended configuration)."""
    import xxhash
    from datatrove.utils.hashes import xxhash as dt_xxhash

    dt_xxhash.xxhash32 = lambda d: xxhash.xxh32_intdigest(d.encode() if isinstance(d, str) else d)
    dt_xxhash.xxhash64 = lambda d: xxhash.xxh64_intdigest(d.encode() if isinstance(d, str) else d)


RUNNERS = {"kun": run_kun, "datatrove": run_datatrove}


def run_variant(name: str, inp_json: Path, work: Path, attempt: int) -> dict:
    """One variant in a fresh interpreter; its result plus its peak RSS."""
    wdir = work / f"{name}-{attempt}"
    wdir.mkdir(parents=True, exist_ok=True)
    result, log = wdir / "result.json", wdir / "log.txt"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--work", str(wdir)]
    cmd += ["--input-json", str(inp_json), "--result", str(result)]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=str(wdir), env=env)
        _, status, rusage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"variant {name} failed; log {log}:\n{log.read_text(errors='replace')[-3000:]}")
    res = json.loads(result.read_text())
    res["peak_rss_mb"] = rusage.ru_maxrss / 1024
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", type=Path)
    p.add_argument("--limit", type=int)
    p.add_argument("--planted", type=int, default=2000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--work", type=Path, default=REPO / "bench-out" / "dedup")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", choices=VARIANTS)
    p.add_argument("--input-json", type=Path)
    p.add_argument("--result", type=Path)
    args = p.parse_args(argv)
    if args.child:
        inp = json.loads(args.input_json.read_text())
        args.result.write_text(json.dumps(RUNNERS[args.child](inp, args.work)))
        return 0
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    inp = prepare(args.input, args.work, args.limit, args.planted, args.shards)
    inp_json = args.work / "input.json"
    inp_json.write_text(json.dumps(inp))
    results = {}
    for name in args.variants.split(","):
        runs = [run_variant(name, inp_json, args.work, k) for k in range(args.repeat)]
        best = min(runs, key=lambda r: r["wall_s"])
        removed = set(best.pop("removed"))
        for r in runs:
            r.pop("removed", None)
        found = sum(1 for a, b in inp["pairs"] if a in removed or b in removed)
        results[name] = {
            **best,
            "docs_per_s": best["records"] / best["wall_s"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "removed": len(removed),
            "recall_planted": found / len(inp["pairs"]),
            "all_wall_s": [r["wall_s"] for r in runs],
        }
    report = {"input": str(args.input), "docs": inp["docs"], "planted": len(inp["pairs"]), "results": results}
    if "kun" in results and "datatrove" in results:
        k, d = results["kun"], results["datatrove"]
        report["ratios_vs_datatrove"] = {
            "docs_per_s": k["docs_per_s"] / d["docs_per_s"],
            "peak_rss": k["peak_rss_mb"] / d["peak_rss_mb"],
        }
    print(
        f"{'variant':<10} {'docs':>9} {'wall s':>8} {'docs/s':>9} {'peak MB':>8} {'removed':>8} {'recall':>7}"
    )
    for name, r in results.items():
        cols = f"{r['records']:>9,} {r['wall_s']:>8.1f} {r['docs_per_s']:>9,.0f} {r['peak_rss_mb']:>8.0f}"
        print(f"{name:<10} {cols} {r['removed']:>8,} {r['recall_planted']:>7.3f}")
    if "ratios_vs_datatrove" in report:
        rr = report["ratios_vs_datatrove"]
        print(f"kun / datatrove: docs/s x{rr['docs_per_s']:.2f}, peak RSS x{rr['peak_rss']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
