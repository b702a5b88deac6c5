"""Judge health of the Point stage (issue 14, item 1): per-record judge fields, the stats Point leaves in its
markers, the "Judge health" report section, and point.stop_at_verdict on a scripted judge and on the tiny
model. Expected values come from hand-written scripts (what each judgement is by construction) and from
numpy over the plain list of token counts."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xxhash

from kun_hpc import cli, config
from kun_hpc.cluster.funnel import stage_funnel
from kun_hpc.cluster.grid import plan_grid, stage_hashes
from kun_hpc.core.records import Rejected
from kun_hpc.inference import (
    FINISH_LENGTH,
    FINISH_STOP,
    Engine,
    EngineSpec,
    Generation,
    SamplingSpec,
    load_engine,
)
from kun_hpc.inference.engine import too_long_generation
from kun_hpc.io.markers import read_marker
from kun_hpc.io.shards import read_shard
from kun_hpc.quality.judge import histogram_percentile, judge_stats, section, token_summary
from kun_hpc.quality.section import QualityContext
from kun_hpc.stages.point import Point
from kun_hpc.stages.runner import run_unit
from tests.conftest import SAMPLE

EOS = 0


def instruction_of(prompt) -> str:
    """The data part of a Point prompt: the instruction."""
    return "".join(text for text, is_data in prompt.parts if is_data)


class ScriptedJudge(Engine):
    """A judge that writes the scripted text of each prompt's instruction one character per token, ending as
    the engines do: at the first completed text stop string (the text cut before it, ``stop_string`` naming
    it, the token that completed it the last one), at ``max_new_tokens`` (finish ``length``), or after the
    script with one EOS token (finish ``stop``). ``None`` from the script: a prompt too long to generate.
    ``scores``: the calibrated score of an instruction, answered as log-probs of the good and bad token."""

    def __init__(
        self, script: Callable[[str], str | None], scores: Callable[[str], float] | None = None
    ) -> None:
        self.script = script
        self.scores = scores
        self.spec = EngineSpec(model="scripted", backend="transformers")
        self.model_path = Path("scripted")

    @property
    def tokenizer(self):
        return None

    @property
    def max_model_len(self) -> int:
        return 1 << 20

    def encode(self, prompts):
        return [[ord(c) for c in str(p)] for p in prompts]  # one token per character

    def generate(self, prompts, sampling, seeds=None):
        return [self._write(self.script(instruction_of(p)), sampling) for p in prompts]

    @staticmethod
    def _write(text: str | None, sampling: SamplingSpec) -> Generation:
        if text is None:
            return too_long_generation(5000)
        ids = [ord(c) for c in text]
        for k in range(min(len(text), sampling.max_new_tokens)):
            stop = next((s for s in sampling.stop if text[: k + 1].endswith(s)), None)
            if stop is not None:
                return Generation(text[: k + 1 - len(stop)], ids[: k + 1], FINISH_STOP, 10, stop)
        if len(text) < sampling.max_new_tokens:
            return Generation(text, [*ids, EOS], FINISH_STOP, 10)
        n = sampling.max_new_tokens
        return Generation(text[:n], ids[:n], FINISH_LENGTH, 10)

    def next_token_logprobs(self, prompts, token_ids):
        return [[math.log(s), math.log(1 - s)] for s in (self.scores(instruction_of(p)) for p in prompts)]

    def prompt_logprobs(self, prompts):
        raise NotImplementedError


def make_point(engine: Engine, *overrides: str, cfg: config.DictConfig | None = None) -> Point:
    """Point on ``engine``, configured by ``cfg`` or by the default preset with ``overrides``."""
    cfg = cfg or config.load(None, ["point.engine.model=m", *overrides])
    stage = Point(cfg, cfg.point)
    stage.engine = engine
    stage.setup()
    return stage


# (id, corpus, scripted judgement, outcome, tokens generated or None, hit max_new_tokens), max_new_tokens 20
MAX_NEW = 20
CASES = [
    ("a1", "wudao", "【好】", "good", 4, False),
    ("a2", "wudao", "【差】这个指令含糊", "bad", 10, False),
    ("a3", "wudao", "【好】但也【差】", "both", 9, False),
    ("a4", "wudao", "我觉得还行吧", "unparseable", 7, False),
    ("a5", "wudao", "【好】" + "啊" * 30, "good", 20, True),
    ("a6", "skypile", "嗯" * 25, "unparseable", 20, True),
    ("a7", "skypile", "   ", "empty_output", 4, False),
    ("a8", "skypile", None, "prompt_too_long", None, False),
    ("a9", "skypile", "", "missing_field", None, False),
    ("a10", "skypile", "【差】", "bad", 4, False),
    ("a11", "skypile", "【好】很好", "good", 6, False),
    ("a12", None, "【好】", "good", 4, False),
]
SCRIPT = {f"指令{i:02d}": text for i, (_, _, text, *_) in enumerate(CASES)}


def case_records() -> list[dict]:
    records = []
    for i, (rid, corpus, _, outcome, *_) in enumerate(CASES):
        r = {"id": rid, **({"corpus": corpus} if corpus else {})}
        if outcome != "missing_field":
            r["instruction"] = f"指令{i:02d}"
        records.append(r)
    return records


def test_point_records_carry_judge_fields_and_chunk_stats_count_every_outcome():
    point = make_point(ScriptedJudge(SCRIPT.get), f"point.sampling.max_new_tokens={MAX_NEW}")
    out = point.process(case_records())
    for o, (rid, _, _, outcome, tokens, truncated) in zip(out, CASES, strict=True):
        r = o.record if isinstance(o, Rejected) else o
        assert r["id"] == rid
        assert (o.reason if isinstance(o, Rejected) else "good") == {
            "bad": "verdict_bad",
            "both": "verdict_both",
            "unparseable": "verdict_unparseable",
        }.get(outcome, outcome)
        if tokens is None:  # nothing was generated: no judgement to count
            assert "judge_tokens" not in r and "judge_truncated" not in r
        else:
            assert (r["judge_tokens"], r["judge_truncated"]) == (tokens, truncated)

    stats = point.chunk_stats(out)["judge"]
    assert set(stats) == {"wudao", "skypile", "(no corpus)"}
    for corpus in stats:
        mine = [c for c in CASES if (c[1] or "(no corpus)") == corpus]
        assert stats[corpus]["outcomes"] == dict(Counter(c[3] for c in mine))
        tokens = [c[4] for c in mine if c[4] is not None]
        assert stats[corpus]["tokens"] == dict(Counter(str(t) for t in tokens))
        assert stats[corpus]["truncated"] == sum(c[5] for c in mine)
        s = token_summary(stats[corpus]["tokens"], stats[corpus]["truncated"])
        assert s["judgements"] == len(tokens) and s["max"] == max(tokens)
        assert s["mean"] == pytest.approx(np.mean(tokens))
        assert s["p50"] == pytest.approx(np.percentile(tokens, 50))
        assert s["p99"] == pytest.approx(np.percentile(tokens, 99))
        assert s["share_truncated"] == pytest.approx(sum(c[5] for c in mine) / len(tokens))
    assert sum(sum(s["outcomes"].values()) for s in stats.values()) == len(CASES)


@pytest.mark.parametrize("seed", range(20))
def test_histogram_percentile_equals_numpy_on_the_expanded_list(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(1, 300, size=int(rng.integers(1, 400)))
    hist = Counter(int(v) for v in values)
    for p in (0, 1, 25, 50, 90, 99, 99.9, 100):
        assert histogram_percentile(hist, p) == pytest.approx(np.percentile(values, p))
    with pytest.raises(ValueError, match="no values"):
        histogram_percentile({}, 50)


def test_stop_at_verdict_ends_at_the_first_tag_and_keeps_it():
    """The same scripted judge with the option: the first tag decides (a3, both tags, is kept), generation
    ends with the tag's last token, the tag stays in the text parse_verdict sees."""
    engine = ScriptedJudge(SCRIPT.get)
    point = make_point(engine, f"point.sampling.max_new_tokens={MAX_NEW}", "point.stop_at_verdict=true")
    assert point.sampling.stop[-2:] == ["【好】", "【差】"]
    out = {(o.record if isinstance(o, Rejected) else o)["id"]: o for o in point.process(case_records())}
    for rid, _, text, _, tokens, truncated in CASES:
        o = out[rid]
        r = o.record if isinstance(o, Rejected) else o
        first = min(((text.index(t) + 3, t) for t in ("【好】", "【差】") if t in (text or "")), default=None)
        if first is None:  # no tag: the judgement is what it was without the option
            assert r.get("judge_tokens") == tokens and r.get("judge_truncated", False) == truncated
            continue
        end, tag = first
        assert (r["judge_tokens"], r["judge_truncated"]) == (end, False)
        assert r["verdict"] == tag[1]
        if tag == "【差】":
            assert (o.reason, o.detail) == ("verdict_bad", text[:end])
    assert not isinstance(out["a3"], Rejected)  # "【好】但也【差】": both tags in the reference, kept here
    prov = point.provenance()
    assert prov["stop_at_verdict"] is True and prov["sampling"]["stop"][-2:] == ["【好】", "【差】"]
    assert make_point(engine).provenance()["stop_at_verdict"] is False


