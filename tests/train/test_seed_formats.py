"""Seed formats (issue 17): Alpaca, ShareGPT, OpenAI messages and config columns, JSON or JSON Lines, read
into the same pairs and the same SFT examples. The seed text is the bundled real pairs
(shards/sample/seed/alpaca_zh_demo.json, LLaMA-Factory's demo), converted here into each format; the oracle
for the SFT sets is the same pairs given as Alpaca, the format kun-hpc read before."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from kun_hpc import config
from kun_hpc.io.quarantine import Bad
from kun_hpc.train.data import SeedPair, build_sft_set, data_path, read_examples, read_seed
from tests.conftest import REPO, SAMPLE

SEED = SAMPLE / "seed" / "alpaca_zh_demo.json"
BOM = b"\xef\xbb\xbf"
# the first 60 pairs: 10 with an input, none with space around a field (the Alpaca reader strips the
# instruction and the input each, a conversation's user turn as one text)
N = 60


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    return json.loads(SEED.read_text(encoding="utf-8"))[:N]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def user_text(p: dict) -> str:
    """The user turn of an Alpaca pair: instruction, newline, input (LLaMA-Factory's "prompt\\nquery")."""
    return f"{p['instruction']}\n{p['input']}" if p["input"] else p["instruction"]


def sharegpt(*ps: dict, system: str | None = None) -> dict:
    turns = [{"from": "system", "value": system}] if system is not None else []
    for p in ps:
        turns += [{"from": "human", "value": user_text(p)}, {"from": "gpt", "value": p["output"]}]
    return {"conversations": turns}


def openai(*ps: dict, system: str | None = None) -> dict:
    turns = [{"role": "system", "content": system}] if system is not None else []
    for p in ps:
        turns += [{"role": "user", "content": user_text(p)}, {"role": "assistant", "content": p["output"]}]
    return {"messages": turns}


def columns(p: dict) -> dict:
    """A user's own schema, read through train.seed_columns."""
    return {"question": p["instruction"], "context": p["input"], "answer": p["output"], "id": 7}


COLUMNS = {"prompt": "question", "query": "context", "response": "answer"}
CONVERT = {"alpaca": dict, "sharegpt": sharegpt, "openai": openai, "columns": columns}


def write(
    path: Path, items: list, jsonl: bool, raw: dict[int, str] | None = None, prologue: bytes = b""
) -> Path:
    """Items as one JSON array or as JSON Lines; ``raw`` puts a line of text at an index (JSON Lines)."""
    if jsonl:
        lines = [json.dumps(i, ensure_ascii=False) for i in items]
        for at, text in sorted((raw or {}).items()):
            lines.insert(at, text)
        body = "".join(line + "\n" for line in lines)
    else:
        body = json.dumps(items, ensure_ascii=False, indent=1)
    path.write_bytes(prologue + body.encode())
    return path


def json_error(line: bytes) -> str:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError as e:
        return str(e)
    raise AssertionError(line)


def seen(items: list[SeedPair | Bad]) -> list[tuple]:
    return [
        (i.position, i.reason, i.detail)
        if isinstance(i, Bad)
        else (i.position, i.instruction, i.input, i.output, i.system, i.turn)
        for i in items
    ]


def good(p: dict, position: str, *, split_input: bool = True, system: str = "", turn: int = 1) -> tuple:
    """What a pair reads as: an Alpaca item keeps instruction and input apart, a conversation joins them."""
    if split_input:
        return position, p["instruction"], p["input"], p["output"], system, turn
    return position, user_text(p), "", p["output"], system, turn


# ------------------------------------------------------------------------------------------- one format each
@pytest.mark.parametrize("jsonl", [False, True], ids=["json", "jsonl"])
def test_alpaca_items_and_a_bad_item_of_each_kind(tmp_path, pairs, jsonl):
    p = pairs
    items = [
        p[0],
        [p[1]["instruction"], p[1]["output"]],  # not_an_object
        {"instruction": p[2]["instruction"]},  # missing_field
        {**p[3], "input": 3},  # wrong_type
        {**p[4], "history": [[p[5]["instruction"]]]},  # wrong_type: a history turn is no pair
        {**p[6], "system": ["你是助手"]},  # wrong_type
        {**p[7], "conversations": []},  # ambiguous_format
        {**p[8], "instruction": None},  # kept: read as empty (rejected as empty_instruction later)
        p[9],
    ]
    seed = write(tmp_path / f"seed.{'jsonl' if jsonl else 'json'}", items, jsonl, {2: "{broken"})
    lines = [f"line {n}" for n in (1, 2, 4, 5, 6, 7, 8, 9, 10)]
    pos = lines if jsonl else [f"item {n}" for n in range(1, 10)]
    got = list(read_seed([str(seed)]))
    assert {i.source for i in got} == {str(seed)}
    assert seen(got) == [
        good(p[0], pos[0]),
        (pos[1], "not_an_object", "list"),
        *([("line 3", "invalid_json", json_error(b"{broken"))] if jsonl else []),
        (pos[2], "missing_field", "output"),
        (pos[3], "wrong_type", "input is int"),
        (pos[4], "wrong_type", "history[0] is not an [instruction, output] pair of strings"),
        (pos[5], "wrong_type", "system is list"),
        (
            pos[6],
            "ambiguous_format",
            "holds conversations and instruction,output: name the one to read in train.seed_columns "
            "(e.g. {messages: conversations})",
        ),
        (pos[7], "", p[8]["input"], p[8]["output"], "", 1),
        good(p[9], pos[8]),
    ]


@pytest.mark.parametrize("jsonl", [False, True], ids=["json", "jsonl"])
def test_sharegpt_conversations_and_a_bad_item_of_each_kind(tmp_path, pairs, jsonl):
    p = pairs
    human, gpt = {"from": "human", "value": p[3]["instruction"]}, {"from": "gpt", "value": p[3]["output"]}
    items = [
        sharegpt(p[0]),
        sharegpt(p[1], system="你是一个乐于助人的助手。"),
        {
            "conversations": [
                {"from": "user", "value": user_text(p[2])},
                {"from": "assistant", "value": p[2]["output"]},
            ],
            "system": "简洁地回答。",
        },  # LLaMA-Factory's item-level system; user/assistant as role names
        {"conversations": [gpt, human]},  # wrong_role_order
        {"conversations": [human, gpt, human]},  # wrong_role_order: no reply
        {"conversations": [human, {"from": "system", "value": "迟到的系统消息"}]},  # wrong_role_order
        {"conversations": []},  # wrong_role_order: nothing
        {"conversations": [human, {"from": "function_call", "value": "{}"}]},  # unknown_role
        {"conversations": [human, {"from": "gpt"}]},  # missing_field
        {"conversations": [human, {"from": "gpt", "value": [p[3]["output"]]}]},  # wrong_type
        {"conversations": {"human": p[3]["instruction"]}},  # wrong_type
        {"conversations": [human, "gpt"]},  # wrong_type
        sharegpt(p[4]),
    ]
    seed = write(tmp_path / f"seed.{'jsonl' if jsonl else 'json'}", items, jsonl)
    pos = [f"line {n + 1}" if jsonl else f"item {n + 1}" for n in range(len(items))]
    order = "(an optional first system message, then user and assistant turns in turn)"
    assert seen(read_seed([str(seed)])) == [
        good(p[0], pos[0], split_input=False),
        good(p[1], pos[1], split_input=False, system="你是一个乐于助人的助手。"),
        good(p[2], pos[2], split_input=False, system="简洁地回答。"),
        (
            pos[3],
            "wrong_role_order",
            f"conversations[0] has role assistant where user was due {order}",
        ),
        (
            pos[4],
            "wrong_role_order",
            "the last turn, conversations[2], is a user turn with no assistant reply",
        ),
        (
            pos[5],
            "wrong_role_order",
            f"conversations[1] has role system where assistant was due {order}",
        ),
        (pos[6], "wrong_role_order", "conversations holds no user -> assistant exchange"),
        (
            pos[7],
            "unknown_role",
            "conversations[1].from is 'function_call'; the roles read: human/user, gpt/assistant, system",
        ),
        (pos[8], "missing_field", "conversations[1].value"),
        (pos[9], "wrong_type", "conversations[1].value is list"),
        (pos[10], "wrong_type", "conversations is dict"),
        (pos[11], "wrong_type", "conversations[1] is str"),
        good(p[4], pos[12], split_input=False),
    ]


@pytest.mark.parametrize("jsonl", [False, True], ids=["json", "jsonl"])
def test_openai_messages_and_a_bad_item_of_each_kind(tmp_path, pairs, jsonl):
    p = pairs
    user, assistant = (
        {"role": "user", "content": p[3]["instruction"]},
        {"role": "assistant", "content": "好。"},
    )
    items = [
        openai(p[0]),
        openai(p[1], system="You are a helpful assistant."),
        {"messages": [{"role": "developer", "content": "只用中文。"}, *openai(p[2])["messages"]]},
        {
            "messages": [user, {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]
        },  # wrong_type
        {"messages": [user, {"role": "tool", "content": "{}"}]},  # unknown_role
        {"messages": [user, {"content": "好。"}]},  # missing_field
        {"messages": [user, user, assistant]},  # wrong_role_order
        {"messages": [{"role": "system", "content": "系统"}]},  # wrong_role_order: nothing after it
        {
            "messages": [user, {"role": "assistant", "content": [{"type": "text", "text": "好。"}]}]
        },  # wrong_type
        openai(p[4]),
    ]
    seed = write(tmp_path / f"seed.{'jsonl' if jsonl else 'json'}", items, jsonl)
    pos = [f"line {n + 1}" if jsonl else f"item {n + 1}" for n in range(len(items))]
    assert seen(read_seed([str(seed)])) == [
        good(p[0], pos[0], split_input=False),
        good(p[1], pos[1], split_input=False, system="You are a helpful assistant."),
        good(p[2], pos[2], split_input=False, system="只用中文。"),
        (pos[3], "wrong_type", "messages[1].content is NoneType"),
        (
            pos[4],
            "unknown_role",
            "messages[1].role is 'tool'; the roles read: human/user, gpt/assistant, system",
        ),
        (pos[5], "missing_field", "messages[1].role"),
        (
            pos[6],
            "wrong_role_order",
            "messages[1] has role user where assistant was due "
            "(an optional first system message, then user and assistant turns in turn)",
        ),
        (pos[7], "wrong_role_order", "messages holds no user -> assistant exchange"),
        (pos[8], "wrong_type", "messages[1].content is list"),
        good(p[4], pos[9], split_input=False),
    ]


def test_an_item_of_no_format_names_what_each_format_needs(tmp_path, pairs):
    seed = write(tmp_path / "seed.jsonl", [columns(pairs[0]), {}], True)
    need = "instruction,output (Alpaca) or conversations (ShareGPT) or messages (OpenAI)"
    assert seen(read_seed([str(seed)])) == [
        (
            "line 1",
            "missing_field",
            f"{need}; the item has question,context,answer,id: map them with train.seed_columns",
        ),
        ("line 2", "missing_field", f"{need}; the item has no keys: map them with train.seed_columns"),
    ]


# -------------------------------------------------------------------------------------------------- columns
def test_config_columns_read_a_users_own_keys(tmp_path, pairs):
    p = pairs
    cfg = config.load(None, ["train.seed_columns={prompt: question, query: context, response: answer}"])
    assert {str(k): v for k, v in cfg.train.seed_columns.items()} == COLUMNS
    items = [columns(p[0]), columns(p[1]), {"question": p[2]["instruction"]}, {**columns(p[3]), "answer": 1}]
    seed = write(tmp_path / "seed.jsonl", items, True)
    assert seen(read_seed([str(seed)], "auto", cfg.train.seed_columns)) == [
        good(p[0], "line 1"),
        good(p[1], "line 2"),
        ("line 3", "missing_field", "answer"),
        ("line 4", "wrong_type", "answer is int"),
    ]
    # a conversation under another key, with the system in a column of its own
    dialog = [
        {"dialog": sharegpt(p[4])["conversations"], "sys": "简洁。"},
        {"dialog": openai(p[5])["messages"]},
    ]
    seed = write(tmp_path / "dialog.json", dialog, False)
    assert seen(read_seed([str(seed)], "auto", {"messages": "dialog", "system": "sys"})) == [
        good(p[4], "item 1", split_input=False, system="简洁。"),
        good(p[5], "item 2", split_input=False),
    ]


def test_wrong_config_columns_are_refused_naming_the_key(tmp_path, pairs):
    with pytest.raises(
        config.ConfigError, match=r"train\.seed_columns\.instruction.*valid: \[prompt, query, "
    ):
        config.load(None, ["train.seed_columns={instruction: question}"])
    seed = write(tmp_path / "seed.jsonl", [columns(pairs[0])], True)
    with pytest.raises(
        ValueError, match=r"^train.seed_columns: messages \(a conversation\) and prompt \(Alpaca\)"
    ):
        list(read_seed([str(seed)], "auto", {"messages": "dialog", "prompt": "question"}))
    with pytest.raises(ValueError, match=r"^train.seed_columns.response: must name a key .*\(got ''\)"):
        list(read_seed([str(seed)], "auto", {"response": ""}))


# ------------------------------------------------------------------------------------------------ the files
def test_a_json_file_holding_json_lines_is_read_or_refused_with_the_fix(tmp_path, pairs):
    seed = write(tmp_path / "seed.json", pairs[:3], True)  # JSON Lines named .json
    assert seen(read_seed([str(seed)])) == [good(p, f"line {n}") for n, p in enumerate(pairs[:3], 1)]
    (bad,) = read_seed([str(seed)], "json")
    assert (bad.source, bad.position, bad.reason) == (str(seed), "file", "invalid_json")
    assert bad.detail.endswith(
        "; its first line is a JSON object: read it as JSON Lines with train.seed_format=jsonl (or auto)"
    )
    # a broken JSON array stays one invalid_json, without the hint
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(pairs[:3], ensure_ascii=False)[:-2], encoding="utf-8")
    (bad,) = read_seed([str(broken)])
    assert bad.reason == "invalid_json" and "JSON Lines" not in bad.detail


def test_a_jsonl_file_holding_a_json_array_is_read_or_refused_with_the_fix(tmp_path, pairs):
    seed = write(tmp_path / "seed.jsonl", pairs[:3], False)  # a JSON array named .jsonl
    assert seen(read_seed([str(seed)])) == [good(p, f"item {n}") for n, p in enumerate(pairs[:3], 1)]
    got = list(read_seed([str(seed)], "jsonl"))
    assert all(isinstance(b, Bad) for b in got) and got[0].position == "line 1"
    assert got[0].detail.endswith(
        "; the file starts with '[': read it as one JSON array with train.seed_format=json (or auto)"
    )
    assert "train.seed_format" not in got[1].detail  # the hint once, on the first line
    # JSON Lines whose first line is an array stay JSON Lines
    seed.write_text(f"[1]\n{json.dumps(pairs[0], ensure_ascii=False)}\n", encoding="utf-8")
    assert seen(read_seed([str(seed)])) == [("line 1", "not_an_object", "list"), good(pairs[0], "line 2")]


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "openai"])
@pytest.mark.parametrize("jsonl", [False, True], ids=["json", "jsonl"])
def test_a_byte_order_mark_is_skipped_in_every_format(tmp_path, pairs, fmt, jsonl):
    seed = write(
        tmp_path / f"seed.{'jsonl' if jsonl else 'json'}",
        [CONVERT[fmt](p) for p in pairs[:3]],
        jsonl,
        prologue=BOM,
    )
    got = list(read_seed([str(seed)]))
    pos = [f"line {n + 1}" if jsonl else f"item {n + 1}" for n in range(3)]
    assert seen(got) == [
        good(p, at, split_input=fmt == "alpaca") for p, at in zip(pairs[:3], pos, strict=True)
    ]


