"""SFT through TRL's ``SFTTrainer`` (transformers ``Trainer`` on accelerate): one process per device,
torch.distributed from the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ... as torchrun,
:mod:`kun_hpc.train.launch` or submitit set them).

What is kun-hpc's own here is only the wiring:

* the examples are the prepared set (:mod:`kun_hpc.train.data`), already tokenized as the inference engines
  tokenize prompts, given to TRL as a pre-tokenized prompt-completion dataset (``input_ids`` +
  ``completion_mask``): with ``completion_only_loss`` TRL sets the label of every prompt token to -100, so
  the loss covers the completion (the target) only, summed over an optimizer step's target tokens and divided
  by their number (transformers' ``num_items_in_batch``);
* ``train.*`` -> :class:`trl.SFTConfig` (:func:`sft_config`): AdamW, cosine schedule with linear warmup down
  to ``lr * min_lr_ratio``, clipping, gradient accumulation, gradient checkpointing, bf16 on GPU and fp32 on
  CPU, length-grouped batches, TensorBoard logs in ``<out>/tensorboard``, a JSON line per log in
  ``<out>/train_log.jsonl``;
* ``train.distributed``: ``ddp``, or ``fsdp`` / ``deepspeed`` read from an accelerate config file
  (:func:`accelerate_settings`; kun_hpc/configs/accelerate/ has FSDP full-shard and DeepSpeed ZeRO-3);
* ``train.lora.enabled``: LoRA through PEFT, merged into the base weights at the end (``merge_and_unload``);
* checkpoints ``<out>/checkpoints/checkpoint-N`` every ``save_steps`` steps (Trainer's own: model,
  optimizer, scheduler, RNG states, ``trainer_state.json`` written last, so a folder holding it is complete);
  a start resumes from the newest complete one, and the Trainer skips the batches already seen, so a resumed
  run takes the batches and learning rates of an uninterrupted one; ``train.stop_at_step`` checkpoints and
  stops there with the schedule unchanged (what a preemption does);
* the end: ``<out>/model``, a plain Hugging Face folder (safetensors in the training dtype, config, tokenizer
  with a ChatML chat template, generation config stopping at ``<|im_end|>``, ``kun_train.json``: what made
  it), written into a temporary folder and renamed, which vLLM and transformers load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from kun_hpc.inference.engine import go_offline, resolve_model_path
from kun_hpc.inference.prompt import CHATML_TEMPLATE
from kun_hpc.train.accelerate_config import accelerate_settings
from kun_hpc.train.data import CHATML_TOKENS, DONE_FILE, END_OF_TURN, MODEL_DIR, data_path, read_examples

CKPT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"  # LoRA: the adapter alone, beside the merged model
LOG_FILE = "train_log.jsonl"
TENSORBOARD_DIR = "tensorboard"
STATE_FILE = "trainer_state.json"  # the Trainer writes it last into a checkpoint


# ------------------------------------------------------------------------------------------- settings
def on_gpu() -> bool:
    return torch.cuda.is_available()


def compute_dtype(t: DictConfig, gpu: bool) -> torch.dtype:
    """``train.dtype``; ``auto``: bfloat16 on GPU, float32 on CPU."""
    if t.dtype == "auto":
        return torch.bfloat16 if gpu else torch.float32
    return getattr(torch, t.dtype)


def sft_config(t: DictConfig, out: Path, gpu: bool):
    """``train.*`` as TRL's :class:`~trl.SFTConfig` (a ``TrainingArguments``)."""
    from trl import SFTConfig

    dtype = compute_dtype(t, gpu)
    return SFTConfig(
        output_dir=str(out / CKPT_DIR),
        num_train_epochs=int(t.epochs),
        max_steps=int(t.max_steps) if t.max_steps is not None else -1,
        learning_rate=float(t.lr),
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": float(t.min_lr_ratio)},
        warmup_steps=float(t.warmup_ratio),  # a float in [0, 1): the share of all steps
        weight_decay=float(t.weight_decay),
        adam_beta1=float(t.adam_beta1),
        adam_beta2=float(t.adam_beta2),
        adam_epsilon=float(t.adam_eps),
        max_grad_norm=float(t.max_grad_norm),
        per_device_train_batch_size=int(t.micro_batch_size),
        gradient_accumulation_steps=int(t.grad_accum),
        train_sampling_strategy="group_by_length" if t.length_group else "random",
        gradient_checkpointing=bool(t.gradient_checkpointing),
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        seed=int(t.seed),
        use_cpu=not gpu,  # accelerate: gloo among CPU processes (else each one trains alone)
        save_strategy="steps",
        save_steps=int(t.save_steps),
        save_total_limit=int(t.keep_checkpoints),
        logging_steps=int(t.log_steps),
        logging_first_step=True,
        report_to=["tensorboard"],
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        ddp_timeout=600,  # a rank whose peer died at start fails in 10 min, not the default 30
        ddp_find_unused_parameters=False,
        # TRL: the examples are tokenized already; every one fits max_len (longer ones were rejected)
        max_length=int(t.max_len),
        completion_only_loss=True,
        packing=False,
        **accelerate_settings(t),
    )


