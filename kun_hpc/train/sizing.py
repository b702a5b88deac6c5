"""Estimates (not measurements) of what an SFT run needs: memory per GPU for each sharding strategy, tokens
per epoch, and GPU hours. ``kun-hpc plan`` prints them for ``train.base_model``; tools/bench_train.py prints
them for Yi-6B and Yi-34B.

Memory per process, with P parameters and N processes (float32 master weights and AdamW state, bfloat16
compute, as transformers' Trainer trains with ``bf16=True``, kun_hpc/train/sft.py):

* state = 4 (fp32 weights) + 4 (fp32 grads) + 8 (Adam m, v) = 16 bytes per parameter;
* ``ddp`` (and FSDP ``no_shard``): 16 P; ``grad_op`` (ZeRO-2): 16 P / N + 2 P (bf16 weights gathered for the
  whole forward/backward); ``full`` (ZeRO-3): 16 P / N + two gathered decoder layers in bf16 (prefetch);
* activations: with gradient checkpointing each layer keeps its bf16 input (2 s b h bytes) and one layer is
  recomputed at a time (s b h (34 + 5 a s / h) bytes, Korthikanti et al. 2022, an upper bound with fused
  attention); without it every layer keeps that much; plus the logits (bf16, their fp32 copy and its grad:
  10 s b V bytes).

LoRA (PEFT, rank r on every linear layer of a decoder block, ``target_modules: [all-linear]``): L = r x the
sum of (in + out) features of those layers trainable parameters; state = 2 P (the frozen base in bf16; / N
under FSDP full shard) + 16 L (the adapter's fp32 weights, grads and Adam); the activations as above.

Compute: 6 P FLOPs per trained token (8 P with recomputation), at ``mfu`` of ``peak_tflops`` per GPU; LoRA:
4 P (forward, and the backward through the activations only: no weight gradients of the base), 6 P with
recomputation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

GIB = 2**30


@dataclass(frozen=True)
class ModelShape:
    name: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tied: bool = False
    qkv_bias: bool = False  # Qwen2 has q/k/v biases; Llama and Yi have none

    @property
    def layer_params(self) -> int:
        head_dim = self.hidden // self.heads
        attn = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_heads * head_dim
        if self.qkv_bias:
            attn += self.hidden + 2 * self.kv_heads * head_dim
        return attn + 3 * self.hidden * self.intermediate + 2 * self.hidden

    def lora_params(self, r: int) -> int:
        """Trainable parameters of rank-``r`` LoRA on q, k, v, o, gate, up and down of every layer."""
        h, kv = self.hidden, self.kv_heads * (self.hidden // self.heads)
        per_layer = (h + h) + 2 * (h + kv) + (h + h) + 2 * (h + self.intermediate) + (self.intermediate + h)
        return r * per_layer * self.layers

    @property
    def params(self) -> int:
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return embed + self.layers * self.layer_params + self.hidden


# the published configs of the base models Kun used
YI_6B = ModelShape("Yi-6B", 64000, 4096, 32, 32, 4, 11008)
YI_34B = ModelShape("Yi-34B", 64000, 7168, 60, 56, 8, 20480)


def shape_of(model_dir: str | Path) -> ModelShape:
    """The shape of a local model folder, from its config.json (Llama / Qwen2 / Yi field names)."""
    c = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return ModelShape(
        Path(model_dir).name,
        c["vocab_size"],
        c["hidden_size"],
        c["num_hidden_layers"],
        c["num_attention_heads"],
        c.get("num_key_value_heads") or c["num_attention_heads"],
        c["intermediate_size"],
        bool(c.get("tie_word_embeddings", False)),
        bool(c.get("attention_bias", c.get("model_type") == "qwen2")),
    )


@dataclass
class TrainEstimate:
    model: str
    params_b: float  # billions
    strategy: str  # full fine-tuning: ddp | ZeRO-2 | ZeRO-3; LoRA r=N: ddp | fsdp full shard
    processes: int
    state_gib: float  # weights + grads + Adam per process
    activations_gib: float  # per process, one micro-batch of max_len tokens
    total_gib: float
    tokens_per_epoch: int | None
    gpu_hours: float | None  # all epochs, all GPUs

    def to_dict(self) -> dict:
        return asdict(self)


def estimate(
    shape: ModelShape,
    processes: int,
    micro_batch: int,
    seq_len: int,
    gradient_checkpointing: bool = True,
    tokens_per_epoch: int | None = None,
    epochs: int = 1,
    peak_tflops: float = 989.0,
    mfu: float = 0.35,
    lora_rank: int | None = None,
) -> list[TrainEstimate]:
    """One estimate per strategy for ``processes`` GPUs: full fine-tuning under DDP, ZeRO-2 and ZeRO-3 (FSDP
    full shard or DeepSpeed stage 3); with ``lora_rank``, LoRA under DDP and under FSDP full shard too."""
    p, n, s, b, h = shape.params, processes, seq_len, micro_batch, shape.hidden
    per_layer = s * b * h * (34 + 5 * shape.heads * s / h)
    # with recomputation: each layer's input + one layer recomputed at a time; plus the logits
    act = (shape.layers * 2 * s * b * h + per_layer) if gradient_checkpointing else shape.layers * per_layer
    act += 10 * s * b * shape.vocab
    states = {
        "full, ddp": 16 * p,
        "full, ZeRO-2": 16 * p / n + 2 * p,
        "full, ZeRO-3 / fsdp full shard": 16 * p / n + 2 * 2 * shape.layer_params,
    }
    flops_per_token = {name: 8 if gradient_checkpointing else 6 for name in states}
    if lora_rank:
        lora = shape.lora_params(lora_rank)
        states[f"LoRA r={lora_rank}, ddp"] = 2 * p + 16 * lora
        states[f"LoRA r={lora_rank}, fsdp full shard"] = (2 * p + 16 * lora) / n + 2 * 2 * shape.layer_params
        for name in list(states)[3:]:
            flops_per_token[name] = 6 if gradient_checkpointing else 4

    def gpu_hours(name: str) -> float | None:
        if not tokens_per_epoch:
            return None
        flops = flops_per_token[name] * p * tokens_per_epoch * epochs
        return round(flops / (peak_tflops * 1e12 * mfu) / 3600, 2)

    return [
        TrainEstimate(
            shape.name,
            round(p / 1e9, 3),
            name,
            n,
            round(state / GIB, 2),
            round(act / GIB, 2),
            round((state + act) / GIB, 2),
            tokens_per_epoch,
            gpu_hours(name),
        )
        for name, state in states.items()
    ]


def print_estimates(rows: list[TrainEstimate], title: str) -> None:
    from rich.table import Table

    from kun_hpc.core.console import console

    table = Table(title=title)
    for col in ("model", "params", "strategy", "GPUs", "state GiB/GPU", "activ. GiB/GPU", "total GiB/GPU",
                "tokens/epoch", "GPU h (all epochs)"):  # fmt: skip
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.model,
            f"{r.params_b:.2f}B",
            r.strategy,
            str(r.processes),
            f"{r.state_gib:.1f}",
            f"{r.activations_gib:.1f}",
            f"{r.total_gib:.1f}",
            f"{r.tokens_per_epoch:,}" if r.tokens_per_epoch else "?",
            f"{r.gpu_hours:.1f}" if r.gpu_hours is not None else "?",
        )
    console().print(table)


def train_plan(cfg) -> list[TrainEstimate] | None:
    """Estimates for ``train.base_model`` with the configured processes, micro-batch and ``max_len``; tokens
    per epoch from the prepared set's report (``kun-hpc train`` writes it) when there is one."""
    from omegaconf import OmegaConf

    from kun_hpc.config import find_file
    from kun_hpc.train.data import report_path

    t = cfg.train
    if OmegaConf.is_missing(t, "base_model") or not (find_file(t.base_model) / "config.json").is_file():
        return None
    tokens = None
    report = report_path(Path(t.output), t.task)
    if report.is_file():
        r = json.loads(report.read_text(encoding="utf-8"))
        tokens = r["prompt_tokens"] + r["target_tokens"]
    return estimate(
        shape_of(find_file(t.base_model)),
        int(t.nodes) * int(t.tasks_per_node),
        int(t.micro_batch_size),
        int(t.max_len),
        bool(t.gradient_checkpointing),
        tokens,
        int(t.epochs),
        lora_rank=int(t.lora.r),
    )
