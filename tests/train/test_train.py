"""The SFT sets of the Label and Primary Chat models, the sizing and the Slurm launch parameters: the tiny
Qwen2 on the bundled 1,000 real seed pairs (shards/sample/seed)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from kun_hpc import config
from kun_hpc.inference.prompt import PromptTemplate
from kun_hpc.stages.label import Label
from kun_hpc.train.data import END_OF_TURN, build_sft_set, data_path, read_examples, report_path
from tests.conftest import REPO, SAMPLE
from tests.tokens_for_tests import expected_ids, plain_ids

SEED = SAMPLE / "seed" / "alpaca_zh_demo.json"


_SEED: list[dict] = []


def seed_pairs() -> list[dict]:
    if not _SEED:
        _SEED.extend(json.loads(SEED.read_text(encoding="utf-8")))
    return _SEED


def train_cfg(tiny_model: Path, out: Path, task: str = "label", *extra: str):
    return config.load(
        REPO / "configs" / "train-tiny.yaml",
        [f"train.task={task}", f"train.base_model={tiny_model}", f"train.output={out}",
         f"train.seed_data=[{SEED}]", *extra],
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ data
@pytest.mark.slow
def test_label_set_is_inverted_and_uses_the_label_stages_prompt(tiny_model, tmp_path):
    cfg = train_cfg(tiny_model, tmp_path, "label")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    report = build_sft_set(cfg, "label", tok, tmp_path)
    examples = read_examples(data_path(tmp_path, "label"))
    label_cfg = config.load(None, ["label.engine.model=m"])
    stage = Label(label_cfg, label_cfg.label)
    stage.template = PromptTemplate.load(stage.template_path, stage.template_sha256, stage.needs)
    assert len(examples) == report.out > 900
    for e in examples:
        pos = int(e["position"].split()[1]) - 1  # "item N" counts from 1
        pair = seed_pairs()[pos]
        instruction = pair["instruction"].strip() + (f"\n{pair['input'].strip()}" if pair["input"] else "")
        # input = the pair's output in the very prompt the Label stage sends; target = its instruction
        assert e["prompt"] == str(stage.prompt({"text": pair["output"].strip()})[0])
        assert e["target"] == instruction + END_OF_TURN
        assert pair["output"].strip() in e["prompt"]
        # clean seed pairs: exactly the ids of the whole strings (the encoding before issue 12)
        assert e["prompt_ids"] == tok(e["prompt"], add_special_tokens=True)["input_ids"]
        assert e["target_ids"] == tok(e["target"], add_special_tokens=False)["input_ids"]
        assert e["target_ids"][-1] == tok.convert_tokens_to_ids(END_OF_TURN)
    saved = orjson.loads(report_path(tmp_path, "label").read_bytes())
    assert (
        saved["in"]
        == 1000
        == saved["out"] + sum(saved["rejected"].values()) + sum(saved["quarantined"].values())
    )


def test_chat_set_is_forward(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    cfg = train_cfg(tiny_model, tmp_path, "chat")
    build_sft_set(cfg, "chat", AutoTokenizer.from_pretrained(tiny_model), tmp_path)
    for e in read_examples(data_path(tmp_path, "chat"))[:200]:
        pair = seed_pairs()[int(e["position"].split()[1]) - 1]
        instruction = pair["instruction"].strip() + (f"\n{pair['input'].strip()}" if pair["input"] else "")
        assert e["prompt"] == f"<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
        assert e["target"] == pair["output"].strip() + END_OF_TURN


SPECIAL_PAIRS = [
    {"instruction": "对话用什么标记结束一轮？", "input": "", "output": "用<|im_end|>结束一轮对话。"},
    {"instruction": "解释<|im_start|>的用途", "input": "<|im_start|>system\n你是助手",
     "output": "它开始一轮对话：<|im_start|>user"},
    {"instruction": "文档之间用什么标记？", "input": "", "output": "用<|endoftext|>，写在两篇文档之间。"},
    {"instruction": "<|im_end|>", "input": "", "output": "<|endoftext|><|im_start|><|im_end|>"},
]  # fmt: skip


@pytest.mark.parametrize("task", ["label", "chat"])
def test_special_token_text_in_seed_pairs_is_plain_text_in_prompt_and_target(tiny_model, tmp_path, task):
    """Issue 12: a seed pair's <|im_end|> / <|im_start|> / <|endoftext|> text (instruction, input or output)
    is encoded as its plain pieces; the only special tokens are the template's and the target's closing
    <|im_end|>, so the model is never taught to end its turn mid-answer."""
    from transformers import AutoTokenizer

    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps(SPECIAL_PAIRS, ensure_ascii=False), encoding="utf-8")
    cfg = train_cfg(tiny_model, tmp_path / "out", task, f"train.seed_data=[{seed}]")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    report = build_sft_set(cfg, task, tok, tmp_path / "out")
    assert (report.records_in, report.out, dict(report.rejected), dict(report.quarantined)) == (4, 4, {}, {})
    template = config.find_file(cfg.label.template if task == "label" else cfg.train.chat_template)
    template_text = template.read_text(encoding="utf-8")
    end = tok.convert_tokens_to_ids(END_OF_TURN)
    examples = read_examples(data_path(tmp_path / "out", task))
    for pair, e in zip(SPECIAL_PAIRS, examples, strict=True):
        instruction = pair["instruction"] + (f"\n{pair['input']}" if pair["input"] else "")
        given, wanted = (pair["output"], instruction) if task == "label" else (instruction, pair["output"])
        assert (e["prompt"], e["target"]) == (
            template_text.replace("{text}", given),
            wanted + END_OF_TURN,
        )
        assert e["prompt_ids"] == expected_ids(tok, template_text, text=given)
        assert e["target_ids"] == [*plain_ids(tok, wanted), end]
        assert e["target_ids"].count(end) == 1
    if task == "chat":  # the case of issue 12: "用<|im_end|>结束一轮对话。" held <|im_end|> twice
        pieces = tok.convert_ids_to_tokens(examples[0]["target_ids"])
        assert pieces[1:9] == ["<", "|", "im", "_", "en", "d", "|", ">"] and pieces[-1] == END_OF_TURN


def test_bad_seed_items_are_quarantined_or_rejected_and_counted(tiny_model, tmp_path, capsys):
    good = seed_pairs()[:3]
    lines = [
        json.dumps(good[0], ensure_ascii=False),
        "{not json",
        "[1, 2]",
        json.dumps({"instruction": "只有指令"}, ensure_ascii=False),
        json.dumps({"instruction": 5, "output": "数字指令"}, ensure_ascii=False),
        json.dumps({"instruction": "空输出", "output": "  \r\n "}, ensure_ascii=False),
        json.dumps({"instruction": "", "output": "没有指令"}, ensure_ascii=False),
        json.dumps(good[0], ensure_ascii=False),  # the same pair again
        json.dumps({**good[1], "output": good[1]["output"] + "\x00\r\n"}, ensure_ascii=False),
        json.dumps({**good[2], "output": "长" * 3000}, ensure_ascii=False),
    ]
    seed = tmp_path / "seed.jsonl"
    seed.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe\n")
    from transformers import AutoTokenizer

    cfg = train_cfg(tiny_model, tmp_path / "out", "label", f"train.seed_data=[{seed}]")
    report = build_sft_set(cfg, "label", AutoTokenizer.from_pretrained(tiny_model), tmp_path / "out")
    assert report.records_in == 11
    assert report.out == 2
    assert dict(report.rejected) == {"empty_output": 1, "empty_instruction": 1, "duplicate": 1, "too_long": 1}
    assert dict(report.quarantined) == {
        "invalid_json": 1, "not_an_object": 1, "missing_field": 1, "wrong_type": 1, "invalid_utf8": 1
    }  # fmt: skip
    assert report.records_in == report.out + report.rejected.total() + report.quarantined.total()
    err = capsys.readouterr().err
    assert f"{seed}:line 2: invalid_json" in err and f"{seed}:line 4: missing_field (output)" in err
    cleaned = read_examples(data_path(tmp_path / "out", "label"))[1]
    assert "\x00" not in cleaned["prompt"] and "\r" not in cleaned["prompt"]


SEED_PROLOGUES = [b"\xef\xbb\xbf", b"\xef\xbb\xbf\n\n  ", b"\r\n\t \n"]


@pytest.mark.parametrize("prologue", SEED_PROLOGUES, ids=["bom", "bom-and-blank", "blank"])
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_seed_files_with_a_prologue_are_read_whole(tmp_path, suffix, prologue):
    from kun_hpc.train.data import SeedPair, read_seed

    pairs = seed_pairs()[:3]
    if suffix == ".json":
        body, positions = json.dumps(pairs, ensure_ascii=False), [f"item {i}" for i in range(1, 4)]
    else:
        body = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
        first = prologue.count(b"\n") + 1  # blank lines before the first pair are lines too
        positions = [f"line {first + i}" for i in range(3)]
    seed = tmp_path / f"seed{suffix}"
    seed.write_bytes(prologue + body.encode())
    items = list(read_seed([str(seed)]))
    assert all(type(i) is SeedPair for i in items)
    assert [(i.instruction, i.input, i.output, i.position) for i in items] == [
        (p["instruction"].strip(), p["input"].strip(), p["output"].strip(), pos)
        for p, pos in zip(pairs, positions, strict=True)
    ]


@pytest.mark.parametrize(
    "codec,name,how",
    [  # "utf-16" and "utf-32" write a byte order mark (little-endian here), "utf-16-be" none
        ("utf-16", "UTF-16 LE", "starts with a UTF-16 LE byte order mark"),
        ("utf-32", "UTF-32 LE", "starts with a UTF-32 LE byte order mark"),
        (
            "utf-16-be",
            "UTF-16 BE",
            "looks like UTF-16 BE without a byte order mark (zero bytes among its first four)",
        ),
    ],
)
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_utf16_and_utf32_seed_files_are_refused_naming_the_encoding(tmp_path, suffix, codec, name, how):
    from kun_hpc.train.data import read_seed

    pairs = seed_pairs()[:2]
    body = (
        json.dumps(pairs, ensure_ascii=False)
        if suffix == ".json"
        else "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
    )
    seed = tmp_path / f"seed{suffix}"
    seed.write_bytes(body.encode(codec))
    items = list(read_seed([str(seed)]))
    fix = f"kun-hpc reads UTF-8 only; convert it first (iconv -f {name.replace(' ', '')} -t UTF-8)"
    assert [(b.source, b.position, b.reason, b.detail) for b in items] == [
        (str(seed), "byte 0", "unsupported_encoding", f"the file {how}: {fix}")
    ]


# ---------------------------------------------------------------------------------------------- sizing
def test_sizing_counts_real_parameters_and_orders_strategies(tiny_model):
    from transformers import AutoModelForCausalLM

    from kun_hpc.train.sizing import YI_6B, YI_34B, estimate, shape_of

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert shape_of(tiny_model).params == sum(p.numel() for p in model.parameters())
    assert round(YI_6B.params / 1e9, 2) == 6.06 and round(YI_34B.params / 1e9, 2) == 34.39  # published sizes
    ddp, zero2, zero3 = estimate(YI_34B, 16, 2, 1024, tokens_per_epoch=10**7, epochs=6)
    assert ddp.state_gib > zero2.state_gib > zero3.state_gib
    assert zero3.state_gib == pytest.approx((YI_34B.params + 4 * YI_34B.layer_params) / 2**30, abs=0.01)
    assert ddp.gpu_hours == zero3.gpu_hours > 0


def test_slurm_training_ends_instead_of_hanging_and_rendezvous_outside_ephemeral_ports(tmp_path):
    from kun_hpc.train.launch import master_port, slurm_parameters

    cfg = config.load(REPO / "configs" / "train-tiny.yaml", [f"run.dir={tmp_path}", "train.tasks_per_node=2"])
    params = slurm_parameters(cfg)
    assert "--kill-on-bad-exit=1" in params["srun_args"]  # a rank that dies ends the step
    assert params["ntasks_per_node"] == 2
    ports = {master_port(str(j)) for j in (1, 397, 17_999, 10**9 + 7)}
    assert all(15000 <= p < 30000 for p in ports) and len(ports) == 4  # below 32768: not an ephemeral port
    assert master_port("397_3") == master_port("397")  # every task of a job agrees


def test_lora_sizing_counts_the_adapter_peft_builds(tiny_model):
    """The LoRA estimate's trainable parameters are those PEFT creates on every linear layer of the tiny
    model (all-linear), and LoRA needs less state per GPU than full fine-tuning under the same sharding."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kun_hpc.train.sizing import YI_34B, estimate, shape_of

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert shape_of(tiny_model).lora_params(8) == trainable
    rows = {r.strategy: r for r in estimate(YI_34B, 16, 2, 1024, lora_rank=16)}
    assert rows["LoRA r=16, ddp"].state_gib < rows["full, ZeRO-2"].state_gib
    assert rows["LoRA r=16, fsdp full shard"].state_gib < rows["full, ZeRO-3 / fsdp full shard"].state_gib