def lora_config(t: DictConfig):
    """PEFT's LoRA config for ``train.lora`` (None when it is off)."""
    if not t.lora.enabled:
        return None
    from peft import LoraConfig

    targets = list(t.lora.target_modules)
    return LoraConfig(
        r=int(t.lora.r),
        lora_alpha=int(t.lora.alpha),
        lora_dropout=float(t.lora.dropout),
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )


def sft_dataset(examples: list[dict]):
    """The prepared examples as TRL's pre-tokenized prompt-completion rows: ``input_ids`` (prompt + target
    ids) and ``completion_mask`` (0 on the prompt, 1 on the target)."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "input_ids": [e["prompt_ids"] + e["target_ids"] for e in examples],
            "completion_mask": [[0] * len(e["prompt_ids"]) + [1] * len(e["target_ids"]) for e in examples],
        }
    )


# ---------------------------------------------------------------------------------------- checkpoints
def complete_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """``checkpoint-N`` folders holding ``trainer_state.json`` (written last), oldest first."""
    found = []
    for p in (out / CKPT_DIR).glob("checkpoint-*"):
        step = p.name.removeprefix("checkpoint-")
        if step.isdigit() and (p / STATE_FILE).is_file():
            found.append((int(step), p))
    return sorted(found)


def drop_incomplete_checkpoints(out: Path) -> None:
    """A checkpoint the job was killed while writing would be taken for the newest one (by the Trainer's
    rotation too): gone before the start."""
    for p in (out / CKPT_DIR).glob("checkpoint-*"):
        if p.is_dir() and not (p / STATE_FILE).is_file():
            shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------------------------ callbacks
def _callbacks(out: Path, stop_at: int | None, main: bool) -> list:
    from transformers import TrainerCallback

    class JsonLog(TrainerCallback):
        """A JSON line per loss log (step, epoch, lr, loss), also on stderr: what the tests and users read."""

        def __init__(self) -> None:
            self.rows: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            row = {
                "step": state.global_step,
                "epoch": round(float(state.epoch or 0), 4),
                "lr": logs.get("learning_rate"),
                "loss": round(float(logs["loss"]), 6),
                "grad_norm": logs.get("grad_norm"),
                "tokens_seen": state.num_input_tokens_seen,
            }
            self.rows.append(row)
            if main:
                with open(out / LOG_FILE, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                print(" ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr, flush=True)

    class StopAt(TrainerCallback):
        """``train.stop_at_step``: checkpoint and stop there, the schedule unchanged; the loss of the last
        step is logged whatever ``log_steps``."""

        def on_step_end(self, args, state, control, **kwargs):
            if stop_at is not None and state.global_step >= stop_at:
                control.should_save = True
                control.should_training_stop = True
            if control.should_training_stop or state.global_step >= state.max_steps:
                control.should_log = True

    class TokensAtStart(TrainerCallback):
        """The tokens a resumed run had seen before this start (the throughput counts this run's only)."""

        seen = 0

        def on_train_begin(self, args, state, control, **kwargs):
            TokensAtStart.seen = state.num_input_tokens_seen

    return [JsonLog(), StopAt(), TokensAtStart()]


# ------------------------------------------------------------------------------------------ the run
def train(cfg: DictConfig) -> dict[str, Any]:
    """Train ``train.task`` on the prepared set under ``train.output``; returns this process's summary
    (rank, world size, host name, rendezvous, steps, first and last logged loss, tokens and tokens/s of this
    start, status, and its weights' sum and sha256)."""
    from datasets import disable_progress_bars
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from transformers.utils import logging as transformers_logging
    from trl import SFTTrainer

    go_offline()
    disable_progress_bars()  # TRL's dataset preparation: one bar per map, per process, in every job log
    transformers_logging.disable_progress_bar()  # loading and writing the weights, likewise
    t = cfg.train
    out = Path(t.output)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if (out / MODEL_DIR / DONE_FILE).is_file():
        info = json.loads((out / MODEL_DIR / DONE_FILE).read_text())
        return {**info, "rank": rank, "status": "already done"}
    gpu = on_gpu()
    if not gpu and "OMP_NUM_THREADS" not in os.environ:  # processes of a node share its cores
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / TENSORBOARD_DIR)
    base_path = resolve_model_path(t.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = CHATML_TOKENS[1]
    examples = read_examples(data_path(out, t.task))
    # the arguments first: under FSDP / ZeRO-3 they decide how the weights load (rank 0 only, or sharded)
    args = sft_config(t, out, gpu)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model.config.use_cache = False
    callbacks = _callbacks(out, t.stop_at_step, rank == 0)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft_dataset(examples),
        processing_class=tokenizer,
        peft_config=lora_config(t),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # JsonLog prints one line per log instead
    check_sharding(t, trainer, world)
    if len(trainer.train_dataset) != len(examples):  # TRL drops fully masked rows; ours have none: say so
        raise RuntimeError(
            f"TRL kept {len(trainer.train_dataset)} of the {len(examples)} examples of "
            f"{data_path(out, t.task)}"
        )
    if rank == 0:
        drop_incomplete_checkpoints(out)
    trainer.accelerator.wait_for_everyone()
    found = complete_checkpoints(out)
    resume = found[-1] if found else None
    if resume and rank == 0:
        print(f"kun-hpc train: resumed from {resume[1]}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume[1]) if resume else None)
    seconds = time.perf_counter() - t0
    state = trainer.state
    rows = callbacks[0].rows
    tokens = int(state.num_input_tokens_seen - callbacks[2].seen)
    summary: dict[str, Any] = {
        "task": t.task,
        "rank": rank,
        "world_size": world,
        "hostname": socket.gethostname(),
        "rendezvous": rendezvous(),
        "step": state.global_step,
        "total_steps": state.max_steps,
        "resumed_from": resume[0] if resume else None,
        "first_loss": rows[0]["loss"] if rows else None,
        "last_loss": rows[-1]["loss"] if rows else None,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "examples": len(examples),
        "base_model": str(base_path),
        "lora": bool(t.lora.enabled),
    }
    if state.global_step >= state.max_steps:
        kept = ("task", "world_size", "total_steps", "examples", "base_model", "lora")
        info = {k: summary[k] for k in kept}
        info["config"] = OmegaConf.to_container(t, resolve=True)
        info["final_loss"] = summary["last_loss"]
        summary["model_dir"] = str(save_final(trainer, out, base_path, compute_dtype(t, gpu), info))
        summary["status"] = "done"
    else:
        summary["status"] = f"stopped at step {state.global_step} of {state.max_steps}"
    summary["param_sum"] = param_sum(trainer.model)
    summary["weights_sha256"] = weights_sha256(dict(trainer.model.named_parameters()))
    return summary


def rendezvous() -> dict[str, Any] | None:
    """Where this process met the others: the host and port of the env:// rendezvous (``MASTER_ADDR`` /
    ``MASTER_PORT``, as torchrun or kun-hpc's launch set them) and the address that host name resolves to
    here (``master_ip``: a node whose own name resolves to 127.0.x.x cannot be reached by the others). None
    without torch.distributed."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (dist.is_available() and dist.is_initialized() and host and port):
        return None
    ip = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][4][0]
    return {"master_addr": host, "master_port": int(port), "master_ip": ip}


def check_sharding(t: DictConfig, trainer, world: int) -> None:
    """accelerate applies FSDP and DeepSpeed to GPU processes only; on CPU it would train plain data-parallel
    replicas under the name fsdp. Raises RuntimeError then instead."""
    enabled = {"fsdp": trainer.is_fsdp_enabled, "deepspeed": trainer.is_deepspeed_enabled}
    on = enabled.get(t.distributed, True)
    if world > 1 and not on:
        raise RuntimeError(
            f"train.distributed={t.distributed}: accelerate applies it on GPUs only and this process has "
            "none; use train.distributed=ddp on CPU"
        )


# ------------------------------------------------------------------------------------------ the end
def save_final(trainer, out: Path, base_path: Path, dtype: torch.dtype, info: dict) -> Path:
    """``<out>/model``: the trained weights (LoRA: merged into the base) as a plain HF folder in ``dtype``,
    written by the main process into a temporary folder and renamed. Every process must call it (FSDP and
    ZeRO-3 gather the weights)."""
    target, tmp = out / MODEL_DIR, out / f".{MODEL_DIR}.tmp"
    main = trainer.accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    lora = bool(info.get("lora"))
    trainer.save_model(str(out / ADAPTER_DIR if lora else tmp))
    if main:
        if lora:
            merge_lora(base_path, out / ADAPTER_DIR, tmp, dtype)
        else:
            cast_weights(tmp, dtype)
        finish_folder(tmp, trainer.processing_class, info)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    trainer.accelerator.wait_for_everyone()
    return target


def merge_lora(base_path: Path, adapter: Path, dest: Path, dtype: torch.dtype) -> None:
    """PEFT's ``merge_and_unload``: the base weights plus the adapter's low-rank update, saved as a plain
    model (no PEFT needed to load it, so vLLM serves it like any model)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.save_pretrained(dest, safe_serialization=True)


def cast_weights(folder: Path, dtype: torch.dtype) -> None:
    """Float tensors of every safetensors file of ``folder`` to ``dtype`` (the Trainer saves its float32
    master weights; a bf16-trained model is served in bf16), one file at a time; config.json says so."""
    from safetensors.torch import load_file, save_file

    for f in sorted(folder.glob("*.safetensors")):
        tensors = load_file(f)
        if all(not v.is_floating_point() or v.dtype == dtype for v in tensors.values()):
            continue
        save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}, f,
                  metadata={"format": "pt"})  # fmt: skip
    conf_path = folder / "config.json"
    conf = json.loads(conf_path.read_text(encoding="utf-8"))
    conf["dtype"] = str(dtype).removeprefix("torch.")
    conf["use_cache"] = True
    conf_path.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def finish_folder(folder: Path, tokenizer, info: dict) -> None:
    """Tokenizer with a chat template (ChatML when the base has none), a generation config that stops at
    ``<|im_end|>`` (and the base's end tokens), and ``kun_train.json``."""
    from transformers import GenerationConfig

    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(folder)
    (folder / "training_args.bin").unlink(missing_ok=True)  # the Trainer's pickle: not part of a model
    try:
        gen = GenerationConfig.from_pretrained(folder)
    except OSError:
        gen = GenerationConfig()
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    stops: list[int] = []
    for tid in [tokenizer.convert_tokens_to_ids(END_OF_TURN), *eos, tokenizer.eos_token_id]:
        if tid is not None and tid not in stops:
            stops.append(tid)
    gen.eos_token_id = stops
    gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[-1]
    gen.save_pretrained(folder)
    (folder / DONE_FILE).write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")


def weights_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of named tensors, name by name in sorted order: each name, dtype, shape and the bytes of its
    (local shard of the) values. Equal digests mean equal weights bit for bit; a model's parameters and the
    safetensors file holding them in the same dtype give the same digest."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        local = t.to_local() if hasattr(t, "to_local") else t
        local = local.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}\0{local.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(local.view(torch.uint8).numpy())
    return h.hexdigest()


def param_sum(model: torch.nn.Module) -> float:
    """Sum of this process's (local shard of the) parameters: equal on every DDP process after a step."""
    total = 0.0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += float(local.detach().double().sum())
    return total