def test_stop_at_verdict_changes_the_point_config_hash():
    synth, tag = "tests.stages_for_tests:Synth", "tests.stages_for_tests:Tag"
    stages = f"pipeline.stages=[{synth},point,{tag}]"
    off = stage_hashes(config.load(None, ["point.engine.model=m", stages]))
    on = stage_hashes(config.load(None, ["point.engine.model=m", stages, "point.stop_at_verdict=true"]))
    assert off[synth] == on[synth] and off["point"] != on["point"] and off[tag] != on[tag]


# ------------------------------------------------------------------- over a run: chunks, shards, units
RUN_SCRIPT = ["【好】", "【差】差", "【好】【差】", "不知道", "【好】" + "长" * 40, ""]
RUN_MAX_NEW = 16


def run_script(instruction: str) -> str:
    return RUN_SCRIPT[xxhash.xxh64_intdigest(instruction.encode()) % len(RUN_SCRIPT)]


def run_score_millis(instruction: str) -> int:
    """The calibrated score of an instruction, in thousandths: 1..999."""
    return xxhash.xxh64_intdigest(instruction.encode()) % 999 + 1


def point_run(tmp_path: Path, engine: Engine, *extra: str) -> config.DictConfig:
    """Three corpora of 60 SkyPile sample records each, in shards of 30; Synth (instructions) then Point on
    ``engine``, in chunks of 12 records, three shards per unit."""
    lines = (SAMPLE / "skypile" / "2020-40_zh_head_0000.jsonl").read_bytes().splitlines(keepends=True)
    corpora = []
    for i, name in enumerate(("wudao", "wanjuan", "skypile")):
        folder = tmp_path / "input" / name
        folder.mkdir(parents=True)
        (folder / "part.jsonl").write_bytes(b"".join(lines[60 * i : 60 * (i + 1)]))
        corpora += [f"corpora.{i}.format=skypile", f"corpora.{i}.paths=[{folder}]"]
    args = [
        f"run.dir={tmp_path / 'run'}",
        *corpora,
        "executor.kind=inline",
        "shard.records_per_shard=30",
        "pipeline.chunk_records=12",
        "pipeline.shards_per_task=3",
        "pipeline.stages=[tests.stages_for_tests:Synth,point]",
        "point.engine.model=m",
        *extra,
    ]
    assert cli.main(["shard", *args]) == 0
    cfg = config.load(None, args)
    grid = plan_grid(cfg)
    for unit in grid.units["synth"]:
        run_unit(unit)
    for unit in grid.units["point"]:
        run_unit(unit, make_point(engine, cfg=cfg))
    return cfg