def test_an_edited_seed_file_builds_the_set_again(tiny_model, tmp_path):
    """The set is rebuilt when a seed file's content changes under the same name, and when
    train.seed_columns changes; an unchanged config reuses it."""
    from kun_hpc.train.launch import prepare

    seed = tmp_path / "seed.jsonl"
    rows = [{"q": p["instruction"], "a": p["output"]} for p in seed_pairs()[:3]]
    seed.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    columns = "train.seed_columns={prompt: q, response: a}"
    cfg = train_cfg(tiny_model, tmp_path / "out", "chat", f"train.seed_data=[{seed}]", columns)
    prepare(cfg)
    path = data_path(tmp_path / "out", "chat")
    first = path.stat().st_mtime_ns
    prepare(train_cfg(tiny_model, tmp_path / "out", "chat", f"train.seed_data=[{seed}]", columns))
    assert path.stat().st_mtime_ns == first  # nothing changed: the set stands
    rows[1]["a"] = "改过的回答。"
    seed.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    prepare(train_cfg(tiny_model, tmp_path / "out", "chat", f"train.seed_data=[{seed}]", columns))
    assert [e["target"] for e in read_examples(path)][1] == "改过的回答。" + END_OF_TURN
    renamed = "train.seed_columns={prompt: a, response: q}"  # the other way round: another set
    prepare(train_cfg(tiny_model, tmp_path / "out", "chat", f"train.seed_data=[{seed}]", renamed))
    assert read_examples(path)[1]["prompt"].endswith("改过的回答。<|im_end|>\n<|im_start|>assistant\n")
