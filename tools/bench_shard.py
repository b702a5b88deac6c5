"""Benchmark (not a test): kun-hpc shard/reshard against datatrove and a bare orjson+zstd floor.

    python tools/bench_shard.py --input CORPUS.jsonl[.zst|.gz] [--limit N] [--repeat R] [--work DIR]
                                [--json OUT.json]

Variants, each in its own fresh subprocess (so peak RSS is per variant), all in one process:

* ``kun-shard``:   ``kun-hpc shard`` (inline executor) with one generic ``jsonl`` corpus on the input
* ``kun-reshard``: ``kun-hpc reshard`` (inline) of that output to ``--reshard-shards`` shards
* ``datatrove``:   datatrove ``JsonlReader -> JsonlWriter(compression="zstd")``, LocalPipelineExecutor
  tasks=1 workers=1
* ``floor``:       read lines, ``orjson.loads``, ``orjson.dumps``, write through one zstd stream writer

Wall time is measured inside the child around the work itself (imports done before the clock starts),
with the CPU seconds (all threads) it took; peak RSS is the child's ``ru_maxrss`` from ``os.wait4``.
After the clock stops each child counts the records it wrote by reading its output back, and the parent
checks that every variant saw the same count. MB/s is of the *uncompressed* input of that variant (for
reshard: the JSONL inside kun-hpc's shards). With ``--repeat R`` every variant runs R times (round robin)
and the best wall time counts: on a shared machine the fastest run is the least disturbed one.

Note: datatrove's zstd output goes through fsspec, which (without ``backports.zstd``) compresses at zstd
level 10; kun-hpc and the floor write level 3 (kun-hpc's default ``shard.zstd_level``). kun-hpc compresses
on a helper thread, so on a machine with a spare core its wall time can be below its CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("kun-shard", "kun-reshard", "datatrove", "floor")
CORPUS = "bench"


# ------------------------------------------------------------------------------------------- helpers
def _count_output(paths: list[Path]) -> tuple[int, int]:
    """(lines, uncompressed bytes) of zstd/gzip/plain JSONL files, read back as a stream."""
    from kun_hpc.io.streams import CHUNK, open_stream

    lines = nbytes = 0
    for p in paths:
        with open_stream(p) as f:
            last = b"\n"
            while data := f.read(CHUNK):
                lines += data.count(b"\n")
                nbytes += len(data)
                last = data[-1:]
            if last != b"\n":
                lines += 1
    return lines, nbytes


class Clock:
    """Wall and CPU seconds (every thread of this process) spent inside the ``with`` block."""

    wall_s = cpu_s = 0.0

    @staticmethod
    def _cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def __enter__(self) -> Clock:
        self._t, self._c = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._t
        self.cpu_s = self._cpu() - self._c


def _kun_preset(inp: Path, work: Path, args: argparse.Namespace) -> Path:
    preset = work / "kun-bench.yaml"
    if not preset.exists():
        preset.write_text(
            json.dumps(  # JSON is YAML
                {
                    "run": {"name": "bench", "dir": str(work / "kun")},
                    "executor": {"kind": "inline"},
                    "corpora": [
                        {
                            "name": CORPUS,
                            "format": "jsonl",
                            "paths": [str(inp)],
                            "text_field": "text",
                            "meta_fields": ["title", "author"],
                        }
                    ],
                    "shard": {"records_per_shard": args.records_per_shard},
                    "reshard": {"num_shards": args.reshard_shards},
                }
            )
        )
    return preset


# ------------------------------------------------------------------------------------------- variants
def run_kun_shard(inp: Path, work: Path, args: argparse.Namespace) -> dict:
    from kun_hpc import cli
    from kun_hpc.io.shards import list_shards, read_manifest

    preset = _kun_preset(inp, work, args)
    with Clock() as clock:
        rc = cli.main(["shard", str(preset), "executor.kind=inline"])
    if rc != 0:
        raise SystemExit(f"kun-hpc shard failed with exit code {rc}")
    out = work / "kun" / "shards" / CORPUS
    m = read_manifest(out)
    lines, _ = _count_output(list_shards(out))
    return {
        "wall_s": clock.wall_s,
        "cpu_s": clock.cpu_s,
        "records": lines,
        "read": m["read"],
        "quarantined": sum(m["quarantined"].values()),
        "shards": len(m["shards"]),
        "out_bytes": sum(s["bytes"] for s in m["shards"]),
    }


def run_kun_reshard(inp: Path, work: Path, args: argparse.Namespace) -> dict:
    from kun_hpc import cli
    from kun_hpc.io.shards import list_shards, read_manifest

    preset = _kun_preset(inp, work, args)
    src = work / "kun" / "shards" / CORPUS
    if not (src / "manifest.json").exists():
        raise SystemExit("kun-reshard needs the kun-shard variant's output; run kun-shard first")
    _, in_bytes = _count_output(list_shards(src))
    with Clock() as clock:
        rc = cli.main(["reshard", str(preset), "executor.kind=inline"])
    if rc != 0:
        raise SystemExit(f"kun-hpc reshard failed with exit code {rc}")
    out = work / "kun" / "reshard"
    m = read_manifest(out)
    lines, _ = _count_output(list_shards(out))
    return {
        "wall_s": clock.wall_s,
        "cpu_s": clock.cpu_s,
        "records": lines,
        "read": m["read"],
        "quarantined": sum(m["quarantined"].values()),
        "shards": len(m["shards"]),
        "out_bytes": sum(s["bytes"] for s in m["shards"]),
        "in_bytes": in_bytes,
    }


def run_datatrove(inp: Path, work: Path, args: argparse.Namespace) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    out = work / "datatrove" / "out"
    ex = LocalPipelineExecutor(
        pipeline=[
            JsonlReader(str(inp.parent), glob_pattern=inp.name, recursive=False, text_key="text"),
            JsonlWriter(str(out), compression="zstd"),
        ],
        tasks=1,
        workers=1,
        logging_dir=str(work / "datatrove" / "logs"),
        skip_completed=False,
    )
    with Clock() as clock:
        ex.run()
    files = sorted(p for p in out.rglob("*") if p.is_file())
    lines, _ = _count_output(files)
    return {
        "wall_s": clock.wall_s,
        "cpu_s": clock.cpu_s,
        "records": lines,
        "read": lines,
        "quarantined": 0,
        "shards": len(files),
        "out_bytes": sum(p.stat().st_size for p in files),
    }


def run_floor(inp: Path, work: Path, args: argparse.Namespace) -> dict:
    import orjson
    import zstandard

    from kun_hpc.io.streams import open_stream

    out = work / "floor" / "out.jsonl.zst"
    out.parent.mkdir(parents=True, exist_ok=True)
    loads, dumps, nl = orjson.loads, orjson.dumps, orjson.OPT_APPEND_NEWLINE
    n = 0
    with Clock() as clock, open_stream(inp) as f, open(out, "wb") as raw:
        z = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
        write = z.write
        rest = b""
        while data := f.read(1 << 20):
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line.strip():
                    write(dumps(loads(line), option=nl))
                    n += 1
        if rest.strip():
            write(dumps(loads(rest), option=nl))
            n += 1
        z.close()
    lines, _ = _count_output([out])
    return {
        "wall_s": clock.wall_s,
        "cpu_s": clock.cpu_s,
        "records": lines,
        "read": n,
        "quarantined": 0,
        "shards": 1,
        "out_bytes": out.stat().st_size,
    }


RUNNERS = {
    "kun-shard": run_kun_shard,
    "kun-reshard": run_kun_reshard,
    "datatrove": run_datatrove,
    "floor": run_floor,
}


def child(args: argparse.Namespace) -> None:
    res = RUNNERS[args.child](Path(args.input), Path(args.work), args)
    Path(args.result).write_text(json.dumps(res))


# ------------------------------------------------------------------------------------------- parent
def prepare_input(src: Path, work: Path, limit: int | None) -> tuple[Path, int, int]:
    """The input every variant reads: ``src`` itself, or with ``limit`` its first lines re-written as
    zstd JSONL under ``work``. Returns (path, lines, uncompressed bytes)."""
    if limit is None:
        lines, nbytes = _count_output([src])
        return src, lines, nbytes
    import zstandard

    from kun_hpc.io.streams import iter_lines, open_stream

    dst = work / "input" / "input.jsonl.zst"
    dst.parent.mkdir(parents=True, exist_ok=True)
    n = nbytes = 0
    with open_stream(src) as f, open(dst, "wb") as raw:
        out = zstandard.ZstdCompressor(level=3).stream_writer(raw)
        for _, line in iter_lines(f, 1 << 40):
            if n >= limit:
                break
            out.write(line + b"\n")  # type: ignore[operator]
            n += 1
            nbytes += len(line) + 1  # type: ignore[arg-type]
        out.close()
    return dst, n, nbytes


def run_variant(name: str, inp: Path, work: Path, args: argparse.Namespace) -> dict:
    """Run one variant in a fresh interpreter; its result plus its peak RSS."""
    result = work / f"{name}.result.json"
    log = work / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--input", str(inp)]
    cmd += ["--work", str(work), "--result", str(result)]
    cmd += ["--records-per-shard", str(args.records_per_shard), "--reshard-shards", str(args.reshard_shards)]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=str(work), env=env)
        _, status, rusage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"variant {name} failed (exit {proc.returncode}); log {log}:\n{tail}")
    res = json.loads(result.read_text())
    res["peak_rss_mb"] = rusage.ru_maxrss / 1024  # Linux: KiB
    return res


def summarize(runs: list[dict], in_bytes: int) -> dict:
    best = min(runs, key=lambda r: r["wall_s"])
    r = dict(best)
    r["in_bytes"] = best.get("in_bytes", in_bytes)
    r["docs_per_s"] = r["records"] / r["wall_s"]
    r["mb_per_s"] = r["in_bytes"] / 1e6 / r["wall_s"]
    r["peak_rss_mb"] = max(x["peak_rss_mb"] for x in runs)
    r["all_wall_s"] = [x["wall_s"] for x in runs]
    r["all_records"] = sorted({x["records"] for x in runs})
    return r


def build_report(src: Path, args, in_lines: int, in_bytes: int, results: dict[str, dict]) -> dict:
    ratios = {}
    dt = results.get("datatrove")
    if dt:
        for v in ("kun-shard", "kun-reshard", "floor"):
            if v in results:
                ratios[f"{v} / datatrove"] = results[v]["docs_per_s"] / dt["docs_per_s"]
    counts = {v: r["all_records"] for v, r in results.items()}
    seen = {n for ns in counts.values() for n in ns}
    return {
        "input": str(src),
        "limit": args.limit,
        "repeat": args.repeat,
        "input_lines": in_lines,
        "input_bytes_uncompressed": in_bytes,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "variants": results,
        "throughput_ratios": ratios,
        "records": {v: ns[0] if len(ns) == 1 else ns for v, ns in counts.items()},
        "records_agree": len(seen) == 1 and seen == {in_lines},
    }


def print_table(report: dict) -> None:
    head = (
        f"{'variant':<12} {'records':>9} {'wall s':>7} {'CPU s':>7} {'docs/s':>9} {'MB/s':>6} "
        f"{'peak RSS MB':>11} {'out MB':>7}"
    )
    print(head)
    print("-" * len(head))
    for v, r in report["variants"].items():
        print(
            f"{v:<12} {r['records']:>9} {r['wall_s']:>7.2f} {r['cpu_s']:>7.2f} {r['docs_per_s']:>9,.0f} "
            f"{r['mb_per_s']:>6.1f} {r['peak_rss_mb']:>11.1f} {r['out_bytes'] / 1e6:>7.1f}"
        )
    print()
    for k, x in report["throughput_ratios"].items():
        print(f"{k:<24} {x:6.2f}x  (docs/s)")
    agree = "all agree with the input" if report["records_agree"] else "DISAGREE"
    counts = ", ".join(f"{v}={n}" for v, n in report["records"].items())
    print(f"records: input={report['input_lines']}, {counts} ({agree})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="JSONL (.jsonl, .jsonl.zst, .jsonl.gz) with a text field")
    p.add_argument("--work", help="an empty scratch dir, kept (default: a temp dir, removed afterwards)")
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--limit", type=int, help="use only the first N records")
    p.add_argument("--repeat", type=int, default=1, help="runs per variant; the best wall time counts")
    p.add_argument("--records-per-shard", type=int, default=10_000, help="kun-hpc shard.records_per_shard")
    p.add_argument("--reshard-shards", type=int, default=8, help="kun-hpc reshard.num_shards")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset to run")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0

    src = Path(args.input).resolve()
    if not src.is_file():
        p.error(f"--input {src} is not a file")
    if args.repeat < 1 or (args.limit is not None and args.limit < 1):
        p.error("--repeat and --limit must be >= 1")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if bad := [v for v in variants if v not in VARIANTS]:
        p.error(f"unknown variants {bad}; choose from {', '.join(VARIANTS)}")
    if "kun-reshard" in variants and "kun-shard" not in variants:
        p.error("kun-reshard needs kun-shard in the same run")
    variants = [v for v in VARIANTS if v in variants]  # kun-shard before kun-reshard
    tmp = None
    if args.work:
        work = Path(args.work).resolve()
        work.mkdir(parents=True, exist_ok=True)
        if any(work.iterdir()):
            p.error(f"--work {work} must be empty (kun-hpc skips work it finds done)")
    else:
        tmp = tempfile.TemporaryDirectory(prefix="kun-bench-")
        work = Path(tmp.name)
    try:
        inp, in_lines, in_bytes = prepare_input(src, work, args.limit)
        print(
            f"input {src}{f' (first {args.limit} records)' if args.limit else ''}: {in_lines} lines, "
            f"{in_bytes / 1e6:.1f} MB uncompressed; work dir {work}",
            file=sys.stderr,
        )
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for rep in range(args.repeat):
            rep_dir = work / f"run{rep}"
            rep_dir.mkdir()
            for v in variants:
                r = run_variant(v, inp, rep_dir, args)
                runs[v].append(r)
                print(
                    f"[{rep + 1}/{args.repeat}] {v}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU, "
                    f"{r['records']} records",
                    file=sys.stderr,
                    flush=True,
                )
        results = {v: summarize(rs, in_bytes) for v, rs in runs.items()}
        report = build_report(src, args, in_lines, in_bytes, results)
        print_table(report)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        return 0 if report["records_agree"] else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
