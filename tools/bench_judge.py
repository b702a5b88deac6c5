"""Benchmark (not a test): tokens per judgement of the Point stage with ``point.stop_at_verdict`` off (Kun's
reference: the judge writes on after its verdict) and on (generation ends at the first complete tag).

    python tools/bench_judge.py [--engine scripted|tiny] [--records 1000] [--max-new-tokens 1024]
                                [--model models/tiny-qwen2] [--backend vllm|transformers] [--json OUT]

Instructions: the bundled seed pairs' (shards/sample/seed/alpaca_zh_demo.json), the first ``--records``.
Point's real code in reference mode with Kun's sampling (temperature 0.5, top_p 0.95, repetition penalty
1.2, a seed per record), chunks of 256, once per setting; the figures come from the stage's own
``chunk_stats`` (what the markers hold and the report's Judge health section reads).

``--engine scripted``: tests/quality/test_judge.py's ``ScriptedJudge`` (one token per character, stop
strings and ``max_new_tokens`` as the engines apply them) with a judge that gives its verdict in its first
characters and then explains for 20 to 1,500 characters; one judgement in 20 names both tags, one in 25
none (a hash of the instruction decides, so both settings judge the same texts). ``--engine tiny``: the
tiny random model (``tools/make_tiny_model.py``), which writes no tag: the option then changes nothing, as
it should.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import xxhash  # noqa: E402

from kun_hpc import config  # noqa: E402
from kun_hpc.core.counts import add_stats  # noqa: E402
from kun_hpc.inference import EngineSpec, load_engine  # noqa: E402
from kun_hpc.quality.judge import token_summary  # noqa: E402
from kun_hpc.stages.point import Point  # noqa: E402
from tests.quality.test_judge import ScriptedJudge  # noqa: E402

SEED = REPO / "shards" / "sample" / "seed" / "alpaca_zh_demo.json"
WORDS = "这个指令清晰明确，要求具体，可以回答。但是它也有一些含糊之处，需要更多背景信息才能给出好的回答。"


def rambling(instruction: str) -> str:
    """A judge that gives its verdict first, then explains at length (see the module docstring)."""
    h = xxhash.xxh64_intdigest(instruction.encode())
    tag = "【好】" if h % 3 else "【差】"
    body = (WORDS * 40)[: 20 + (h >> 8) % 1480]
    if h % 20 == 0:
        return f"答：【好】。{body[:40]}不过也可以说【差】。{body}"
    if h % 25 == 1:
        return f"答：{body}"
    return f"答：{tag}。{body}"


def judge(engine, records: list[dict], stop: bool, max_new: int) -> dict:
    cfg = config.load(
        None,
        ["point.engine.model=m", f"point.sampling.max_new_tokens={max_new}", f"point.stop_at_verdict={stop}"],
    )
    point = Point(cfg, cfg.point)
    point.engine = engine
    point.setup()
    start = time.perf_counter()
    stats: dict = {}
    for out in point.process_stream(iter([records[k : k + 256] for k in range(0, len(records), 256)])):
        stats = add_stats(stats, point.chunk_stats(out))
    seconds = time.perf_counter() - start
    total: dict = {}
    for per_corpus in stats["judge"].values():
        total = add_stats(total, per_corpus)
    tokens = token_summary(total.get("tokens", {}), total.get("truncated", 0))
    generated = sum(int(k) * v for k, v in total.get("tokens", {}).items())
    return {"stop_at_verdict": stop, "seconds": round(seconds, 2), "outcomes": total["outcomes"],
            "tokens": tokens, "generated": generated}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("scripted", "tiny"), default="scripted")
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--model", default=str(REPO / "models" / "tiny-qwen2"))
    ap.add_argument("--backend", default="vllm", choices=("vllm", "transformers"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    seed = json.loads(SEED.read_text(encoding="utf-8"))[: a.records]
    records = [{"id": f"seed/{i}", "corpus": "seed", "instruction": p["instruction"]}
               for i, p in enumerate(seed)]  # fmt: skip
    if a.engine == "tiny":
        engine = load_engine(EngineSpec(model=a.model, backend=a.backend, dtype="float32", max_num_seqs=256))
    else:
        engine = ScriptedJudge(rambling)
    runs = [judge(engine, records, stop, a.max_new_tokens) for stop in (False, True)]
    print(f"{len(records)} judgements, engine {a.engine}, max_new_tokens {a.max_new_tokens}")
    print("| stop_at_verdict | outcomes | mean | p50 | p99 | hit max | tokens in all | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        t = r["tokens"]
        outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(r["outcomes"].items()))
        hit = f"{t['truncated']:,} ({100 * t['share_truncated']:.1f}%)"
        print(f"| {str(r['stop_at_verdict']).lower()} | {outcomes} | {t['mean']:.1f} | {t['p50']:.0f} | "
              f"{t['p99']:.0f} | {hit} | {r['generated']:,} | {r['seconds']} |")  # fmt: skip
    off, on = runs
    if on["generated"]:
        print(f"tokens generated, off / on: x{off['generated'] / on['generated']:.2f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"engine": a.engine, "records": len(records), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
