"""`kun-hpc export` (issue 17, item 3) on a real run whose dataset holds planted near-copies the dedup keeps:
every format loaded by its consumer's own code (datasets, TRL's SFTTrainer, LLaMA-Factory's dataset_info.json
reading, reproduced from its source), the rows checked against the dataset's Parquet read directly, the
split property pair by pair, and the readiness table against token lengths counted one pair at a time."""

from __future__ import annotations

import json
import os
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from kun_hpc import cli, config
from kun_hpc.io.quarantine import read_quarantine
from kun_hpc.io.shards import ZstdJsonlWriter, iter_shard_lines
from kun_hpc.merge import export as ex
from kun_hpc.merge.assemble import AssembleTask, assemble_unit
from kun_hpc.merge.dedup import settings_of
from kun_hpc.merge.dedup.storage import ENTRY
from kun_hpc.merge.minhash import MinHasher
from kun_hpc.merge.normalize import make_normalizer, shingle_text
from kun_hpc.merge.split import Grouper, assign
from kun_hpc.stages.base import Stage
from tests.conftest import SAMPLE

SEP = "\n###\n"
# near-copies the merge's dedup (by instruction) keeps, each pair planted in the dataset:
TOKENS_DIFFER = (
    "计算3+5的结果，并写出详细的计算过程。",
    "计算3-5的结果，并写出详细的计算过程。",
)  # Jaccard 0.7, but 3+5 is not 3-5: the dedup's check of numbers and symbols keeps both
BELOW_THRESHOLD = (  # n-gram Jaccard 0.42 < dedup.threshold 0.5, yet 3 of their 40 band buckets are shared
    "请简要介绍长江流域的地理特征、主要支流以及沿岸的重要城市和经济发展情况。",
    "请简要介绍黄河流域的地形特征、主要支流以及沿岸的重要城市和文化发展历史。",
)
SHARED_OUTPUT = "光合作用是植物利用光能，把二氧化碳和水转化为有机物并释放氧气的过程。"
SAME_OUTPUT = (  # unrelated instructions, one output (twice as it is, once with ASCII punctuation)
    ("解释光合作用。", SHARED_OUTPUT),
    ("植物怎样把阳光变成养分？", SHARED_OUTPUT),
    ("叶绿体里发生了什么反应", SHARED_OUTPUT.replace("，", ",").replace("。", ".")),
)
BLANK_OUTPUT = "这条指令没有回答"  # its output is blank: quarantined by the export


class Pairs(Stage):
    """The pair a test record spells out: ``instruction###output`` (no model)."""

    name = "pairs"
    makes_pairs = True

    def process(self, batch):
        out = []
        for r in batch:
            instruction, answer = r["text"].split(SEP, 1)
            out.append({**r, "instruction": instruction, "answer": answer, "score": 0.5})
        return out


def texts() -> list[str]:
    """40 pairs cut from real SkyPile paragraphs (instruction: the first 30 characters, output: the next 200),
    then the planted ones."""
    lines = (SAMPLE / "skypile" / "2020-40_zh_head_0000.jsonl").read_bytes().splitlines()
    paragraphs = [orjson.loads(line)["text"] for line in lines[:40]]
    out = [p[:30] + SEP + p[30:230] for p in paragraphs]
    out += [ins + SEP + f"{ins[:6]}的答案：……" for ins in (*TOKENS_DIFFER, *BELOW_THRESHOLD)]
    out += [ins + SEP + output for ins, output in SAME_OUTPUT]
    return [*out, BLANK_OUTPUT + SEP + "  "]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    data = root / "alpha.jsonl"
    data.write_bytes(b"".join(orjson.dumps({"text": t}, option=orjson.OPT_APPEND_NEWLINE) for t in texts()))
    run = root / "run"
    corpora = f"corpora=[{{name: alpha, format: jsonl, paths: [{data}]}}]"
    args = [
        f"run.dir={run}",
        "executor.kind=inline",
        corpora,
        "pipeline.stages=[tests.merge.test_export:Pairs]",
    ]
    assert cli.main(["run", *args, "merge.quality.enabled=false"]) == 0
    return run


