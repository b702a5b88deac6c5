"""The SFT loop: one process per device, torch.distributed from the environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ... as torchrun or :mod:`kun_hpc.train.launch` set them), plain torch, no Trainer.

* Loss on the response tokens only: prompt and padding positions carry the label -100; the loss of an
  optimizer step is the sum over its target tokens divided by their number (per process).
* Batches: a seeded permutation per epoch, grouped by length within windows of ``length_group_window``
  micro-batches (less padding), the micro-batches shuffled again and dealt round robin to the processes.
  The order depends only on (seed, epoch), so a resumed run sees the batches an uninterrupted run sees.
* Precision: the weights and the AdamW state are float32; on GPU the forward/backward runs in bfloat16
  (autocast, or FSDP's mixed-precision policy); on CPU everything is float32.
* ``distributed``: ``ddp`` (DistributedDataParallel), ``fsdp`` (``torch.distributed.fsdp.fully_shard``, one
  unit per decoder layer; ``full`` = ZeRO-3, ``grad_op`` = ZeRO-2), ``none``.
* Checkpoints: ``<out>/checkpoints/step-N`` every ``save_steps`` optimizer steps, written by every process
  into a temporary folder with ``torch.distributed.checkpoint`` (sharded under FSDP) plus the scheduler, the
  step and each process's RNG state, then renamed: a folder named step-N is complete. The last
  ``keep_checkpoints`` are kept. A start resumes from the newest one.
* The end: ``<out>/model``, a plain Hugging Face folder (safetensors, config, tokenizer, ChatML template,
  generation config stopping at ``<|im_end|>``) that ``label.engine.model`` / ``point`` / ``answer`` can name.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.train.data import CHATML_TOKENS, END_OF_TURN, data_path, read_examples

IGNORE = -100
CKPT_DIR = "checkpoints"
MODEL_DIR = "model"
LOG_FILE = "train_log.jsonl"
STATE_FILE = "trainer_state.json"
DONE_FILE = "kun_train.json"  # in the final model folder: what made it
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ------------------------------------------------------------------------------------ process setup
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.on:
            torch.distributed.barrier()


def init_dist(mode: str) -> Dist:
    """Join the process group the environment describes (a lone process joins none)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if mode == "none" and world > 1:
        raise ValueError("train.distributed=none but WORLD_SIZE > 1: use ddp or fsdp")
    d = Dist(
        rank=int(os.environ.get("RANK", "0")),
        world=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )
    if torch.cuda.is_available():
        d.device = torch.device("cuda", d.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(d.device)
    elif "OMP_NUM_THREADS" not in os.environ:  # processes of a node share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // d.local_world))
    if d.on and not torch.distributed.is_initialized():
        # a bounded wait: a rank whose peer died at start fails instead of waiting the default 30 min
        torch.distributed.init_process_group(
            "nccl" if d.device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=10)
        )
    return d


def compute_dtype(t: DictConfig, device: torch.device) -> torch.dtype:
    if t.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, t.dtype)


