"""Benchmark (not a test): the Label / Point / Answer stages against a bare ``LLM.generate`` loop, and the
Point stage with vLLM's prefix caching on and off.

    python tools/bench_kun_stages.py [--model models/tiny-qwen2] [--records 256] [--chunk 128] [--repeat 3]
                                     [--new-tokens label=32,point=4,answer=64] [--set KEY=VALUE ...]
                                     [--json bench-out/kun_stages.json]

For each stage, the same prompts (rendered by the stage from the same records, from the bundled sample:
texts of WuDao / WanJuan / SkyPile, instructions of the seed pairs) go through

* ``stage``: the real stage over a zstd shard of the records, as a unit runs it (``run_shard_task``: read,
  render, sort, one engine call per chunk of ``--chunk`` records, rules, verdicts, chunk commits, final
  shard), with the config's sampling (Kun's reference: temperature 0.5, top_p 0.95, repetition penalty
  1.2; ``max_new_tokens`` from ``--new-tokens``), one seed per record;
* ``bare``: ``llm.generate(prompts, SamplingParams(...))`` on the same ``LLM`` object, chunk by chunk, with
  the same sampling parameters and one ``SamplingParams`` for all (what a hand-written script does);
* ``bare 1 call``: all prompts in one ``llm.generate`` call (no chunk boundaries at all), for reference;
* ``stage drain``: the stage's ``process`` called chunk by chunk (no shard I/O, no commits), so vLLM's
  batch drains at every chunk's end; ``overlap gain`` is ``stage`` docs/s over it: what queueing the next
  chunk while the last sequences decode is worth (largest when ``--chunk`` is near ``--max-num-seqs``);
* ``bare seeded``: the bare loop with one ``SamplingParams`` per prompt, seeded as the stage seeds them. A
  seeded request samples with a generator of its own (what makes a record's output independent of its batch,
  so that a resumed unit repeats a fault-free run); vLLM then samples row by row, which on the tiny CPU model,
  where sampling is a large part of a step, costs ~10%.

``ratio`` is stage docs/s over bare docs/s (target >= 0.9); ``ratio seeded`` over bare seeded docs/s, the cost
of the stage itself. The prefix cache is reset before every timed run
(a repeat would otherwise find all its prompts cached), and every variant runs ``--repeat`` times round
robin; the best time counts (on a shared machine the fastest run is the least disturbed one).

Point with prefix caching on vs off: the Point stage (reference mode: generation; calibrated mode: one step
reading the verdict token's log-probs) on two engines that differ only in ``enable_prefix_caching``; the
rubric (~450 tokens with the tiny model's tokenizer) is the shared prefix of every prompt.

The ``pipeline.throughput.<stage>`` lines at the end are what ``kun-hpc plan`` takes to estimate a run: the
stage's docs/s per task on this machine with this model. Run the benchmark on one of the cluster's GPU nodes
with the production models (``--set label.engine.model=/models/kun-label --set point.engine.model=...``)
to size a GPU run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

STAGES = ("label", "point", "answer")
# the tiny model never stops by itself, so every generation runs to max_new_tokens; a real judge answers
# 【好】 or 【差】 and stops: 4 tokens ("【", verdict, "】", end) is the Point stage's realistic length
DEFAULT_NEW_TOKENS = {"label": 32, "point": 4, "answer": 64}


# -------------------------------------------------------------------------------------------- inputs
def bench_records(n: int) -> dict[str, list[dict]]:
    """Per stage, n input records built from the bundled sample (real text, real seed instructions)."""
    import make_tiny_model

    texts = [t for t in make_tiny_model.sample_texts() if 100 <= len(t) <= 700]
    seed_file = REPO / "shards" / "sample" / "seed" / "alpaca_zh_demo.json"
    seed = json.loads(seed_file.read_text(encoding="utf-8"))
    instructions = [s["instruction"] for s in seed if s.get("instruction")]
    if len(texts) < n or len(instructions) < n:
        raise SystemExit(f"the sample has {len(texts)} texts, {len(instructions)} instructions: too few")
    texts = texts[:: max(1, len(texts) // n)][:n]  # spread over the corpora
    return {
        "label": [{"id": f"bench/{i}", "text": t} for i, t in enumerate(texts)],
        "point": [{"id": f"bench/{i}", "instruction": s} for i, s in enumerate(instructions[:n])],
        "answer": [
            {"id": f"bench/{i}", "text": t, "instruction": s}
            for i, (t, s) in enumerate(zip(texts, instructions, strict=False))
        ],
    }


def write_shard(path: Path, records: list[dict]) -> None:
    import orjson
    import zstandard

    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records)
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))


def load_config(stage: str, args: argparse.Namespace, extra: list[str]):
    from kun_hpc import config

    engine = {
        "model": args.model,
        "backend": "vllm",
        "dtype": args.dtype,
        "enforce_eager": True,
        "max_num_seqs": args.max_num_seqs,
    }
    overrides = [f"{stage}.engine.{k}={v}" for k, v in engine.items()]
    overrides += [
        f"{stage}.sampling.max_new_tokens={args.new_tokens[stage]}",
        f"{stage}.reject_truncated=false",
        f"pipeline.chunk_records={args.chunk}",
        *extra,
        *args.set,
    ]
    return config.load(None, overrides)


# ------------------------------------------------------------------------------------------- timing
def best_of(
    repeat: int, variants: dict[str, Callable[[], object]], before: Callable[[], None]
) -> tuple[dict, dict]:
    """Run every variant ``repeat`` times, round robin: the best wall time and the best CPU time (this
    process, all threads: vLLM runs in it on CPU) of each. CPU time suffers less from other processes on a
    shared machine than wall time."""
    wall = {k: float("inf") for k in variants}
    cpu = dict(wall)
    for _ in range(repeat):
        for name, fn in variants.items():
            before()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name] = min(wall[name], time.perf_counter() - t0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
    return wall, cpu


def run_stage_once(stage, records_path: Path, work: Path, chunk: int, prov: dict) -> None:
    import shutil

    from kun_hpc.stages.base import ShardTask
    from kun_hpc.stages.chunks import run_shard_task

    if work.exists():
        shutil.rmtree(work)
    task = ShardTask(
        str(records_path),
        str(work / "out.jsonl.zst"),
        str(work / "rejected.jsonl.zst"),
        str(work / "quarantine.jsonl.zst"),
    )
    result = run_shard_task(stage, task, chunk, prov)
    assert result["in"] == result["out"] + sum(result["rejected"].values()), result


def bench_stage(name: str, records: list[dict], args, tmp: Path) -> dict:
    from vllm import SamplingParams

    from kun_hpc.stages.llm import record_seed
    from kun_hpc.stages.registry import make_stage

    cfg = load_config(name, args, ["point.mode=reference"] if name == "point" else [])
    stage = make_stage(name, cfg)
    stage.setup()
    try:
        llm = stage.engine.llm
        made = [(r, stage.prompt(r)) for r in records]
        made = [(r, m[0]) for r, m in made if isinstance(m, tuple)]
        prompts = [str(p) for _, p in made]  # the sample holds no special-token text: same ids as the stage
        s = stage.sampling
        params = SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            repetition_penalty=s.repetition_penalty,
            max_tokens=s.max_new_tokens,
            stop=stage.engine.text_stops(s.stop) or None,
            stop_token_ids=stage.engine.stop_token_ids(s.stop) or None,
        )
        chunks = [prompts[k : k + args.chunk] for k in range(0, len(prompts), args.chunk)]
        llm.generate(prompts[:8], params, use_tqdm=False)  # warm-up
        out: dict = {}

        def bare():
            out["gen"] = [o for c in chunks for o in llm.generate(c, params, use_tqdm=False)]

        seeded = [[params.clone() for _ in c] for c in chunks]
        for p, (r, _) in zip((x for c in seeded for x in c), made, strict=True):
            p.seed = record_seed(name, r, s.seed)

        def bare_seeded():
            for c, ps in zip(chunks, seeded, strict=True):
                llm.generate(c, ps, use_tqdm=False)

        shard = tmp / name / "input.jsonl.zst"
        write_shard(shard, records)
        prov = {**stage.provenance(), "config_hash": "bench"}
        record_chunks = [records[k : k + args.chunk] for k in range(0, len(records), args.chunk)]
        times, cpu = best_of(
            args.repeat,
            {
                "stage": lambda: run_stage_once(stage, shard, tmp / name / "work", args.chunk, prov),
                "stage_drain": lambda: [stage.process(c) for c in record_chunks],
                "bare": bare,
                "bare_one_call": lambda: llm.generate(prompts, params, use_tqdm=False),
                "bare_seeded": bare_seeded,
            },
            llm.reset_prefix_cache,
        )
        prompt_tokens = sum(len(o.prompt_token_ids) for o in out["gen"])
        new_tokens = sum(len(o.outputs[0].token_ids) for o in out["gen"])
    finally:
        stage.close()
    n = len(records)
    return {
        "stage": name,
        "records": n,
        "prompts": len(prompts),
        "max_new_tokens": args.new_tokens[name],
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "seconds": times,
        "cpu_seconds": cpu,
        "docs_per_s": {k: n / v for k, v in times.items()},
        "ratio_stage_over_bare": times["bare"] / times["stage"],
        "ratio_stage_over_bare_seeded": times["bare_seeded"] / times["stage"],
        "ratio_cpu_stage_over_bare": cpu["bare"] / cpu["stage"],
        "ratio_cpu_stage_over_bare_seeded": cpu["bare_seeded"] / cpu["stage"],
        "ratio_overlap": times["stage_drain"] / times["stage"],
        "prompt_tokens_per_doc": prompt_tokens / n,
        "new_tokens_per_doc": new_tokens / n,
        "prompt_tokens_per_s": prompt_tokens / times["stage"],
        "new_tokens_per_s": new_tokens / times["stage"],
    }


def bench_prefix_caching(records: list[dict], args, tmp: Path) -> list[dict]:
    from kun_hpc.stages.registry import make_stage

    rows = []
    for mode in ("reference", "calibrated"):
        times, cpu = {}, {}
        for caching in (True, False):
            knobs = [f"point.mode={mode}", f"point.engine.enable_prefix_caching={caching}"]
            cfg = load_config("point", args, knobs)
            stage = make_stage("point", cfg)
            stage.setup()
            try:
                shard, work = tmp / "prefix" / "input.jsonl.zst", tmp / "prefix" / "work"
                write_shard(shard, records)
                prov = {**stage.provenance(), "config_hash": "bench"}

                def once(stage=stage, shard=shard, work=work, prov=prov) -> None:
                    run_stage_once(stage, shard, work, args.chunk, prov)

                once()  # warm-up
                reset = stage.engine.llm.reset_prefix_cache
                wall, used = best_of(args.repeat, {"stage": once}, reset)
                times[caching], cpu[caching] = wall["stage"], used["stage"]
            finally:
                stage.close()
        rows.append(
            {
                "mode": mode,
                "records": len(records),
                "docs_per_s_on": len(records) / times[True],
                "docs_per_s_off": len(records) / times[False],
                "speedup": times[False] / times[True],
                "speedup_cpu": cpu[False] / cpu[True],
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------ main
def parse_new_tokens(text: str) -> dict[str, int]:
    out = dict(DEFAULT_NEW_TOKENS)
    for item in filter(None, text.split(",")):
        k, _, v = item.partition("=")
        if k not in out:
            raise SystemExit(f"--new-tokens: unknown stage {k!r}")
        out[k] = int(v)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(REPO / "models" / "tiny-qwen2"), help="a local model folder")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--records", type=int, default=256, help="records per stage")
    p.add_argument("--chunk", type=int, default=128, help="pipeline.chunk_records")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--new-tokens", type=parse_new_tokens, default=dict(DEFAULT_NEW_TOKENS))
    p.add_argument("--set", action="append", default=[], help="config override: label.engine.model=...")
    p.add_argument("--stages", default=",".join(STAGES), help="stages to compare with the bare loop")
    p.add_argument("--skip-prefix", action="store_true", help="skip the prefix caching comparison")
    p.add_argument("--json", default=str(REPO / "bench-out" / "kun_stages.json"))
    args = p.parse_args(argv)
    if not Path(args.model).is_dir():
        raise SystemExit(f"no model folder {args.model}: python tools/make_tiny_model.py builds the tiny one")

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    records = bench_records(args.records)
    with tempfile.TemporaryDirectory(prefix="bench-kun-") as tmp:
        stages = [bench_stage(s, records[s], args, Path(tmp)) for s in args.stages.split(",") if s]
        prefix = [] if args.skip_prefix else bench_prefix_caching(records["point"], args, Path(tmp))
    report = {
        "model": args.model,
        "records": args.records,
        "chunk_records": args.chunk,
        "max_num_seqs": args.max_num_seqs,
        "repeat": args.repeat,
        "stages": stages,
        "point_prefix_caching": prefix,
        "plan_throughput": {s["stage"]: round(s["docs_per_s"]["stage"], 2) for s in stages},
    }
    print_report(report)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten: {out}")
    return 0


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    t = Table(title=f"Kun stages vs bare LLM.generate ({Path(report['model']).name}, vLLM)")
    for col in (
        "stage",
        "records",
        "new tok",
        "stage docs/s",
        "bare docs/s",
        "ratio",
        "bare 1-call docs/s",
        "bare seeded docs/s",
        "ratio seeded",
        "ratio CPU s",
        "ratio seeded CPU s",
        "drain docs/s",
        "overlap gain",
        "prompt tok/s",
        "gen tok/s",
    ):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for s in report["stages"]:
        d = s["docs_per_s"]
        t.add_row(
            s["stage"],
            str(s["records"]),
            str(s["max_new_tokens"]),
            f"{d['stage']:.1f}",
            f"{d['bare']:.1f}",
            f"{s['ratio_stage_over_bare']:.2f}",
            f"{d['bare_one_call']:.1f}",
            f"{d['bare_seeded']:.1f}",
            f"{s['ratio_stage_over_bare_seeded']:.2f}",
            f"{s['ratio_cpu_stage_over_bare']:.2f}",
            f"{s['ratio_cpu_stage_over_bare_seeded']:.2f}",
            f"{d['stage_drain']:.1f}",
            f"{s['ratio_overlap']:.2f}x",
            f"{s['prompt_tokens_per_s']:.0f}",
            f"{s['new_tokens_per_s']:.0f}",
        )
    console.print(t)
    if report["point_prefix_caching"]:
        t = Table(title="Point stage: prefix caching on vs off")
        for col in ("mode", "records", "on docs/s", "off docs/s", "speedup", "speedup CPU s"):
            t.add_column(col, justify="left" if col == "mode" else "right")
        for r in report["point_prefix_caching"]:
            t.add_row(
                r["mode"],
                str(r["records"]),
                f"{r['docs_per_s_on']:.1f}",
                f"{r['docs_per_s_off']:.1f}",
                f"{r['speedup']:.2f}x",
                f"{r['speedup_cpu']:.2f}x",
            )
        console.print(t)
    console.print("for kun-hpc plan (docs/s per task, this machine and model):")
    for stage, v in report["plan_throughput"].items():
        console.print(f"  pipeline.throughput.{stage}={v}")
    console.print("to size another engine from its tokens/s: docs/s ~ tokens/s / tokens per doc")
    for s in report["stages"]:
        console.print(
            f"  {s['stage']}: {s['prompt_tokens_per_doc']:.0f} prompt + {s['new_tokens_per_doc']:.0f} new "
            "tokens per doc"
        )


if __name__ == "__main__":
    sys.exit(main())