# ------------------------------------------------------------------------------------------- the SFT sets
def sft_cfg(tiny_model: Path, out: Path, task: str, seed: Path, *extra: str):
    return config.load(
        REPO / "configs" / "train-tiny.yaml",
        [
            f"train.task={task}",
            f"train.base_model={tiny_model}",
            f"train.output={out}",
            f"train.seed_data=[{seed}]",
            *extra,
        ],
    )


def sft_set(tiny_model, tokenizer, out: Path, task: str, seed: Path, *extra: str):
    report = build_sft_set(sft_cfg(tiny_model, out, task, seed, *extra), task, tokenizer, out)
    rows = read_examples(data_path(out, task))
    return report, [(r["prompt"], r["target"], r["prompt_ids"], r["target_ids"]) for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["label", "chat"])
def test_each_format_makes_the_examples_the_same_pairs_make_as_alpaca(
    tiny_model, tokenizer, tmp_path, pairs, task
):
    oracle, want = sft_set(
        tiny_model, tokenizer, tmp_path / "alpaca", task, write(tmp_path / "a.json", pairs, False)
    )
    assert oracle.out == len(want) > 40 and oracle.records_in == N
    for fmt, extra in (
        ("sharegpt", ()),
        ("openai", ()),
        ("columns", ("train.seed_columns=" + json.dumps(COLUMNS),)),
    ):
        for jsonl in (False, True):
            seed = write(
                tmp_path / f"{fmt}.{'jsonl' if jsonl else 'json'}", [CONVERT[fmt](p) for p in pairs], jsonl
            )
            report, got = sft_set(tiny_model, tokenizer, tmp_path / f"{fmt}-{jsonl}", task, seed, *extra)
            assert got == want, (fmt, jsonl)
            assert (report.records_in, dict(report.rejected), dict(report.quarantined)) == (
                N,
                dict(oracle.rejected),
                {},
            ), (fmt, jsonl)