# ------------------------------------------------------------------------------------------ batching
def epoch_batches(lengths: list[int], t: DictConfig, epoch: int, world: int) -> list[list[list[int]]]:
    """Per process, the micro-batches (lists of example indices) of one epoch; every process gets as many."""
    g = torch.Generator().manual_seed(int(t.seed) * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    mb = int(t.micro_batch_size)
    if t.length_group:
        window = mb * int(t.length_group_window)
        order = [
            i
            for s in range(0, len(order), window)
            for i in sorted(order[s : s + window], key=lambda i: -lengths[i])
        ]
    batches = [order[s : s + mb] for s in range(0, len(order), mb)]
    batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    per = len(batches) // world
    if per == 0:
        raise ValueError(f"{len(lengths)} examples make fewer micro-batches than processes ({world})")
    return [batches[r * per : (r + 1) * per] for r in range(world)]


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (-100 on prompt and padding positions)."""
    n = max(len(e["prompt_ids"]) + len(e["target_ids"]) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for row, e in enumerate(examples):
        p, t = e["prompt_ids"], e["target_ids"]
        ids[row, : len(p) + len(t)] = torch.tensor(p + t)
        labels[row, len(p) : len(p) + len(t)] = torch.tensor(t)
        mask[row, : len(p) + len(t)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the next-token cross-entropies over positions whose label is not -100."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.size(-1))
    shift_labels = labels[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE, reduction="sum")


def lr_lambda(total: int, warmup: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def schedule_steps(n_micro: int, t: DictConfig) -> tuple[int, int, int]:
    """(optimizer steps per epoch, total steps, warmup steps)."""
    per_epoch = -(-n_micro // int(t.grad_accum))
    total = per_epoch * int(t.epochs)
    if t.max_steps is not None:
        total = min(total, int(t.max_steps))
    return per_epoch, total, math.ceil(float(t.warmup_ratio) * total)


# ------------------------------------------------------------------------------------- model set-up
def wrap_model(model: torch.nn.Module, t: DictConfig, d: Dist, dtype: torch.dtype) -> torch.nn.Module:
    if not d.on or t.distributed == "none":
        return model
    if t.distributed == "ddp" or t.fsdp.sharding == "no_shard":
        from torch.nn.parallel import DistributedDataParallel

        ids = [d.device.index] if d.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    names = set(t.fsdp.wrap_classes) or set(getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(
            "train.fsdp.wrap_classes: the model names no _no_split_modules; name its layer class"
        )
    kwargs: dict[str, Any] = {
        "mp_policy": MixedPrecisionPolicy(
            param_dtype=dtype, reduce_dtype=getattr(torch, t.fsdp.reduce_dtype)
        ),
        "reshard_after_forward": t.fsdp.sharding == "full" and bool(t.fsdp.reshard_after_forward),
    }
    if t.fsdp.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for m in model.modules():
        if type(m).__name__ in names:
            fully_shard(m, **kwargs)
    fully_shard(model, **kwargs)
    return model


def autocast(t: DictConfig, d: Dist, dtype: torch.dtype):
    if d.device.type == "cuda" and dtype != torch.float32 and t.distributed != "fsdp":
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------- checkpoints
def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first (a folder named step-N is complete: it was renamed in whole)."""
    found = []
    for p in (out / CKPT_DIR).glob("step-*"):
        if p.is_dir() and p.name[5:].isdigit() and (p / STATE_FILE).is_file():
            found.append((int(p.name[5:]), p))
    return sorted(found)


def save_checkpoint(
    out: Path, step: int, model, optimizer, scheduler, state: dict, t: DictConfig, d: Dist
) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = out / CKPT_DIR / f"step-{step}"
    tmp = out / CKPT_DIR / f".step-{step}.tmp"
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    d.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # one process: DCP says it saves without a process group, as meant
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state(d.device)
    torch.save(rng, tmp / f"rng-{d.rank}.pt")
    d.barrier()
    if d.main:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        atomic_write_bytes(tmp / STATE_FILE, json.dumps({**state, "step": step, "world": d.world}).encode())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in checkpoints(out)[: -int(t.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
    d.barrier()
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, d: Dist) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    sd = {"model": model_sd, "optim": optim_sd}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(sd, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    state = json.loads((path / STATE_FILE).read_text())
    rng_file = path / f"rng-{d.rank}.pt"
    if state.get("world") == d.world and rng_file.is_file():
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"], d.device)
    return state


def save_final(out: Path, model, base, tokenizer, dtype: torch.dtype, info: dict, d: Dist) -> Path:
    """The trained weights as a plain HF folder, written by rank 0 into a temp folder and renamed."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    target = out / MODEL_DIR
    if d.main:
        tmp = out / f".{MODEL_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        full = {k: v.to(dtype) for k, v in full.items()}
        base.config.use_cache = True
        base.config.dtype = dtype
        base.save_pretrained(tmp, state_dict=full, safe_serialization=True)
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = CHATML_TEMPLATE
        tokenizer.save_pretrained(tmp)
        gen = base.generation_config
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        stops = []
        for tid in [tokenizer.convert_tokens_to_ids(END_OF_TURN), *eos, tokenizer.eos_token_id]:
            if tid is not None and tid not in stops:
                stops.append(tid)
        gen.eos_token_id = stops
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[-1]
        gen.save_pretrained(tmp)
        atomic_write_bytes(tmp / DONE_FILE, json.dumps(info, indent=2, sort_keys=True).encode())
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    d.barrier()
    return target


# ------------------------------------------------------------------------------------------- the loop
def _log(out: Path, row: dict) -> None:
    with open(out / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    print(" ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr, flush=True)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train ``train.task`` on the prepared set under ``train.output``; returns this process's summary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kun_hpc.inference.engine import go_offline, resolve_model_path

    go_offline()
    t = cfg.train
    out = Path(t.output)
    d = init_dist(t.distributed)
    dtype = compute_dtype(t, d.device)
    if (out / MODEL_DIR / DONE_FILE).is_file():
        info = json.loads((out / MODEL_DIR / DONE_FILE).read_text())
        return {**info, "rank": d.rank, "status": "already done"}

    base_path = resolve_model_path(t.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.convert_tokens_to_ids(CHATML_TOKENS[1])
    examples = read_examples(data_path(out, t.task))
    lengths = [len(e["prompt_ids"]) + len(e["target_ids"]) for e in examples]

    random.seed(int(t.seed) + d.rank)
    torch.manual_seed(int(t.seed))  # same init everywhere; dropout streams are restored from checkpoints
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).to(d.device)
    base.config.use_cache = False
    if t.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.train()
    model = wrap_model(base, t, d, dtype)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n.lower()]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n.lower())]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": float(t.weight_decay)}, {"params": no_decay, "weight_decay": 0.0}],
        lr=float(t.lr),
        betas=(float(t.adam_beta1), float(t.adam_beta2)),
        eps=float(t.adam_eps),
        foreach=d.device.type == "cuda",
    )
    n_micro = len(epoch_batches(lengths, t, 0, d.world)[d.rank])
    per_epoch, total, warmup = schedule_steps(n_micro, t)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, warmup, float(t.min_lr_ratio)))

    step, resumed_from = 0, None
    found = checkpoints(out)
    if found:
        step, path = found[-1]
        load_checkpoint(path, model, optimizer, scheduler, d)
        resumed_from = step
        if d.main:
            print(f"kun-hpc train: resumed from {path}", file=sys.stderr, flush=True)
    stop = min(total, int(t.stop_at_step)) if t.stop_at_step is not None else total
    state = {"total_steps": total, "steps_per_epoch": per_epoch, "warmup_steps": warmup, "world": d.world}

    tokens = torch.zeros(2, dtype=torch.float64)  # (all tokens, target tokens) this run, this process
    first_loss = last_loss = None
    t0 = time.perf_counter()
    batches: list[list[int]] = []
    epoch = -1
    while step < stop:
        if step // per_epoch != epoch:
            epoch = step // per_epoch
            batches = epoch_batches(lengths, t, epoch, d.world)[d.rank]
        start = (step % per_epoch) * int(t.grad_accum)
        window = [
            collate([examples[i] for i in b], pad_id) for b in batches[start : start + int(t.grad_accum)]
        ]
        n_target = sum(int((w["labels"][:, 1:] != IGNORE).sum()) for w in window)
        loss_sum = 0.0
        for k, batch in enumerate(window):
            batch = {key: v.to(d.device) for key, v in batch.items()}
            sync = k == len(window) - 1
            no_sync = (
                model.no_sync() if (not sync and hasattr(model, "no_sync")) else contextlib.nullcontext()
            )
            with no_sync:
                with autocast(t, d, dtype):
                    logits = model(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                    ).logits
                loss = token_loss_sum(logits, batch["labels"]) / max(1, n_target)
                loss.backward()
            loss_sum += float(loss.detach())
            tokens[0] += float(batch["attention_mask"].sum())
        tokens[1] += n_target
        if t.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(t.max_grad_norm))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if d.on:  # the mean loss over processes, for the log
            buf = torch.tensor([loss_sum], device=d.device)
            torch.distributed.all_reduce(buf)
            loss_sum = float(buf) / d.world
        first_loss = loss_sum if first_loss is None else first_loss
        last_loss = loss_sum
        if d.main and (step % int(t.log_steps) == 0 or step in (1, stop)):
            _log(
                out,
                {
                    "step": step,
                    "epoch": epoch,
                    "lr": lr,
                    "loss": round(loss_sum, 6),
                    "elapsed_s": round(time.perf_counter() - t0, 3),
                },
            )
        if step % int(t.save_steps) == 0 or step == stop:
            save_checkpoint(out, step, model, optimizer, scheduler, state, t, d)
    seconds = time.perf_counter() - t0
    if d.on:
        torch.distributed.all_reduce(tokens)
    summary = {
        "task": t.task,
        "rank": d.rank,
        "world_size": d.world,
        "step": step,
        "total_steps": total,
        "resumed_from": resumed_from,
        "first_loss": first_loss,
        "last_loss": last_loss,
        "tokens": int(tokens[0]),
        "target_tokens": int(tokens[1]),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(float(tokens[0]) / seconds, 1) if seconds > 0 else None,
        "examples": len(examples),
        "base_model": str(base_path),
    }
    if step >= total:
        info = {k: summary[k] for k in ("task", "world_size", "total_steps", "examples", "base_model")}
        info["config"] = OmegaConf.to_container(t, resolve=True)
        summary["model_dir"] = str(save_final(out, model, base, tokenizer, dtype, info, d))
        summary["status"] = "done"
    else:
        summary["status"] = f"stopped at step {step} of {total}"
    summary["param_sum"] = param_sum(model)
    return summary


def param_sum(model: torch.nn.Module) -> float:
    """Sum of this process's (local shard of the) parameters: equal on every DDP process after a step."""
    total = 0.0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += float(local.detach().double().sum())
    return total