def dataset_pairs(run: Path) -> dict[str, tuple[str, str]]:
    """The oracle: id -> (instruction, output) of the merged dataset, from its Parquet files read here."""
    files = sorted((run / "merge" / "dataset" / "parquet").glob("*.parquet"))
    rows = [r for f in files for r in pq.read_table(f, columns=["id", "instruction", "output"]).to_pylist()]
    return {r["id"]: (r["instruction"], r["output"]) for r in rows}


def usable(pairs: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    return {k: v for k, v in pairs.items() if v[1].strip()}


def load_json(files: dict[str, Path]):
    import datasets

    return datasets.load_dataset("json", data_files={s: str(p) for s, p in files.items()})


def pair_of(fmt: str, row: dict) -> tuple[str, str]:
    """(instruction, output) back from a row of ``fmt``, by that format's documented shape."""
    if fmt == "alpaca":
        assert row["input"] == ""
        return row["instruction"], row["output"]
    if fmt == "sharegpt":
        (h, g) = row["conversations"]
        assert (h["from"], g["from"]) == ("human", "gpt")
        return h["value"], g["value"]
    if fmt == "messages":
        (u, a) = row["messages"]
        assert (u["role"], a["role"]) == ("user", "assistant")
        return u["content"], a["content"]
    ((u,), (a,)) = row["prompt"], row["completion"]
    assert (u["role"], a["role"]) == ("user", "assistant")
    return u["content"], a["content"]


# ------------------------------------------------------------------------------------ round trips
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ex.FORMATS)
def test_each_format_loads_with_datasets_and_holds_the_datasets_pairs(run, tmp_path, fmt):
    result = ex.export(run, fmt, tmp_path / fmt, val_fraction=0.3, seed=1)
    files = {s: tmp_path / fmt / ex.FILES[s] for s in ex.SPLITS}
    loaded = load_json(files)
    got: dict[str, dict[str, tuple[str, str]]] = {}
    for split in ex.SPLITS:
        assert loaded[split].column_names == ex.FIELDS[fmt]
        got[split] = {row["id"]: pair_of(fmt, row) for row in loaded[split]}
        assert len(got[split]) == loaded[split].num_rows == result.rows[split] > 0
    assert not set(got["train"]) & set(got["validation"])
    assert got["train"] | got["validation"] == usable(dataset_pairs(run))
    m = orjson.loads((tmp_path / fmt / ex.MANIFEST).read_bytes())
    assert m["fields"] == ex.FIELDS[fmt] and m["split"]["seed"] == 1
    assert {s: f["rows"] for s, f in m["files"].items()} == result.rows


@pytest.mark.slow
def test_default_folder_reruns_are_byte_identical_and_fraction_zero_drops_validation(run):
    a = ex.export(run, "alpaca", seed=3)
    assert a.out == run / "export" / "alpaca"
    first = {n: (a.out / n).read_bytes() for n in a.files}
    b = ex.export(run, "alpaca", seed=3)
    assert {n: (b.out / n).read_bytes() for n in b.files} == first
    none = ex.export(run, "alpaca", val_fraction=0)
    assert not (none.out / ex.FILES["validation"]).exists()
    assert list(orjson.loads((none.out / ex.DATASET_INFO).read_bytes())) == ["kun_train"]
    assert none.rows == {"train": len(usable(dataset_pairs(run))), "validation": 0}


@pytest.mark.slow
def test_a_blank_output_is_quarantined_and_counted(run, tmp_path):
    result = ex.export(run, "messages", tmp_path)
    (bad,) = read_quarantine(tmp_path / ex.QUARANTINE)
    assert bad["reason"] == "missing_output" and BLANK_OUTPUT in bad["preview"]
    assert bad["source"].startswith("jsonl/part-") and bad["position"].startswith("line ")
    line = int(bad["position"].split()[1])
    lines = list(iter_shard_lines(run / "merge" / "dataset" / bad["source"]))
    assert orjson.loads(lines[line - 1])["instruction"] == BLANK_OUTPUT
    acc = result.manifest["accounting"]
    assert acc == {
        "in": len(dataset_pairs(run)),
        "out": sum(result.rows.values()),
        "quarantined": {"missing_output": 1},
    }
    assert acc["in"] == acc["out"] + 1