def test_multi_turn_items_give_their_first_exchange_and_count_the_rest(
    tiny_model, tokenizer, tmp_path, pairs
):
    p = pairs
    items = [
        sharegpt(p[0], p[1], system="你是一个乐于助人的助手。"),  # p[1] follows p[0]
        openai(p[2], p[3], p[4]),
        {**p[6], "history": [[p[5]["instruction"], p[5]["output"]]]},  # Alpaca with history: p[5] first
        sharegpt(p[7]),
        openai(p[8], system="简洁地回答。"),
    ]
    seed = write(tmp_path / "multi.jsonl", items, True)
    report, got = sft_set(tiny_model, tokenizer, tmp_path / "multi", "chat", seed)
    # the oracle: the first exchanges as single Alpaca pairs (p[5], no input: its user turn = its instruction)
    first = [
        {**p[0], "instruction": user_text(p[0]), "input": ""},
        {**p[2], "instruction": user_text(p[2]), "input": ""},
        p[5],
        p[7],
        {**p[8], "instruction": user_text(p[8]), "input": ""},
    ]
    _, want = sft_set(
        tiny_model, tokenizer, tmp_path / "oracle", "chat", write(tmp_path / "o.json", first, False)
    )
    assert got == want and len(want) == 5
    assert (report.records_in, report.out, dict(report.rejected), dict(report.quarantined)) == (
        9,
        5,
        {"later_turn": 4},
        {},
    )
    assert report.records_in == report.out + report.rejected.total() + report.quarantined.total()
    assert report.system_dropped == 2
    assert (
        orjson.loads((tmp_path / "multi" / "data" / "chat.report.json").read_bytes())["system_dropped"] == 2
    )
    rejected = [
        orjson.loads(line)
        for line in (tmp_path / "multi" / "data" / "chat.rejected.jsonl").read_bytes().splitlines()
    ]
    assert [(r["position"], r["reason"], r["instruction"], r["output"]) for r in rejected] == [
        ("line 1 turn 2", "later_turn", user_text(p[1]), p[1]["output"]),
        ("line 2 turn 2", "later_turn", user_text(p[3]), p[3]["output"]),
        ("line 2 turn 3", "later_turn", user_text(p[4]), p[4]["output"]),
        ("line 3 turn 2", "later_turn", user_text(p[6]), p[6]["output"]),
    ]
    assert {r["detail"] for r in rejected} == {
        "turn 2: follows earlier turns of its conversation",
        "turn 3: follows earlier turns of its conversation",
    }
