"""Benchmark (not a test): SFT throughput of TRL's SFTTrainer (kun_hpc/train/sft.py) against a plain torch
loop, the loop kun-hpc had before TRL, on the tiny model on CPU; and the sizing estimates ``kun-hpc plan``
prints for Yi-6B and Yi-34B, full fine-tuning against LoRA.

    python tools/bench_train.py [--steps N] [--repeat R] [--work DIR] [--json OUT.json]

Both variants run in this process, one after the other, on the same prepared Label set of the bundled seed
pairs (the examples in file order, micro-batches of 4, no warmup, ``--steps`` optimizer steps, float32):

* ``plain-torch``: :func:`reference_run`, the peer;
* ``trl``: ``kun_hpc.train.sft.train`` with sequential sampling (what ``kun-hpc train`` runs).

Tokens/s is the non-padding tokens of the run (prompt + target) per second of the training loop (model
loading, imports and the data preparation are outside the clock; the Trainer's clock includes its per-step
logging). ``ratio`` is trl's tokens/s over plain-torch's, measured in the same run; with ``--repeat R`` the
best of R runs counts. tests/train/test_sft.py checks that both give the same learning rates and losses.

The sizing rows are estimates from kun_hpc/train/sizing.py for the configs/train-label.yaml setup (2 nodes x
8 GPUs for Yi-34B, 1 node for Yi-6B, micro-batch 2, 1024 tokens, 6 epochs of ``--seed-pairs`` pairs of the
bundled set's mean length), with LoRA rank ``--lora-rank`` on every linear layer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
IGNORE = -100


def pad(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, mask and labels (-100 on prompt and padding) of prepared rows (prompt_ids,
    target_ids)."""
    n = max(len(e["prompt_ids"]) + len(e["target_ids"]) for e in examples)
    ids = torch.full((len(examples), n), pad_id)
    labels = torch.full((len(examples), n), IGNORE)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for row, e in enumerate(examples):
        p, t = e["prompt_ids"], e["target_ids"]
        ids[row, : len(p) + len(t)] = torch.tensor(p + t)
        labels[row, len(p) : len(p) + len(t)] = torch.tensor(t)
        mask[row, : len(p) + len(t)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def target_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over the positions whose label is not -100."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def reference_run(model_dir: Path, examples: list[dict], t, pad_id: int) -> dict:
    """The SFT step in plain torch (the loop kun-hpc had before TRL, on sequential batches): loss = summed
    target-token cross-entropy of an optimizer step's micro-batches over their target tokens, AdamW, cosine
    from lr to lr * min_lr_ratio (no warmup), gradient clipping. Returns lrs, losses, weights, tokens and
    seconds (the loop only)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps,
                            weight_decay=0.0)  # fmt: skip
    mb, accum, steps = t.micro_batch_size, t.grad_accum, t.max_steps
    batches = [examples[s : s + mb] for s in range(0, len(examples), mb)]
    lrs, losses, tokens = [], [], 0
    t0 = time.perf_counter()
    for step in range(steps):
        lr = t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        window = batches[step * accum : (step + 1) * accum]
        n_target = sum(len(e["target_ids"]) for b in window for e in b)
        total = 0.0
        for b in window:
            batch = pad(b, pad_id)
            loss = target_loss_sum(model, batch) / n_target
            loss.backward()
            total += float(loss.detach())
            tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        opt.step()
        opt.zero_grad()
        lrs.append(lr)
        losses.append(total)
    seconds = time.perf_counter() - t0
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"lrs": lrs, "losses": losses, "weights": weights, "tokens": tokens, "seconds": seconds}


def sequential(sft_config):
    """``sft_config`` with transformers' sequential sampler: the examples in file order, as the peer."""
    return lambda *a: dataclasses.replace(sft_config(*a), train_sampling_strategy="sequential")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--model", default=str(REPO / "models" / "tiny-qwen2"))
    p.add_argument("--work", default=None, help="work folder (default: a temp folder)")
    p.add_argument("--seed-pairs", type=int, default=10_000, help="seed set size for the 34B/6B estimates")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    from kun_hpc import config
    from kun_hpc.train import sft
    from kun_hpc.train.data import data_path, read_examples, report_path
    from kun_hpc.train.launch import prepare
    from kun_hpc.train.sizing import YI_6B, YI_34B, estimate, print_estimates
    from tools.make_tiny_model import ensure_tiny_model

    ensure_tiny_model(args.model)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_train-"))
    sft.sft_config = sequential(sft.sft_config)
    best: dict[str, dict] = {}
    for attempt in range(args.repeat):
        out = work / f"trl-{attempt}-{time.time_ns()}"
        cfg = config.load(
            REPO / "configs" / "train-tiny.yaml",
            [f"train.base_model={args.model}", f"train.output={out}", f"train.max_steps={args.steps}",
             "train.warmup_ratio=0", "train.length_group=false", "train.save_steps=100000",
             "train.log_steps=1000", "train.max_len=512", "train.micro_batch_size=4"],
        )  # fmt: skip
        prepare(cfg)
        summary = sft.train(cfg)
        examples = read_examples(data_path(out, "label"))
        ref = reference_run(
            Path(args.model), examples, cfg.train, AutoTokenizer.from_pretrained(args.model).pad_token_id
        )
        runs = {
            "plain-torch": {"tokens": ref["tokens"], "seconds": ref["seconds"]},
            "trl": {"tokens": summary["tokens"], "seconds": summary["seconds"]},
        }
        for name, r in runs.items():
            r.update(variant=name, steps=args.steps, tokens_per_s=round(r["tokens"] / r["seconds"], 1))
            if name not in best or r["tokens_per_s"] > best[name]["tokens_per_s"]:
                best[name] = r
    peer = best["plain-torch"]["tokens_per_s"]
    for r in best.values():
        r["ratio_vs_plain_torch"] = round(r["tokens_per_s"] / peer, 3)
        print(
            f"{r['variant']:12s} {r['tokens_per_s']:10.1f} tokens/s  ratio {r['ratio_vs_plain_torch']:.2f}  "
            f"({r['tokens']} tokens, {r['steps']} steps, {r['seconds']:.2f} s)"
        )

    report = json.loads(report_path(out, "label").read_text())
    per_pair = (report["prompt_tokens"] + report["target_tokens"]) / report["out"]
    tokens = int(per_pair * args.seed_pairs)
    sizing = []
    for shape, gpus in ((YI_34B, 16), (YI_6B, 8)):
        rows = estimate(shape, gpus, 2, 1024, True, tokens, epochs=6, lora_rank=args.lora_rank)
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
