"""``train.distributed`` as TrainingArguments keywords, read from an accelerate config file (the format
``accelerate config`` writes and TRL ships in trl/accelerate_configs/; the bundled ones are
kun_hpc/configs/accelerate/fsdp.yaml and deepspeed-zero3.yaml). Without torch, so that the checks before any
work (:func:`kun_hpc.run.check`) can read it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from kun_hpc.config import ConfigError, find_file

BUNDLED_ACCELERATE = {
    "fsdp": "configs/accelerate/fsdp.yaml",
    "deepspeed": "configs/accelerate/deepspeed-zero3.yaml",
}
# accelerate's distributed_type for each train.distributed
DISTRIBUTED_TYPE = {"fsdp": "FSDP", "deepspeed": "DEEPSPEED"}


def accelerate_file(t: DictConfig) -> Path | None:
    """The accelerate config file of ``train.distributed`` (``train.accelerate_config``, or the bundled)."""
    if t.distributed == "ddp":
        return None
    return find_file(t.accelerate_config or BUNDLED_ACCELERATE[t.distributed])


def accelerate_settings(t: DictConfig) -> dict[str, Any]:
    """TrainingArguments keywords from an accelerate config file (the format ``accelerate config`` writes and
    TRL ships in trl/accelerate_configs): ``fsdp_config`` -> ``fsdp`` + ``fsdp_config`` (transformers drops
    the ``fsdp_`` prefixes; ``fsdp_offload_params`` is its ``cpu_offload``); ``deepspeed_config`` -> a
    DeepSpeed config dict with "auto" values that the Trainer fills (its ``deepspeed_config_file`` when it
    names one). The Slurm job starts one process per GPU itself, so nothing else of the file applies.

    Raises ConfigError: the file's ``distributed_type`` is not the one ``train.distributed`` names."""
    path = accelerate_file(t)
    if path is None:
        return {}
    conf = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    want = DISTRIBUTED_TYPE[t.distributed]
    if conf.get("distributed_type") != want:
        raise ConfigError(
            f"train.accelerate_config {path}: distributed_type is {conf.get('distributed_type')!r}, "
            f"train.distributed={t.distributed} needs {want!r}"
        )
    if want == "FSDP":
        fsdp = dict(conf.get("fsdp_config") or {})
        if fsdp.pop("fsdp_offload_params", False):
            fsdp["cpu_offload"] = True
        return {"fsdp": "full_shard auto_wrap", "fsdp_config": fsdp}
    ds = dict(conf.get("deepspeed_config") or {})
    if ds.get("deepspeed_config_file"):
        return {"deepspeed": str(find_file(ds["deepspeed_config_file"]))}
    zero: dict[str, Any] = {
        "stage": int(ds.get("zero_stage", 3)),
        "overlap_comm": True,
        "contiguous_gradients": True,
        "stage3_gather_16bit_weights_on_model_save": bool(ds.get("zero3_save_16bit_model", True)),
    }
    offloads = (("offload_optimizer_device", "offload_optimizer"), ("offload_param_device", "offload_param"))
    for key, name in offloads:
        if ds.get(key, "none") != "none":
            zero[name] = {"device": ds[key], "pin_memory": True}
    auto = "auto"
    return {
        "deepspeed": {
            "zero_optimization": zero,
            "bf16": {"enabled": auto},
            "fp16": {"enabled": auto},
            "gradient_clipping": auto,
            "train_batch_size": auto,
            "train_micro_batch_size_per_gpu": auto,
            "gradient_accumulation_steps": auto,
        }
    }


def check_accelerate(t: DictConfig) -> None:
    """Before any work: the accelerate config file of ``train.distributed`` reads and agrees with it, and
    DeepSpeed is installed when it is named. Raises ConfigError."""
    try:
        accelerate_settings(t)
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"config key 'train.accelerate_config': {e}") from None
    if t.distributed == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "train.distributed=deepspeed: DeepSpeed is not installed (pip install deepspeed on the GPU nodes)"
        )