def point_shards(cfg, side: str) -> list[dict]:
    """The records of the point stage's input (``side="input"``) or kept output (``"output"``) shards."""
    units = plan_grid(cfg).units["point"]
    return [r for u in units for t in u.shards for r in read_shard(getattr(t, side))]


def report_context(cfg, tmp_path: Path) -> QualityContext:
    folder = tmp_path / "report"
    folder.mkdir(exist_ok=True)
    return QualityContext(cfg, folder, tmp_path / "dataset", "pairs", [], [], stage_funnel(cfg))


def cell_count(cell: str) -> tuple[int, float | None]:
    """``"1,234 (12.5%)"`` -> (1234, 12.5)."""
    n, _, share = cell.partition(" (")
    return int(n.replace(",", "")), float(share.rstrip("%)")) if share else None


def test_stats_add_up_over_chunks_shards_and_units_and_the_section_shows_them(tmp_path):
    cfg = point_run(tmp_path, ScriptedJudge(run_script), f"point.sampling.max_new_tokens={RUN_MAX_NEW}")
    # what each record's judgement is, by construction of RUN_SCRIPT
    outcome = {0: "good", 1: "bad", 2: "both", 3: "unparseable", 4: "good", 5: "empty_output"}
    tokens_of = {0: 4, 1: 5, 2: 7, 3: 4, 4: RUN_MAX_NEW, 5: 1}
    want: dict[str, Counter] = {}
    tokens: dict[str, list[int]] = {}
    for r in point_shards(cfg, "input"):
        k = RUN_SCRIPT.index(run_script(r["instruction"]))
        want.setdefault(r["corpus"], Counter())[outcome[k]] += 1
        tokens.setdefault(r["corpus"], []).append(tokens_of[k])
    assert len(want) == 3 and all(len(c) == 5 for c in want.values())  # every outcome in every corpus

    markers = [read_marker(cfg.run.dir, "point", u.name) for u in plan_grid(cfg).units["point"]]
    assert len(markers) == 2 and all(len(m["shards"]) == 3 for m in markers)
    assert all(s["chunks"] > 1 for m in markers for s in m["shards"])
    per, done, units = judge_stats(stage_funnel(cfg))
    assert done == units == len(markers)
    assert {c: Counter(s["outcomes"]) for c, s in per.items()} == want
    for corpus, ts in tokens.items():
        assert per[corpus]["tokens"] == dict(Counter(str(t) for t in ts))
        assert per[corpus]["truncated"] == ts.count(RUN_MAX_NEW)
    assert sum(c["good"] for c in want.values()) == len(point_shards(cfg, "output"))

    s = section(report_context(cfg, tmp_path))
    assert s.key == "judge" and s.title == "Judge health (Point)"
    verdicts, cost = s.tables
    assert verdicts.header == ["corpus", "records", "good", "bad", "both", "unparseable", "empty_output"]
    total = sum(want.values(), Counter())
    everything = [t for ts in tokens.values() for t in ts]
    rows = {row[0]: row for row in verdicts.rows}
    assert set(rows) == {*want, "all"}
    for name, counts in {**want, "all": total}.items():
        n = counts.total()
        assert int(rows[name][1].replace(",", "")) == n
        for cell, key in zip(rows[name][2:], verdicts.header[2:], strict=True):
            assert cell_count(cell) == (counts[key], round(100 * counts[key] / n, 1))
    costs = {row[0]: row for row in cost.rows}
    for name, ts in {**tokens, "all": everything}.items():
        row = costs[name]
        assert int(row[1].replace(",", "")) == len(ts)
        assert [float(x) for x in row[2:5]] == [
            pytest.approx(v, abs=0.05) for v in (np.mean(ts), np.percentile(ts, 50), np.percentile(ts, 99))
        ]
        assert float(row[5]) == max(ts)
        hit = ts.count(RUN_MAX_NEW)
        assert cell_count(row[6]) == (hit, round(100 * hit / len(ts), 1))
    assert s.data["all"]["outcomes"] == dict(total)
    assert s.data["all"]["tokens"]["p99"] == pytest.approx(np.percentile(everything, 99))
    assert s.data["tokens_histogram"] == dict(
        sorted(Counter(str(t) for t in everything).items(), key=lambda kv: int(kv[0]))
    )
    n = total.total()
    assert s.card[0] == (
        f"Judge (Point, reference): {100 * total['good'] / n:.1f}% good, {100 * total['bad'] / n:.1f}% bad, "
        f"{100 * total['both'] / n:.1f}% both tags, {100 * total['unparseable'] / n:.1f}% unparseable "
        f"of {n:,} instructions."
    )
    assert s.plots == ["judge_tokens.png"] and (tmp_path / "report" / "judge_tokens.png").stat().st_size > 0


