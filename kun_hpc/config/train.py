"""The ``train`` section: SFT of the Label model and the Primary Chat model (kun_hpc/train/)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING, DictConfig

from kun_hpc.config.checks import check
from kun_hpc.config.choices import (
    SEED_FORMATS,
    TRAIN_DISTRIBUTED,
    TRAIN_DTYPES,
    TRAIN_TASKS,
    Dtype,
    SeedColumn,
    SeedFormat,
    TrainDistributed,
    TrainTask,
)
from kun_hpc.config.runtime import SlurmConfig

__all__ = [
    "SEED_FORMATS",
    "TRAIN_DISTRIBUTED",
    "TRAIN_DTYPES",
    "TRAIN_TASKS",
    "TrainConfig",
    "TrainLoRAConfig",
    "validate_train",
]


@dataclass
class TrainLoRAConfig:
    """LoRA through PEFT (Hu et al. 2021); the adapter is merged into the base weights at the end."""

    enabled: bool = False  # false: full fine-tuning
    r: int = 16  # the rank of each low-rank update
    alpha: int = 32  # the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the LoRA input
    # the layers that get an adapter: ["all-linear"] (PEFT: every linear layer but the output head) or names
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class TrainConfig:
    """SFT of the Label model (seed pairs inverted) and the Primary Chat model (forward); kun_hpc/train/."""

    task: TrainTask = TrainTask.label  # label | chat: set by `kun-hpc train label|chat`
    base_model: str = MISSING  # a local model folder (the reference: Yi-34B; the published runs: Yi-6B too)
    output: str = "${run.dir}/train/${train.task}"  # data/, checkpoints/checkpoint-N, model/ (the HF folder)
    seed_data: list[str] = field(default_factory=lambda: ["shards/sample/seed"])  # files, folders or globs
    # auto: by suffix (.json an array, .jsonl lines), falling back to what the file holds | json | jsonl
    seed_format: SeedFormat = SeedFormat.auto
    # {}: each item's schema from its keys (Alpaca, ShareGPT conversations, OpenAI messages); else the keys
    # holding LLaMA-Factory's columns: prompt, query, response, history, system | messages (docs/training.md)
    seed_columns: dict[SeedColumn, str] = field(default_factory=dict)
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
    length_group: bool = True  # batch examples of similar length (transformers' LengthGroupedSampler)
    save_steps: int = 200  # checkpoint every this many optimizer steps (and at the end)
    keep_checkpoints: int = 2  # the newest this many checkpoints are kept
    dtype: Dtype = Dtype.auto  # auto: bfloat16 on GPU, float32 on CPU
    gradient_checkpointing: bool = True  # recompute activations in backward: less memory, more compute
    # ddp | fsdp | deepspeed: fsdp and deepspeed as an accelerate config file says (train.accelerate_config)
    distributed: TrainDistributed = TrainDistributed.ddp
    # an accelerate config file (`accelerate config` writes one); null: the bundled one of train.distributed,
    # configs/accelerate/fsdp.yaml (FSDP2 full shard) or deepspeed-zero3.yaml (ZeRO-3)
    accelerate_config: str | None = None
    lora: TrainLoRAConfig = field(default_factory=TrainLoRAConfig)
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
    """The ``train`` section; task, distributed, dtype and seed format are checked at load."""
    check(bool(t.seed_data), "train.seed_data", "must list at least one path", list(t.seed_data))
    check(t.epochs >= 1, "train.epochs", "must be >= 1", t.epochs)
    check(t.lr > 0, "train.lr", "must be > 0", t.lr)
    check(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]", t.min_lr_ratio)
    check(0 <= t.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)", t.warmup_ratio)
    for k in ("micro_batch_size", "grad_accum", "save_steps", "keep_checkpoints", "log_steps", "nproc",
              "nodes", "tasks_per_node"):  # fmt: skip
        check(t[k] >= 1, f"train.{k}", "must be >= 1", t[k])
    check(t.max_len >= 8, "train.max_len", "must be >= 8", t.max_len)
    for k in ("max_steps", "stop_at_step"):
        check(t[k] is None or t[k] >= 1, f"train.{k}", "must be >= 1 or null", t[k])
    check(t.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0", t.max_grad_norm)
    check(t.lora.r >= 1 and t.lora.alpha >= 1, "train.lora", "r and alpha must be >= 1", dict(t.lora))
    check(0 <= t.lora.dropout < 1, "train.lora.dropout", "must be in [0, 1)", t.lora.dropout)
    check(bool(t.lora.target_modules), "train.lora.target_modules", "must name a module or all-linear",
          list(t.lora.target_modules))  # fmt: skip