# ------------------------------------------------------------------------------------ TRL
@pytest.mark.slow
def test_trls_sft_trainer_prepares_the_conversational_exports(run, tmp_path, tiny_model):
    """TRL's own dataset handling (SFTTrainer._prepare_dataset): the messages and prompt-completion rows are
    tokenized under the model's chat template, the prompt of a prompt-completion row carries no loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from trl.data_utils import is_conversational, maybe_apply_chat_template, maybe_convert_to_chatml

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    pairs = usable(dataset_pairs(run))
    args = SFTConfig(output_dir=str(tmp_path / "sft"), report_to=[], use_cpu=True, max_length=None)
    for fmt in ("messages", "prompt-completion"):
        ex.export(run, fmt, tmp_path / fmt, val_fraction=0)
        ds = load_json({"train": tmp_path / fmt / ex.FILES["train"]})["train"]
        assert all(is_conversational(row) for row in ds)
        prepared = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok).train_dataset
        assert prepared.num_rows == len(pairs)
        for row in prepared:
            ins, out = pairs[row["id"]]
            conv = [{"role": "user", "content": ins}, {"role": "assistant", "content": out}]
            assert row["input_ids"] == tok.apply_chat_template(conv, tokenize=True)["input_ids"]
            prompt = tok.apply_chat_template(conv[:1], tokenize=True, add_generation_prompt=True)["input_ids"]
            if fmt == "prompt-completion":  # the loss covers the completion only
                assert row["labels"][: len(prompt)] == [-100] * len(prompt)
                assert row["labels"][len(prompt) :] == row["input_ids"][len(prompt) :]
                text = maybe_apply_chat_template({k: row[k] for k in ("prompt", "completion")}, tok)
                assert text["prompt"] + text["completion"] == tok.apply_chat_template(conv, tokenize=False)
            else:  # TRL's language modelling on messages: every token
                assert row["labels"] == row["input_ids"]
    # ShareGPT is LLaMA-Factory's: TRL renames from/value to role/content but keeps the roles human/gpt,
    # which chat templates do not know (docs/export.md says to give TRL messages or prompt-completion)
    ex.export(run, "sharegpt", tmp_path / "sharegpt", val_fraction=0)
    row = json.loads((tmp_path / "sharegpt" / ex.FILES["train"]).read_text().splitlines()[0])
    assert [m["role"] for m in maybe_convert_to_chatml(row)["messages"]] == ["human", "gpt"]


# ------------------------------------------------------------------------------------ LLaMA-Factory
# LLaMA-Factory's reading of dataset_info.json, reproduced from its source (llamafactory is not installed
# here): hiyouga/LLaMA-Factory at ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30, src/llamafactory/data/parser.py
# (DatasetAttr, get_dataset_list), loader.py (_load_single_dataset: the "file" branch), extras/constants.py
# (FILEEXT2TYPE), converter.py (AlpacaDatasetConverter, SharegptDatasetConverter); data/README.md documents
# the entries.
FILEEXT2TYPE = {
    "arrow": "arrow",
    "csv": "csv",
    "json": "json",
    "jsonl": "json",
    "parquet": "parquet",
    "txt": "text",
}


@dataclass
class DatasetAttr:
    load_from: Literal["hf_hub", "ms_hub", "om_hub", "script", "file"]
    dataset_name: str
    formatting: Literal["alpaca", "sharegpt", "openai"] = "alpaca"
    ranking: bool = False
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    num_samples: int | None = None
    system: str | None = None
    tools: str | None = None
    images: str | None = None
    videos: str | None = None
    audios: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    kto_tag: str | None = None
    prompt: str | None = "instruction"
    query: str | None = "input"
    response: str | None = "output"
    history: str | None = None
    messages: str | None = "conversations"
    role_tag: str | None = "from"
    content_tag: str | None = "value"
    user_tag: str | None = "human"
    assistant_tag: str | None = "gpt"
    observation_tag: str | None = "observation"
    function_tag: str | None = "function_call"
    system_tag: str | None = "system"

    def set_attr(self, key: str, obj: dict[str, Any], default: Any | None = None) -> None:
        setattr(self, key, obj.get(key, default))

    def join(self, attr: dict[str, Any]) -> None:
        self.set_attr("formatting", attr, default="alpaca")
        self.set_attr("ranking", attr, default=False)
        self.set_attr("subset", attr)
        self.set_attr("split", attr, default="train")
        self.set_attr("folder", attr)
        self.set_attr("num_samples", attr)
        if "columns" in attr:
            column_names = ["prompt", "query", "response", "history", "messages", "system", "tools"]
            column_names += ["images", "videos", "audios", "chosen", "rejected", "kto_tag"]
            for column_name in column_names:
                self.set_attr(column_name, attr["columns"])
        if "tags" in attr:
            tag_names = ["role_tag", "content_tag"]
            tag_names += ["user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"]
            for tag in tag_names:
                self.set_attr(tag, attr["tags"])


def get_dataset_list(dataset_names: list[str], dataset_dir: str) -> list[DatasetAttr]:
    with open(os.path.join(dataset_dir, "dataset_info.json")) as f:
        dataset_info = json.load(f)
    out = []
    for name in dataset_names:
        if name not in dataset_info:
            raise ValueError(f"Undefined dataset {name} in dataset_info.json.")
        assert not {"hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name"} & set(
            dataset_info[name]
        )
        attr = DatasetAttr("file", dataset_name=dataset_info[name]["file_name"])
        attr.join(dataset_info[name])
        out.append(attr)
    return out


def load_single_dataset(attr: DatasetAttr, dataset_dir: str):
    import datasets

    local_path = os.path.join(dataset_dir, attr.dataset_name)
    if not os.path.isfile(local_path):
        raise ValueError(f"File {local_path} not found.")
    data_path = FILEEXT2TYPE.get(os.path.splitext(local_path)[-1][1:])
    if data_path is None:
        raise ValueError("Allowed file types: {}.".format(",".join(FILEEXT2TYPE.keys())))
    return datasets.load_dataset(path=data_path, data_files=[local_path], split=attr.split)


def convert(attr: DatasetAttr, example: dict) -> tuple[list[dict], list[dict]]:
    """(_prompt, _response) as LLaMA-Factory's converters make them; its "abnormal example" (skipped with
    a warning there) fails here."""
    if attr.formatting == "alpaca":
        query = [example[c] for c in (attr.prompt, attr.query) if c and example[c]]
        return [{"role": "user", "content": "\n".join(query)}], [
            {"role": "assistant", "content": example[attr.response]}
        ]
    assert attr.formatting == "sharegpt"
    tag_mapping = {
        attr.user_tag: "user",
        attr.assistant_tag: "assistant",
        attr.observation_tag: "observation",
        attr.function_tag: "function",
        attr.system_tag: "system",
    }
    accept_tags = ((attr.user_tag, attr.observation_tag), (attr.assistant_tag, attr.function_tag))
    messages = example[attr.messages]
    if attr.system_tag and messages and messages[0][attr.role_tag] == attr.system_tag:
        messages = messages[1:]
    aligned = []
    for turn_idx, message in enumerate(messages):
        assert message[attr.role_tag] in accept_tags[turn_idx % 2], f"Invalid role tag in {messages}."
        aligned.append({"role": tag_mapping[message[attr.role_tag]], "content": message[attr.content_tag]})
    assert len(aligned) % 2 == 0, f"Invalid message count in {messages}."
    return aligned[:-1], aligned[-1:]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "messages"])
def test_llama_factory_reads_the_dataset_info_entries(run, tmp_path, fmt):
    ex.export(run, fmt, tmp_path, val_fraction=0.3)
    pairs = usable(dataset_pairs(run))
    seen: dict[str, tuple[str, str]] = {}
    for attr in get_dataset_list(list(ex.DATASET_NAMES.values()), str(tmp_path)):
        assert attr.load_from == "file" and attr.formatting == ("alpaca" if fmt == "alpaca" else "sharegpt")
        for example in load_single_dataset(attr, str(tmp_path)):
            prompt, response = convert(attr, example)
            assert [m["role"] for m in prompt + response] == ["user", "assistant"]
            seen[example["id"]] = (prompt[0]["content"], response[0]["content"])
    assert seen == pairs


def test_prompt_completion_gets_no_dataset_info():
    assert ex.dataset_info("prompt-completion", {"train": "train.jsonl"}) is None
    info = ex.dataset_info("messages", {"train": "train.jsonl", "validation": "validation.jsonl"})
    assert info["kun_validation"]["file_name"] == "validation.jsonl"
    assert info["kun_train"]["tags"]["role_tag"] == "role"


# ------------------------------------------------------------------------------------ the split
def band_keys(keys: list[str], st: dict) -> tuple[list[set[int]], np.ndarray]:
    """Each key's LSH band keys, banded here the way the dedup's docstring says (the short banding under
    ``long_shingles`` distinct shingles, the long one from ``threshold * long_shingles``), and the keys'
    MinHash signatures."""
    hasher = MinHasher(st["ngram"], st["permutations"], st["seed"])
    out, sigs = [], []
    for k in keys:
        sig, distinct = hasher.signatures([shingle_text(k)])
        found: set[int] = set()
        if distinct[0] < st["long_shingles"]:
            found |= set(hasher.band_keys(sig, st["bands"], 0)[0].tolist())
        if distinct[0] >= st["threshold"] * st["long_shingles"]:
            found |= set(hasher.band_keys(sig, st["long_bands"], 1)[0].tolist())
        out.append(found)
        sigs.append(sig[0])
    return out, np.array(sigs)


SIMILARITY = 0.4  # under dedup.threshold (0.5): the planted rewording (0.42) counts as a near-copy


@pytest.mark.slow
def test_near_copies_the_dedup_kept_never_straddle_the_split(run, tmp_path):
    pairs = usable(dataset_pairs(run))
    st = config.load_run(run).dedup
    normalize = make_normalizer(st.normalize)
    ids = sorted(pairs)
    ins = [normalize(pairs[i][0]) for i in ids]
    outs = [normalize(pairs[i][1]) for i in ids]
    bands, sigs = band_keys(ins, st)
    n = {pairs[i][0]: k for k, i in enumerate(ids)}  # a row's index by its instruction

    def similarity(x: int, y: int) -> float:  # the share of equal MinHash values: estimated Jaccard
        return float((sigs[x] == sigs[y]).mean())

    # the premise: the dedup kept the planted near-copies, and the rule's links join them
    for a, b in (TOKENS_DIFFER, BELOW_THRESHOLD):
        assert bands[n[a]] & bands[n[b]] and similarity(n[a], n[b]) >= SIMILARITY, (a, b)
    same_output = [n[i] for i, _ in SAME_OUTPUT]
    assert len({outs[k] for k in same_output}) == 1
    planted = [[n[a], n[b]] for a, b in (TOKENS_DIFFER, BELOW_THRESHOLD)] + [same_output]
    separated = 0
    for seed in range(4):
        out = tmp_path / str(seed)
        result = ex.export(run, "alpaca", out, val_fraction=0.4, seed=seed, similarity=SIMILARITY)
        side = {}
        for s in ex.SPLITS:
            for line in (out / ex.FILES[s]).read_text().splitlines():
                side[json.loads(line)["id"]] = s
        assert set(side) == set(ids) and all(result.rows.values())
        for x in range(len(ids)):
            for y in range(x + 1, len(ids)):
                if side[ids[x]] != side[ids[y]]:
                    assert ins[x] != ins[y] and outs[x] != outs[y], (ids[x], ids[y])
                    assert not bands[x] & bands[y] or similarity(x, y) < SIMILARITY, (ids[x], ids[y])
        assert all(len({side[ids[k]] for k in group}) == 1 for group in planted)
        separated += len({side[ids[group[0]]] for group in planted}) > 1
    assert separated  # the planted groups did land on different sides: the checks above were not vacuous


def test_the_full_bucket_check_catches_what_the_star_and_chain_missed():
    """Four rows in one bucket: the star and the chain pair a-b, a-c, a-d, b-c, c-d, never b-d; b and d are
    near-copies (equal signatures), so b, drawn for validation beside d in train, moves to train with its
    group (b and e)."""
    g = Grouper(settings_of(config.load(None, []).dedup), similarity=0.5)
    sig = np.zeros((5, 120), np.uint32)
    sig[0], sig[2] = 1, 2  # a and c alike to nothing
    sig[1, :] = sig[3, :] = np.arange(120)  # b == d
    sig[4] = 3
    g._sig = sig
    g._buckets = np.array([(7, 0), (7, 1), (7, 2), (7, 3)], dtype=ENTRY)
    labels = np.array([0, 1, 2, 3, 1])  # e (row 4) is in b's group
    validation, moved = g.separate(np.array([False, True, False, False, True]), labels)
    assert not validation.any() and moved == {"groups": 1, "rows": 2}
    kept, none = g.separate(np.array([False, False, True, False, False]), labels)  # c has no near-copy
    assert kept.tolist() == [False, False, True, False, False] and not none


def test_grouping_links_bands_equal_instructions_and_equal_outputs():
    g = Grouper(settings_of(config.load(None, []).dedup))
    g.add(["请写一首关于春天的诗", "请写一首关于春天的诗！", "今天天气怎么样"], ["a", "b", "c"])
    g.add(
        ["完全不同的问题", TOKENS_DIFFER[0], TOKENS_DIFFER[1], "。"], ["同一个回答", "同一个回答。", "x", "y"]
    )
    labels, links = g.groups()
    # 0 ~ 1: one normalized instruction; 3 ~ 4: one normalized output; 4 ~ 5: band buckets; "。" has no key
    assert labels.tolist() == [0, 0, 2, 3, 3, 3, 6]
    assert dict(links) == {"instruction_band": 2, "instruction_exact": 1, "output_exact": 1}


def test_assign_draws_whole_groups_seeded():
    ids = [f"c/{i:05d}" for i in range(3000)]
    labels = np.arange(3000) // 3 * 3  # groups of three rows
    val = assign(ids, labels, 0.1, seed=7)
    assert (assign(ids, labels, 0.1, seed=7) == val).all() and not (
        assign(ids, labels, 0.1, seed=8) == val
    ).all()
    for g in range(0, 3000, 3):
        assert len(set(val[g : g + 3].tolist())) == 1
    assert 0.08 < val.mean() < 0.12
    assert not assign(ids, labels, 0, seed=7).any()
    assert assign(ids[:6], labels[:6], 0.001, seed=0).sum() == 3  # at least one group when two exist
    assert not assign(ids[:6], labels[:6], 0.999, seed=0).all()  # never every group
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        assign(ids, labels, 1.0, seed=0)


# ------------------------------------------------------------------------------------ readiness
@pytest.mark.slow
def test_the_readiness_table_counts_what_the_chat_template_makes(run, tmp_path, tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    pairs = usable(dataset_pairs(run))
    lengths = {}
    for rid, (ins, out) in pairs.items():
        conv = [{"role": "user", "content": ins}, {"role": "assistant", "content": out}]
        lengths[rid] = len(tok.apply_chat_template(conv, tokenize=True)["input_ids"])
    cutoff = int(statistics.median(lengths.values()))
    result = ex.export(
        run, "messages", tmp_path / "a", val_fraction=0.3, tokenizer=tiny_model, cutoff_len=cutoff
    )
    side = {}
    for s in ex.SPLITS:
        for line in (tmp_path / "a" / ex.FILES[s]).read_text().splitlines():
            side[json.loads(line)["id"]] = s
    r = result.readiness
    assert r["cutoff_len"] == cutoff and r["chat_template"] == "the tokenizer's"
    for s in ("all", *ex.SPLITS):
        got = [n for rid, n in lengths.items() if s == "all" or side[rid] == s]
        st = r["splits"][s]
        assert (st["pairs"], st["min"], st["max"]) == (len(got), min(got), max(got))
        assert st["median"] == statistics.median(got)
        p95 = statistics.quantiles(got, n=20, method="inclusive")[-1]  # numpy's linear percentile
        assert st["p95"] == pytest.approx(p95, abs=0.005)  # to 2 decimals
        assert st["over_cutoff"] == sum(n > cutoff for n in got)
    assert 0 < r["splits"]["all"]["over_cutoff"] < len(pairs)
    assert orjson.loads((tmp_path / "a" / ex.MANIFEST).read_bytes())["readiness"] == r

    # a tokenizer without a chat template: ChatML, which is the tiny model's own template
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model, bare)
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    again = ex.export(run, "messages", tmp_path / "b", val_fraction=0.3, tokenizer=bare, cutoff_len=cutoff)
    assert again.readiness["chat_template"] == "ChatML (the tokenizer has none)"
    assert again.readiness["splits"] == r["splits"]


# ------------------------------------------------------------------------------------ the command
@pytest.mark.slow
def test_the_command_prints_the_table_and_refuses_what_it_cannot_export(run, tmp_path, tiny_model, capsys):
    out = tmp_path / "cmd"
    argv = ["export", str(run), "--format", "sharegpt", "--out", str(out), "--tokenizer", str(tiny_model)]
    assert cli.main([*argv, "--cutoff-len", "64", "--val-fraction", "0.25", "--seed", "2"]) == 0
    printed = capsys.readouterr()
    assert "> cutoff_len 64" in printed.out and "validation.jsonl" in printed.out
    assert (
        f"wrote train.jsonl, validation.jsonl, dataset_info.json, {ex.QUARANTINE}, manifest.json"
        in printed.err
    )
    assert "missing_output 1" in printed.err

    assert cli.main([*argv, "--val-fraction", "1"]) == 2
    assert "[0, 1)" in capsys.readouterr().err
    assert cli.main([*argv[:-1], str(tmp_path / "nowhere")]) == 2
    assert "--tokenizer" in capsys.readouterr().err

    # a run with no merge yet, and a run whose dataset is text, not pairs
    other = tmp_path / "other"
    cfg = config.load(None, [f"run.dir={other}", "executor.kind=inline"])
    config.save_resolved(cfg, other)
    assert cli.main(["export", str(other), "--format", "alpaca"]) == 1
    assert "no merged dataset: run `kun-hpc merge" in capsys.readouterr().err
    (other / "merge" / "dataset").mkdir(parents=True)  # a merge that kept nothing: said so, not "merge first"
    assert cli.main(["export", str(other), "--format", "alpaca"]) == 1
    assert "the dataset is empty (0 records): nothing to export" in capsys.readouterr().err
    (other / "merge" / "dataset").rmdir()
    shard = other / "in.jsonl.zst"
    w = ZstdJsonlWriter(shard, 3)
    w.write({"id": "c/1", "corpus": "c", "text": "一段文字"})
    w.close()
    assemble_unit(AssembleTask("text", (str(shard),), str(other / "merge" / "dataset"), 0, False, 3))
    assert cli.main(["export", str(other), "--format", "alpaca"]) == 1
    assert "a text dataset" in capsys.readouterr().err
    assert not (other / "export" / "alpaca" / ex.MANIFEST).exists()
