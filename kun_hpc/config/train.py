"""The ``train`` section: SFT of the Label model and the Primary Chat model (kun_hpc/train/)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING, DictConfig

from kun_hpc.config.checks import check
from kun_hpc.config.choices import (
    FSDP_SHARDING,
    SEED_FORMATS,
    TRAIN_DISTRIBUTED,
    TRAIN_DTYPES,
    TRAIN_TASKS,
    Dtype,
    FSDPSharding,
    SeedFormat,
    TrainDistributed,
    TrainTask,
)
from kun_hpc.config.runtime import SlurmConfig

__all__ = [
    "FSDP_SHARDING",
    "SEED_FORMATS",
    "TRAIN_DISTRIBUTED",
    "TRAIN_DTYPES",
    "TRAIN_TASKS",
    "TrainConfig",
    "TrainFSDPConfig",
    "validate_train",
]


@dataclass
class TrainFSDPConfig:
    # full: params + grads + optimizer state sharded (ZeRO-3); grad_op: ZeRO-2
    sharding: FSDPSharding = FSDPSharding.full
    # the module classes wrapped as FSDP units (one per decoder layer); empty: the model's _no_split_modules
    wrap_classes: list[str] = field(default_factory=list)
    reshard_after_forward: bool = True  # full: free gathered params after forward (less memory, more comm)
    cpu_offload: bool = False  # params/grads/optimizer state live on CPU between uses (slow; huge models)
    reduce_dtype: Dtype = Dtype.float32  # gradient reduce-scatter dtype under bf16 params


@dataclass
class TrainConfig:
    """SFT of the Label model (seed pairs inverted) and the Primary Chat model (forward); kun_hpc/train/."""

    task: TrainTask = TrainTask.label  # label | chat: set by `kun-hpc train label|chat`
    base_model: str = MISSING  # a local model folder (the reference: Yi-34B; the published runs: Yi-6B too)
    output: str = "${run.dir}/train/${train.task}"  # data/, checkpoints/step-N, model/ (the final HF folder)
    seed_data: list[str] = field(default_factory=lambda: ["shards/sample/seed"])  # files, folders or globs
    seed_format: SeedFormat = SeedFormat.auto  # auto (by suffix: .json array, .jsonl lines) | json | jsonl
    # the forward (chat) frame, a template with {text}; the Label set uses label.template itself
    chat_template: str = "configs/prompts/chat.txt"
    epochs: int = 4  # Kun: 6 for the Label model, 4 for the Primary Chat model
    lr: float = 1e-5  # peak learning rate (Kun: 1e-5), after linear warmup, then cosine
    min_lr_ratio: float = 0.0  # the cosine ends at lr * this
    warmup_ratio: float = 0.03  # fraction of the optimizer steps spent warming up
    weight_decay: float = 0.0  # AdamW
    adam_beta1: float = 0.9  # AdamW
    adam_beta2: float = 0.95  # AdamW
    adam_eps: float = 1e-8  # AdamW
    max_grad_norm: float = 1.0  # 0: no clipping
    micro_batch_size: int = 4  # sequences per process per forward
    grad_accum: int = 1  # micro-batches per optimizer step; global batch = micro x accum x world size
    max_len: int = 1024  # a longer example (prompt + target tokens) is rejected as too_long
    length_group: bool = True  # batch examples of similar length (less padding); order stays seeded
    length_group_window: int = 64  # ... sorted within windows of this many micro-batches
    save_steps: int = 200  # checkpoint every this many optimizer steps (and at the end)
    keep_checkpoints: int = 2  # the newest this many checkpoints are kept
    dtype: Dtype = Dtype.auto  # auto: bfloat16 on GPU, float32 on CPU
    gradient_checkpointing: bool = True  # recompute activations in backward: less memory, more compute
    # none (one process) | ddp | fsdp; ddp/fsdp with one process behave as none
    distributed: TrainDistributed = TrainDistributed.ddp
    fsdp: TrainFSDPConfig = field(default_factory=TrainFSDPConfig)
    seed: int = 42  # data order, initialisation of anything new, dropout
    max_steps: int | None = None  # caps the schedule (None: epochs x steps per epoch)
    stop_at_step: int | None = None  # checkpoint and stop here, schedule unchanged (what a preemption does)
    log_steps: int = 10  # a loss line every this many optimizer steps
    nproc: int = 1  # --executor local: processes on this machine (gloo on CPU, nccl on GPU)
    nodes: int = 1  # --executor slurm: nodes, with tasks_per_node tasks (one per GPU) each
    tasks_per_node: int = 1  # --executor slurm: processes per node, one per GPU
    # --executor slurm: resources per task (gpus_per_task: 1 for one task per GPU), time, partition, ...
    slurm: SlurmConfig = field(default_factory=lambda: SlurmConfig(time_min=24 * 60, mem_gb=16.0))


def validate_train(t: DictConfig) -> None:
    """The ``train`` section; task, distributed, dtype, seed format and FSDP sharding are checked at load."""
    check(t.fsdp.reduce_dtype != "auto", "train.fsdp.reduce_dtype", f"must be one of {TRAIN_DTYPES[1:]}",
          t.fsdp.reduce_dtype)  # fmt: skip
    check(bool(t.seed_data), "train.seed_data", "must list at least one path", list(t.seed_data))
    check(t.epochs >= 1, "train.epochs", "must be >= 1", t.epochs)
    check(t.lr > 0, "train.lr", "must be > 0", t.lr)
    check(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]", t.min_lr_ratio)
    check(0 <= t.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)", t.warmup_ratio)
    for k in ("micro_batch_size", "grad_accum", "save_steps", "keep_checkpoints", "log_steps", "nproc",
              "nodes", "tasks_per_node", "length_group_window"):  # fmt: skip
        check(t[k] >= 1, f"train.{k}", "must be >= 1", t[k])
    check(t.max_len >= 8, "train.max_len", "must be >= 8", t.max_len)
    for k in ("max_steps", "stop_at_step"):
        check(t[k] is None or t[k] >= 1, f"train.{k}", "must be >= 1 or null", t[k])
    check(t.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0", t.max_grad_norm)
