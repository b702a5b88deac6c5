"""Benchmark (not a test): SFT throughput of the tiny model on CPU, one process vs two (DDP, gloo), and the
sizing estimates ``kun-hpc plan`` uses for Yi-6B and Yi-34B.

    python tools/bench_train.py [--steps N] [--repeat R] [--work DIR] [--json OUT.json]

Variants, each ``kun-hpc train label configs/train-tiny.yaml`` in a fresh subprocess on the bundled seed
pairs (same examples, same micro-batch per process, ``train.max_steps=N``):

* ``1-proc``: one process (the peer)
* ``2-proc``: two local processes, DDP over gloo (each process gets half the cores)

Tokens/s is every non-padding token of the run (prompt + target, summed over the processes) per second of
rank 0's training loop (model loading and imports are outside the clock). Two processes do twice the
tokens per step. ``ratio`` is tokens/s of the variant over ``1-proc``'s, measured in the same run; with
``--repeat R`` the best of R runs counts. On a 2-core machine shared with other work the ratio says little
about a real cluster; the row is there to show the gloo path scales at all and what it costs.

The sizing rows are estimates from kun_hpc/train/sizing.py (parameter counts from the published configs,
16 bytes per parameter of fp32 weights + grads + Adam, bf16 activations with recomputation), for the
configs/train-label.yaml setup (2 nodes x 8 GPUs, micro-batch 2, 1024 tokens) and its 6 epochs on
``--seed-pairs`` pairs of the bundled set's mean length.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
VARIANTS = {"1-proc": 1, "2-proc": 2}


def run_variant(name: str, nproc: int, work: Path, steps: int, model: str) -> dict:
    out = work / f"{name}-{time.time_ns()}"
    cmd = [
        sys.executable,
        "-m",
        "kun_hpc.cli",
        "train",
        "label",
        str(REPO / "configs" / "train-tiny.yaml"),
        f"train.base_model={model}",
        f"train.output={out}",
        f"train.nproc={nproc}",
        f"train.max_steps={steps}",
        f"train.save_steps={steps}",
        "train.log_steps=1000",
        "train.max_len=512",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    return {
        "variant": name,
        "processes": nproc,
        "steps": summary["step"],
        "tokens": summary["tokens"],
        "seconds": summary["seconds"],
        "tokens_per_s": summary["tokens_per_s"],
        "data_report": str(out / "data" / "label.report.json"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--model", default=str(REPO / "models" / "tiny-qwen2"))
    p.add_argument("--work", default=None, help="work folder (default: a temp folder)")
    p.add_argument("--seed-pairs", type=int, default=10_000, help="seed set size for the 34B/6B estimates")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    from kun_hpc.train.sizing import YI_6B, YI_34B, estimate, print_estimates
    from tools.make_tiny_model import ensure_tiny_model

    ensure_tiny_model(args.model)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_train-"))
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for name, n in VARIANTS.items():
            r = run_variant(name, n, work, args.steps, args.model)
            if name not in best or r["tokens_per_s"] > best[name]["tokens_per_s"]:
                best[name] = r
    peer = best["1-proc"]["tokens_per_s"]
    for r in best.values():
        r["ratio_vs_1proc"] = round(r["tokens_per_s"] / peer, 3)
        print(
            f"{r['variant']:8s} {r['tokens_per_s']:10.1f} tokens/s  ratio {r['ratio_vs_1proc']:.2f}  "
            f"({r['tokens']} tokens, {r['steps']} steps, {r['seconds']:.2f} s)"
        )

    report = json.loads(Path(best["1-proc"]["data_report"]).read_text())
    per_pair = (report["prompt_tokens"] + report["target_tokens"]) / report["out"]
    tokens = int(per_pair * args.seed_pairs)
    sizing = []
    for shape, gpus in ((YI_34B, 16), (YI_6B, 8)):
        rows = estimate(shape, gpus, 2, 1024, True, tokens, epochs=6)
        print_estimates(rows, f"{shape.name}, {gpus} GPUs, 6 epochs of {args.seed_pairs:,} pairs (estimates)")
        sizing.extend(r.to_dict() for r in rows)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "throughput": list(best.values()),
                    "sizing_estimates": sizing,
                    "tokens_per_pair_tiny_tokenizer": round(per_pair, 1),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