@pytest.mark.slow
def test_calibrated_scores_of_kept_and_rejected_records_in_100_bins(tmp_path):
    engine = ScriptedJudge(run_script, lambda instruction: run_score_millis(instruction) / 1000)
    cfg = point_run(tmp_path, engine, "point.mode=calibrated", "point.threshold=0.5")
    want: dict[str, Counter] = {}
    kept: Counter = Counter()
    for r in point_shards(cfg, "input"):
        millis = run_score_millis(r["instruction"])
        want.setdefault(r["corpus"], Counter())[str(millis // 10)] += 1  # bin i: [i/100, (i+1)/100)
        kept[r["corpus"]] += millis >= 500
    per, *_ = judge_stats(stage_funnel(cfg))
    assert {c: Counter(s["scores"]) for c, s in per.items()} == want
    assert {c: s["outcomes"]["good"] for c, s in per.items()} == dict(kept)
    rejected = {c: sum(w.values()) - kept[c] for c, w in want.items()}
    assert {c: s["outcomes"]["bad"] for c, s in per.items()} == rejected
    assert all(rejected[c] > 0 and kept[c] > 0 for c in want)  # both sides of the threshold are binned

    s = section(report_context(cfg, tmp_path))
    (table,) = s.tables
    rows = {row[0]: row for row in table.rows}
    for c, w in want.items():
        n = sum(w.values())
        assert cell_count(rows[c][2])[0] == n
        assert cell_count(rows[c][3]) == (kept[c], round(100 * kept[c] / n, 1))
        assert cell_count(rows[c][4]) == (rejected[c], round(100 * rejected[c] / n, 1))
        assert s.data["corpora"][c]["score_bins"] == [w[str(i)] for i in range(100)]
    assert s.data["all"]["score_bins"] == [sum(w[str(i)] for w in want.values()) for i in range(100)]
    n, k = sum(sum(w.values()) for w in want.values()), sum(kept.values())
    assert s.card == [
        f"Judge (Point, calibrated): {100 * k / n:.1f}% of {n:,} scored instructions at or above the "
        "threshold 0.5."
    ]
    assert s.plots == ["judge_scores.png"] and (tmp_path / "report" / "judge_scores.png").stat().st_size > 0


def test_no_point_stage_no_section_and_no_statistics_no_numbers(tmp_path):
    cfg = config.load(None, [f"run.dir={tmp_path}", "pipeline.stages=[tests.stages_for_tests:Synth]"])
    assert section(report_context(cfg, tmp_path)) is None
    stages = "pipeline.stages=[tests.stages_for_tests:Synth,point]"
    cfg = config.load(None, [f"run.dir={tmp_path}", stages, "point.engine.model=m"])
    s = section(report_context(cfg, tmp_path))  # nothing sharded yet: no unit, no judgement
    assert (s.data["records"], s.tables, s.plots, s.card) == (0, [], [], [])
    assert s.lines == ["No judge statistics in the Point markers (0 of 0 units done)."]


# ------------------------------------------------------------------------------- the tiny model (HF)
def first_tag(text: str) -> int | None:
    """A position i where the 3 distinct printable characters text[i:i+3] occur for the first time and end
    before the text does (so stopping there saves tokens), in the middle when possible."""
    for i in [*range(len(text) // 3, len(text) - 4), *range(len(text) // 3)]:
        tag = text[i : i + 3]
        if (
            text.index(tag) == i
            and all(c.isprintable() and not c.isspace() for c in tag)
            and len(set(tag)) == 3
        ):
            return i
    return None


QUESTIONS = ["长城有多长？", "写一首诗", "什么是民窿？", "教育有哪些功能？", "介绍一下北京", "如何学习数学？"]


def test_stop_at_verdict_on_the_tiny_model_cuts_at_the_tag_and_keeps_it(tiny_model):
    """The tiny model never writes 【好】: make a three-character piece of its greedy judgement the good tag
    (verdict_open, good, verdict_close), found in a first run without the option, then judge with it."""
    engine = load_engine(EngineSpec(model=str(tiny_model), backend="transformers", batch_size=8))
    try:
        greedy = ["point.sampling.temperature=0", "point.sampling.max_new_tokens=16"]
        plain = make_point(engine, *greedy)
        records = [{"id": f"t{i}", "corpus": "c", "instruction": q} for i, q in enumerate(QUESTIONS)]
        prompts = [plain.template.prompt(instruction=r["instruction"]) for r in records]
        full = engine.generate(prompts, plain.sampling)
        # a judgement the stage accepts as it is (the random model often writes U+FFFD: invalid_utf8)
        found = [
            (r, p, g, i)
            for r, p, g in zip(records, prompts, full, strict=True)
            if "\ufffd" not in g.text and (i := first_tag(g.text)) is not None
        ]
        assert found, [g.text for g in full]
        record, prompt, g, i = found[0]
        tag = g.text[i : i + 3]
        bad = next(c for c in "差坏劣否" if c not in g.text)
        verdict = [f"point.verdict_open={tag[0]}", f"point.good={tag[1]}", f"point.verdict_close={tag[2]}"]
        options = [*greedy, *verdict, f"point.bad={bad}"]
        # the number of tokens after which the decoded text first holds the tag, by decoding prefixes
        tok = engine.tokenizer
        k = next(k for k in range(1, 17) if tag in tok.decode(g.token_ids[:k], skip_special_tokens=True))
        assert k < len(g.token_ids)

        (without,) = make_point(engine, *options).process([record])
        assert (without["verdict"], without["judge_tokens"]) == (tag[1], len(g.token_ids))
        stopping = make_point(engine, *options, "point.stop_at_verdict=true")
        (cut,) = engine.generate([prompt], stopping.sampling)
        assert (cut.text + cut.stop_string, cut.stop_string) == (g.text[: i + 3], tag)
        assert cut.token_ids == g.token_ids[:k] and cut.finish_reason == FINISH_STOP
        (judged,) = stopping.process([record])
        assert (judged["verdict"], judged["judge_tokens"], judged["judge_truncated"]) == (tag[1], k, False)
    finally:
        engine.close()
