"""Human agreement (issue 14, item 6): `kun-hpc review export` on real run folders whose Point and Answer
decisions are known by construction, the filled CSV and a Label Studio export read back, and the agreement
numbers checked against hand computations and brute-force references."""

from __future__ import annotations

import csv
import io
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from kun_hpc import cli, config
from kun_hpc.inference import FINISH_PROMPT_TOO_LONG, FINISH_STOP, Generation
from kun_hpc.quality import review
from kun_hpc.quality.section import QualityContext
from kun_hpc.stages import answer as answer_stage
from kun_hpc.stages import point as point_stage
from kun_hpc.stages.base import Stage

# ------------------------------------------------------------------ stages whose decisions are known
# Record k (its text opens with "第k号") is judged by its k % 6: 0, 1 good; 2 bad; 3 both tags; 4 neither;
# 5 a prompt too long for the judge. Calibrated: score (k % 10 + 0.5) / 10. Answer: k % 4 == 3 empty output.
JUDGEMENTS = {0: "【好】", 1: "这条指令【好】", 2: "【差】", 3: "【好】还是【差】", 4: "说不清"}
REASONS = {0: "", 1: "", 2: "verdict_bad", 3: "verdict_both", 4: "verdict_unparseable", 5: "prompt_too_long"}
CORPORA = {"alpha": range(0, 60), "beta": range(60, 90), "gamma": range(90, 102)}


def number(record: dict) -> int:
    return int(re.match(r"第(\d+)号", record["text"]).group(1))


def generation(text: str, finish: str = FINISH_STOP) -> Generation:
    return Generation(text, [1] * max(len(text), 1), finish, 12)


class Point(point_stage.Point):
    """The real Point's accept rules on judgements made from the record's number (no model)."""

    process_stream = Stage.process_stream  # batch by batch, without an engine

    def setup(self) -> None:
        pass

    def process(self, batch):
        out = []
        for r in batch:
            k = number(r)
            r = {**r, "instruction": f"请解释第{k}号的内容。"}
            if self.mode == "calibrated":
                p = (k % 10 + 0.5) / 10
                out.append(self._accept_score(r, [math.log(p), math.log(1 - p)]))
            elif k % 6 == 5:
                out.append(self.accept(r, generation("", FINISH_PROMPT_TOO_LONG)))
            else:
                out.append(self.accept(r, generation(JUDGEMENTS[k % 6])))
        return out


class Answer(answer_stage.Answer):
    """The real Answer's accept rules: the answer is the text, empty when k % 4 == 3."""

    process_stream = Stage.process_stream

    def setup(self) -> None:
        pass

    def process(self, batch):
        return [self.accept(r, generation(" " if number(r) % 4 == 3 else r["text"])) for r in batch]


def make_run(root: Path, *extra: str) -> Path:
    data = root / "data"
    data.mkdir()
    for corpus, ks in CORPORA.items():
        lines = [
            orjson.dumps({"text": f"第{k}号：这是关于{corpus}的第{k}段中文文本，内容完整。"}) for k in ks
        ]
        (data / f"{corpus}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    model = root / "model"  # the run checks that the LLM stages name a model folder; nothing loads it
    model.mkdir()
    (model / "config.json").write_text("{}")
    run = root / "run"
    corpora = ", ".join(f"{{name: {c}, format: jsonl, paths: [{data / c}.jsonl]}}" for c in CORPORA)
    args = [
        f"run.dir={run}", "executor.kind=inline", f"corpora=[{corpora}]", "pipeline.chunk_records=16",
        f"point.engine.model={model}", f"answer.engine.model={model}", *extra,
    ]  # fmt: skip
    assert cli.main(["run", *args]) == 0
    return run


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory) -> Path:
    """Point (reference mode) -> Answer, merged."""
    stages = "pipeline.stages=[tests.quality.test_review:Point,tests.quality.test_review:Answer]"
    return make_run(tmp_path_factory.mktemp("review-ref"), stages, "merge.parquet=false")


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory) -> Path:
    stages = "pipeline.stages=[tests.quality.test_review:Point]"
    return make_run(
        tmp_path_factory.mktemp("review-cal"), stages, "point.mode=calibrated", "merge.auto=false"
    )


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """No LLM stage: the merged dataset is the records' text (a text dataset). The last test of this file
    merges it again (with a record fewer)."""
    return make_run(tmp_path_factory.mktemp("review-text"), "pipeline.stages=[]", "merge.parquet=false")


def point_strata() -> Counter:
    """The Point stage's strata (corpus/decision) and their sizes, from the construction."""
    return Counter(f"{c}/{REASONS[k % 6] or 'kept'}" for c, ks in CORPORA.items() for k in ks)


def read_csv(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # the BOM Excel needs to read UTF-8
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))


def write_csv(path: Path, rows: list[dict], encoding: str = "utf-8-sig") -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))


def k_of(row: dict) -> int:
    return int(re.search(r"第(\d+)号", row["instruction"]).group(1))


# ------------------------------------------------------------------------------ the numbers themselves
def test_kappa_precision_recall_match_a_hand_computation():
    # judge 好 & human 好: 20, judge 好 & human 差: 10, judge 差 & human 好: 5, judge 差 & human 差: 15
    judge = np.array([1] * 20 + [1] * 10 + [0] * 5 + [0] * 15, dtype=bool)
    human = np.array([1] * 20 + [0] * 10 + [1] * 5 + [0] * 15, dtype=bool)
    n = 50
    p_o = (20 + 15) / n
    p_e = (30 / n) * (25 / n) + (20 / n) * (25 / n)  # judge 好 30, human 好 25; judge 差 20, human 差 25
    s = review.agreement_stats(judge, human)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (20, 10, 5, 15)
    assert s["precision"] == pytest.approx(20 / 30) and s["recall"] == pytest.approx(20 / 25)
    assert s["accuracy"] == pytest.approx(p_o)
    assert s["kappa"] == pytest.approx((p_o - p_e) / (1 - p_e)) == pytest.approx(0.4)
    try:  # a second opinion when scikit-learn happens to be installed (not a dependency)
        from sklearn.metrics import cohen_kappa_score

        assert s["kappa"] == pytest.approx(cohen_kappa_score(judge, human))
    except ImportError:
        pass


def test_weights_count_as_repeated_rows_and_undefined_ratios_are_none():
    rng = np.random.default_rng(3)
    judge, human = rng.random(40) < 0.6, rng.random(40) < 0.5
    w = rng.integers(1, 5, 40)
    weighted = review.agreement_stats(judge, human, w)
    repeated = review.agreement_stats(np.repeat(judge, w), np.repeat(human, w))
    assert weighted == pytest.approx(repeated)
    same = review.agreement_stats(np.ones(5, bool), np.ones(5, bool))
    assert same["kappa"] is None and same["precision"] == 1.0  # p_e = 1: kappa undefined
    none_kept = review.agreement_stats(np.zeros(4, bool), np.array([1, 0, 1, 0], bool))
    assert none_kept["precision"] is None and none_kept["recall"] == 0.0
    assert review.cohen_kappa(0, 0, 0, 0) is None


def test_bootstrap_interval_holds_the_estimate_and_repeats_with_its_seed():
    rng = np.random.default_rng(0)
    human = rng.random(120) < 0.5
    judge = np.where(rng.random(120) < 0.8, human, ~human)  # agrees 80% of the time
    stats = review.agreement_stats(judge, human)
    b = review.bootstrap_intervals(judge, human, resamples=500, seed=7)
    assert -1 <= b["kappa"]["low"] < stats["kappa"] < b["kappa"]["high"] <= 1
    assert 0 <= b["precision"]["low"] < stats["precision"] < b["precision"]["high"] <= 1
    assert b == review.bootstrap_intervals(judge, human, resamples=500, seed=7)
    assert b != review.bootstrap_intervals(judge, human, resamples=500, seed=8)
    strata = ["x" if i % 3 else "y" for i in range(120)]
    s = review.bootstrap_intervals(judge, human, np.ones(120), strata, resamples=500, seed=7)
    assert s["kappa"]["low"] < stats["kappa"] < s["kappa"]["high"] and s["method"] == "percentile, stratified"
    one = review.bootstrap_intervals(np.ones(6, bool), np.ones(6, bool), resamples=50)
    assert one["kappa"] == {"low": None, "high": None, "undefined": 50}
    assert one["precision"] == {"low": 1.0, "high": 1.0, "undefined": 0}  # every resample: 6 of 6 good
    none_kept = review.bootstrap_intervals(np.zeros(4, bool), np.ones(4, bool), resamples=20)
    assert none_kept["precision"]["undefined"] == 20


def test_numbers_that_round_to_zero_print_without_a_sign():
    assert review._num(-0.0001, 2) == review._num(-0.0, 2) == review._num(0.004, 2) == "0.00"
    assert review._num(-0.006, 2) == "-0.01" and review._num(None) == "n/a" and review._num(-0.0) == "0.000"


def test_lowest_threshold_on_scores_whose_answer_is_known():
    scores = np.round(np.arange(1, 11) / 10, 1)  # 0.1 .. 1.0
    human = np.isin(scores, [0.3, 0.6, 0.7, 0.8, 1.0])  # 0.9 is bad, 0.3 good
    # precision at t: 1.0 -> 1/1, 0.9 -> 1/2, 0.8 -> 2/3, 0.7 -> 3/4, 0.6 -> 4/5, 0.5 -> 4/6, ... 0.3 -> 5/8
    t = review.lowest_threshold(scores, human, 0.8)
    assert t == {"threshold": 0.6, "precision": pytest.approx(0.8), "recall": pytest.approx(4 / 5),
                 "kept": pytest.approx(0.5), "n": 5}  # fmt: skip
    assert review.lowest_threshold(scores, human, 0.9)["threshold"] == 1.0
    assert review.lowest_threshold(scores, np.zeros(10, bool), 0.5) is None
    w = np.where(scores == 0.9, 3.0, 1.0)  # the bad 0.9 stands for three records: 0.6 -> 4/7
    assert review.lowest_threshold(scores, human, 0.8, w)["threshold"] == 1.0


def test_lowest_threshold_agrees_with_brute_force_on_random_ties():
    rng = np.random.default_rng(11)
    for _ in range(50):
        scores = rng.integers(0, 8, 30) / 8  # many ties
        human = rng.random(30) < scores
        target = float(rng.choice([0.5, 0.7, 0.9]))
        ok = [t for t in sorted(set(scores)) if human[scores >= t].mean() >= target]
        found = review.lowest_threshold(scores, human, target)
        assert (found and found["threshold"]) == (ok[0] if ok else None)


def test_allocation_shares_equally_and_gives_what_small_strata_cannot_take():
    assert review.allocate({"x": 1, "y": 5, "z": 100}, 9) == {"x": 1, "y": 4, "z": 4}
    assert review.allocate({"x": 3, "y": 4}, 100) == {"x": 3, "y": 4}
    sizes = {f"s{i}": size for i, size in enumerate([1, 2, 3, 50, 50, 7, 1000])}
    for n in range(1, 60):
        alloc = review.allocate(sizes, n)
        assert sum(alloc.values()) == n and all(alloc[s] <= sizes[s] for s in sizes)
        open_ = [s for s in sizes if alloc[s] < sizes[s]]
        assert all(alloc[v] <= alloc[u] + 1 for u in open_ for v in sizes)  # equal but for the capped
        if n >= len(sizes):
            assert all(alloc.values())


def test_draws_are_uniform_within_strata_and_seeded():
    lines = [("a", Path("f"), i, b"") for i in range(10)] + [("b", Path("g"), 1, b"")]
    # n = 3 over two strata: b takes its one line, a gets two (the first two of its three smallest keys)
    picked = Counter()
    for seed in range(3000):
        chosen, sizes, drawn = review.draw(iter(lines), 3, seed)
        assert sizes == {"a": 10, "b": 1} and drawn == {"a": 2, "b": 1}
        picked.update(i for _, i, _ in chosen["a"])
    assert set(picked) == set(range(10))
    assert all(520 <= c <= 680 for c in picked.values()), picked  # 600 each expected
    assert review.draw(iter(lines), 3, 5)[0] == review.draw(iter(lines), 3, 5)[0]


def test_csv_cells_excel_would_run_as_formulas_are_quoted():
    row = dict.fromkeys(review.csv_columns(), "")
    row |= {
        "instruction": '=HYPERLINK("http://x","点我")',
        "text": "-项目一",
        "answer": "好的",
        "score": None,
    }
    (parsed,) = csv.DictReader(io.StringIO(review.csv_bytes([row]).decode("utf-8-sig"), newline=""))
    assert parsed["instruction"] == "'" + row["instruction"] and parsed["text"] == "'-项目一"
    assert parsed["answer"] == "好的" and parsed["score"] == ""


def test_human_words():
    for word in ("好", " GOOD ", "1", "y", "Yes", "【好】"):
        assert review.verdict_label(word) == "好"
    for word in ("差", "bad", "0", "N", "no"):
        assert review.verdict_label(word) == "差"
    for word in ("", None, "maybe", "一般"):
        assert review.verdict_label(word) is None


# ---------------------------------------------------------------------------------- export on real runs
@pytest.mark.slow
def test_export_point_is_stratified_over_verdicts_reasons_and_corpora(ref_run, capsys):
    strata = point_strata()
    assert len(strata) == 15
    assert cli.main(["review", "export", str(ref_run), "-n", "45", "--seed", "3"]) == 0
    folder = ref_run / "review"
    rows = read_csv(folder / "review.csv")
    assert len(rows) == 45 and tuple(rows[0]) == review.csv_columns(("instruction", "text"))
    assert {r["stratum"] for r in rows} == set(strata)  # every verdict/reason of every corpus
    by_stratum = Counter(r["stratum"] for r in rows)
    assert by_stratum == review.allocate(dict(strata), 45)
    export = orjson.loads((folder / "export.json").read_bytes())
    assert list(export["rows"]) == [r["id"] for r in rows] and export["fields"] == ["instruction", "text"]
    for r in rows:
        k = k_of(r)
        corpus = next(c for c, ks in CORPORA.items() if k in ks)
        stratum = f"{corpus}/{REASONS[k % 6] or 'kept'}"
        verdict = "好" if k % 6 in (0, 1) else "差"
        assert r["corpus"] == corpus and r["stage"] == "point"  # the CSV's hideable columns
        assert r["reason"] == REASONS[k % 6] and r["stratum"] == stratum and r["judge_verdict"] == verdict
        assert int(r["stratum_records"]) == strata[r["stratum"]]
        assert r["text"].startswith(f"第{k}号") and r["score"] == "" and "answer" not in r
        assert r["human_verdict"] == "" and r["notes"] == "" and r["review_set"] == export["review_set"]
        side = export["rows"][r["id"]]  # what the import reads: the same, keyed by id
        assert (side["judge_verdict"], side["reason"], side["stratum"], side["corpus"]) == (
            verdict, REASONS[k % 6], stratum, corpus)  # fmt: skip
        assert side["score"] is None and side["source"] == r["source"]
    assert len({r["id"] for r in rows}) == 45
    tasks = orjson.loads((folder / "label_studio_tasks.json").read_bytes())
    assert [t["data"]["record_id"] for t in tasks] == [r["id"] for r in rows]
    # blind: Label Studio's Data Manager shows every data key, so the data holds the ids and texts only
    for t, r in zip(tasks, rows, strict=True):
        assert t == {"data": {"record_id": r["id"], "review_set": export["review_set"],
                              "instruction": r["instruction"], "text": r["text"]}}  # fmt: skip
    view = ET.fromstring((folder / "label_studio_config.xml").read_text())
    choices = view.find("Choices")
    assert choices.get("name") == "human_verdict" and choices.get("toName") == "instruction"
    assert [c.get("value") for c in choices.findall("Choice")] == ["好", "差"]
    shown = {t.get("name"): t.get("value") for t in view.findall("Text")}
    assert shown == {"instruction": "$instruction", "text": "$text"}
    assert all(v[1:] in tasks[0]["data"] for v in shown.values())
    assert "只评价指令" in view.find("Header").get("value")
    assert {s: v["records"] for s, v in export["strata"].items()} == strata
    assert export["state"]["stage"] == "point" and export["state"]["records"] == sum(strata.values())
    assert export["run"] == str(ref_run)
    assert "wrote review.csv" in capsys.readouterr().err


def test_export_is_reproducible_and_refuses_to_overwrite_a_review(ref_run, tmp_path):
    out = tmp_path / "r"
    everything = review.export_review(ref_run, n=1000, out=out)
    assert len(everything.rows) == sum(len(ks) for ks in CORPORA.values())
    with pytest.raises(review.ReviewError, match="exists"):
        review.export_review(ref_run, n=20, seed=1, out=out)
    cfg = review.run_config(ref_run)

    def ids(seed: int) -> list[tuple[str, int]]:
        chosen = review.draw(review.stage_lines(cfg, "point"), 20, seed)[0]
        return sorted((str(path), i) for picks in chosen.values() for path, i, _ in picks)

    assert ids(1) == ids(1) and ids(1) != ids(2)


def test_export_answer_and_dataset(ref_run, tmp_path):
    ans = review.export_review(ref_run, "answer", n=30, out=tmp_path / "a")
    passed = [k for ks in CORPORA.values() for k in ks if k % 6 in (0, 1)]
    expected = Counter(
        f"{c}/{'empty_output' if k % 4 == 3 else 'kept'}"
        for c, ks in CORPORA.items()
        for k in ks
        if k in passed
    )
    assert ans.sizes == dict(expected) and {r["stratum"] for r in ans.rows} == set(expected)
    for r in ans.rows:
        k = k_of(r)
        assert r["judge_verdict"] == ("差" if k % 4 == 3 else "好")
        assert r["answer"] == (" " if k % 4 == 3 else r["text"])  # what the model wrote
    ds = review.export_review(ref_run, "dataset", n=9, out=tmp_path / "d")
    assert ds.sizes == {
        f"{c}/kept": sum(1 for k in passed if k in ks and k % 4 != 3) for c, ks in CORPORA.items()
    }
    assert Counter(r["corpus"] for r in ds.rows) == {c: 3 for c in CORPORA}
    # the merged pairs hold instruction and output (as "answer"), no unit text
    assert all(r["judge_verdict"] == "好" and r["answer"] and r["text"] is None for r in ds.rows)
    assert ans.fields == ("instruction", "text", "answer") and ds.fields == ("instruction", "answer")
    view = ET.fromstring((tmp_path / "d" / "label_studio_config.xml").read_text())
    assert [t.get("name") for t in view.findall("Text")] == ["instruction", "answer"]
    question = view.find("Header").get("value")
    assert "这一对" in question and "原文" not in question  # nothing asks about a text not shown
    assert "原文" in ET.fromstring(review.label_studio_config(ans.fields)).find("Header").get("value")
    tasks = orjson.loads((tmp_path / "d" / "label_studio_tasks.json").read_bytes())
    assert all(set(t["data"]) == {"record_id", "review_set", "instruction", "answer"} for t in tasks)
    assert tuple(read_csv(tmp_path / "d" / "review.csv")[0]) == review.csv_columns(("instruction", "answer"))


def test_export_of_a_text_dataset_shows_the_text_alone(text_run, tmp_path):
    ds = review.export_review(text_run, "dataset", n=6, out=tmp_path)
    assert ds.fields == ("text",) and ds.sizes == {f"{c}/kept": len(ks) for c, ks in CORPORA.items()}
    assert all(r["instruction"] is None and r["text"].startswith("第") for r in ds.rows)
    view = ET.fromstring((tmp_path / "label_studio_config.xml").read_text())
    assert [t.get("name") for t in view.findall("Text")] == ["text"]
    assert view.find("Choices").get("toName") == "text"
    assert [h.get("value") for h in view.findall("Header")][1] == "文本 text"  # no unit of an instruction
    question = view.find("Header").get("value")
    assert "文本" in question and "指令" not in question and "回答" not in question
    tasks = orjson.loads((tmp_path / "label_studio_tasks.json").read_bytes())
    assert all(set(t["data"]) == {"record_id", "review_set", "text"} for t in tasks)


def test_export_errors_name_what_exists(ref_run, calibrated_run, tmp_path, capsys):
    with pytest.raises(review.ReviewError, match="not a run folder"):
        review.export_review(tmp_path)
    with pytest.raises(review.ReviewError, match="its stages: point"):
        review.export_review(calibrated_run, "answer", out=tmp_path / "x")
    with pytest.raises(review.ReviewError, match="kun-hpc merge"):
        review.export_review(calibrated_run, "dataset", out=tmp_path / "x")
    assert cli.main(["review", "export", str(calibrated_run), "--stage", "answer"]) == 1
    assert "is not in this run" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- import, both forms
def population() -> dict:
    """What the humans of the import tests think (good iff k % 6 in 0..2: the judge wrongly rejects the
    k % 6 == 2 ones), counted over every record of the Point stage: the stage's true confusion table."""
    cells = Counter((k % 6 in (0, 1), k % 6 in (0, 1, 2)) for ks in CORPORA.values() for k in ks)
    return {
        "tp": cells[True, True],
        "fp": cells[True, False],
        "fn": cells[False, True],
        "tn": cells[False, False],
    }


def test_import_of_a_filled_csv(ref_run, tmp_path, capsys):
    review.export_review(ref_run, n=45, seed=3, out=tmp_path, force=True)
    rows = read_csv(tmp_path / "review.csv")
    spellings = {True: ["好", "good", "1", "y"], False: ["差", "bad", "0", "n"]}
    for i, r in enumerate(rows):
        r["human_verdict"] = spellings[k_of(r) % 6 in (0, 1, 2)][i % 4]
    by_stratum = Counter(r["stratum"] for r in rows)
    kept = [r for r in rows if r["stratum"] == "alpha/kept"]
    assert len(kept) >= 4
    kept[0]["human_verdict"], kept[1]["human_verdict"], kept[2]["human_verdict"] = "", "  ", "maybe"
    for r in rows:  # the stage's side comes from export.json: edited cells change nothing
        r["judge_verdict"], r["stratum"], r["stratum_records"], r["score"] = "好", "x", "1", "0.9"
    filled = tmp_path / "filled.csv"
    write_csv(filled, rows)
    export = str(tmp_path / "export.json")
    assert (
        cli.main(["review", "import", str(ref_run), str(filled), "--resamples", "300", "--export", export])
        == 0
    )
    captured = capsys.readouterr()
    result = orjson.loads((ref_run / "review" / "agreement.json").read_bytes())
    assert result["file"] == str(filled) and result["rows"] == 45 and result["n"] == 42
    assert result["stage"] == "point" and result["not_in_file"] == 0 and result["export"]["n"] == 45
    assert result["not_compared"] == {"human_empty": 2, "human_unknown": 1}
    assert len(result["examples"]["human_empty"]) == 2 and "row" in result["examples"]["human_unknown"][0]
    compared = [r for r in rows if review.verdict_label(r["human_verdict"])]
    judged = Counter((k_of(r) % 6 in (0, 1), k_of(r) % 6 in (0, 1, 2)) for r in compared)
    c = result["confusion"]
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (
        judged[True, True],
        0,
        judged[False, True],
        judged[False, False],
    )
    # weighted by stratum, the estimates are the whole stage's numbers (labels are constant per stratum)
    pop = population()
    n = sum(pop.values())
    p_o = (pop["tp"] + pop["tn"]) / n
    p_e = (
        (pop["tp"] + pop["fp"]) * (pop["tp"] + pop["fn"]) + (pop["fn"] + pop["tn"]) * (pop["fp"] + pop["tn"])
    ) / n**2
    assert result["weighted"] and result["precision"] == pytest.approx(1.0)
    assert result["recall"] == pytest.approx(pop["tp"] / (pop["tp"] + pop["fn"]))
    assert result["accuracy"] == pytest.approx(p_o)
    assert result["kappa"] == pytest.approx((p_o - p_e) / (1 - p_e))
    assert result["confusion_records"] == pytest.approx({k: float(v) for k, v in pop.items()})
    low, high = result["kappa_ci"]
    # the verdicts are constant within each stratum: no resample within strata changes the estimate
    assert low == pytest.approx(result["kappa"]) == high and result["bootstrap"]["resamples"] == 300
    assert result["by_reason"]["verdict_bad"]["human_good"] == result["by_reason"]["verdict_bad"]["n"]
    assert result["threshold"] is None and result["scored"] == 0
    assert "Cohen's kappa" in captured.out and "human_empty 2" in captured.out
    assert "kun-hpc merge" in captured.err and result["strata_not_compared"] == []
    exported = orjson.loads((tmp_path / "export.json").read_bytes())["rows"]
    for r in rows:
        if exported[r["id"]]["stratum"] == "gamma/verdict_both":
            r["human_verdict"] = ""
    write_csv(filled, rows)
    part = review.import_review(ref_run, filled, resamples=10, export=export)
    assert part["strata_not_compared"] == ["gamma/verdict_both"]
    assert part["not_compared"] == {"human_empty": 2 + by_stratum["gamma/verdict_both"], "human_unknown": 1}
    gbk = tmp_path / "excel.csv"  # Excel on Chinese Windows saving plain "CSV"
    write_csv(gbk, rows, "gb18030")
    again = review.import_review(ref_run, gbk, resamples=300, export=export)
    assert again["read_as"] == "CSV, gb18030" and again["confusion"] == part["confusion"]


def annotation(choice: str | None, cancelled: bool = False) -> dict:
    result = [{"from_name": "notes", "to_name": "instruction", "type": "textarea", "value": {"text": ["ok"]}}]
    if choice is not None:
        value = {"choices": [choice]}
        result.append(
            {"from_name": "human_verdict", "to_name": "instruction", "type": "choices", "value": value}
        )
    return {"id": 1, "completed_by": 1, "was_cancelled": cancelled, "result": result, "lead_time": 3.2}


def test_import_of_a_label_studio_export(ref_run, tmp_path):
    review.export_review(ref_run, n=30, seed=4, out=tmp_path, force=True)
    tasks = orjson.loads((tmp_path / "label_studio_tasks.json").read_bytes())
    exported = []
    for i, t in enumerate(tasks):  # what Label Studio's "JSON" export gives back
        good = k_of(t["data"]) % 6 in (0, 1, 2)
        word, other = ("好", "差") if good else ("差", "好")
        annotations = [annotation(word)]
        if i == 0:
            annotations = []  # never labelled
        elif i == 1:
            annotations = [annotation(word, cancelled=True)]  # skipped
        elif i == 2:
            annotations = [annotation(word), annotation(other)]  # two reviewers split
        elif i == 3:
            annotations = [annotation(word), annotation(other), annotation(word)]  # a majority
        elif i == 4:
            annotations = [annotation("一般")]  # a choice the config does not have
        elif i == 5:
            annotations = [annotation(word, cancelled=True), annotation(word)]
        exported.append({"id": 100 + i, "data": t["data"], "annotations": annotations, "predictions": []})
    path = tmp_path / "project-1-at-2024.json"
    path.write_bytes(orjson.dumps(exported))
    export = tmp_path / "export.json"
    result = review.import_review(ref_run, path, resamples=200, export=export)
    assert result["not_compared"] == {"cancelled": 1, "human_unknown": 1, "no_annotation": 1, "tied": 1}
    assert result["examples"]["tied"] == [f"{path.name} task 102 (id {tasks[2]['data']['record_id']})"]
    compared = [t for i, t in enumerate(tasks) if i not in (0, 1, 2, 4)]
    assert result["n"] == len(compared) == 26
    side = orjson.loads(export.read_bytes())["rows"]
    judged = Counter((k_of(t["data"]) % 6 in (0, 1), k_of(t["data"]) % 6 in (0, 1, 2)) for t in compared)
    assert all(
        side[t["data"]["record_id"]]["judge_verdict"] == "好" for t in compared if k_of(t["data"]) % 6 < 2
    )
    c = result["confusion"]
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (judged[True, True], judged[True, False],
                                                    judged[False, True], judged[False, False])  # fmt: skip
    flat = tmp_path / "min.json"  # Label Studio's JSON-MIN: the choice beside the data's fields
    flat.write_bytes(orjson.dumps([{**t["data"], "id": 7, "human_verdict": "好"} for t in tasks[:3]]))
    assert review.import_review(ref_run, flat, resamples=50, export=export)["n"] == 3


def test_calibrated_review_suggests_the_threshold_override(calibrated_run, capsys):
    assert cli.main(["review", "export", str(calibrated_run), "-n", "200"]) == 0  # every record: exact
    rows = read_csv(calibrated_run / "review" / "review.csv")
    assert {r["reason"] for r in rows} == {"", "score_below_threshold"}
    for r in rows:
        score = float(r["score"])
        assert score == pytest.approx((k_of(r) % 10 + 0.5) / 10)
        assert r["judge_verdict"] == ("好" if score >= 0.5 else "差")
        r["human_verdict"] = "好" if score >= 0.55 else "差"  # the judge's 0.5 keeps the 0.55s: all good
    filled = calibrated_run / "review" / "filled.csv"
    write_csv(filled, rows)
    capsys.readouterr()
    assert cli.main(["review", "import", str(calibrated_run), str(filled), "--target-precision", "0.9"]) == 0
    out = capsys.readouterr().out
    result = orjson.loads((calibrated_run / "review" / "agreement.json").read_bytes())
    # 0.45 would keep the k % 10 in 4..9 (60 records), 50 of them good: 0.83 < 0.9
    ks = [k for ks in CORPORA.values() for k in ks]
    assert result["threshold"]["threshold"] == 0.55 and result["threshold"]["precision"] == 1.0
    assert result["threshold"]["kept"] == pytest.approx(sum(k % 10 >= 5 for k in ks) / len(ks))
    assert "point.threshold=0.55" in out
    assert cli.main(["review", "import", str(calibrated_run), str(filled), "--target-precision", "1.01"]) == 1
    high = [{**r, "human_verdict": "差"} for r in rows]
    write_csv(filled, high)
    assert cli.main(["review", "import", str(calibrated_run), str(filled)]) == 0
    assert "No threshold reaches a precision of 0.9" in capsys.readouterr().out.replace("\n", " ")


def test_bad_review_files_are_named(ref_run, tmp_path):
    review.export_review(ref_run, n=10, seed=5, out=tmp_path, force=True)
    export = tmp_path / "export.json"
    ids = list(orjson.loads(export.read_bytes())["rows"])
    no_column = tmp_path / "x.csv"
    no_column.write_text("judge_verdict,instruction\n好,a\n")
    with pytest.raises(review.ReviewError, match=r"x\.csv: no column human_verdict, id"):
        review.import_review(ref_run, no_column, export=export)
    empty = tmp_path / "e.csv"
    empty.write_text(f"id,human_verdict\n{ids[0]},\n{ids[1]},?\n")
    with pytest.raises(review.ReviewError, match=r"nothing to compare \(human_empty 1, human_unknown 1\)"):
        review.import_review(ref_run, empty, export=export)
    not_list = tmp_path / "z.json"
    not_list.write_text('{"data": {}}')
    with pytest.raises(review.ReviewError, match="a JSON list of tasks"):
        review.import_review(ref_run, not_list, export=export)
    other = tmp_path / "x.txt"
    other.write_text("好")
    with pytest.raises(review.ReviewError, match=r"\.csv or \.json"):
        review.import_review(ref_run, other, export=export)
    with pytest.raises(review.ReviewError, match=r"nowhere\.json: no such file.*kun-hpc review export"):
        review.import_review(ref_run, empty, export=tmp_path / "nowhere.json")


@pytest.mark.slow
def test_import_refuses_a_file_of_another_export_and_counts_rows_not_in_it(ref_run, calibrated_run, tmp_path):
    mine = review.export_review(ref_run, n=15, seed=1, out=tmp_path / "a")
    export = tmp_path / "a" / "export.json"
    rows = read_csv(tmp_path / "a" / "review.csv")
    for r in rows:
        r["human_verdict"] = "好"
    strangers = tmp_path / "strangers.csv"  # ids no export drew
    write_csv(strangers, [{"id": f"nosuch/{i}", "human_verdict": "好"} for i in range(7)])
    with pytest.raises(review.ReviewError) as e:
        review.import_review(ref_run, strangers, export=export)
    message = str(e.value)
    assert message.startswith(f"{strangers}: none of its 7 ids is in this run's export {export}")
    assert "'nosuch/0', 'nosuch/1', 'nosuch/2', 'nosuch/3', 'nosuch/4'" in message
    assert "'nosuch/5'" not in message and f"review set {mine.review_set}" in message
    # the same records drawn again (same seed): another export, whose mark the file does not carry
    review.export_review(ref_run, n=15, seed=1, out=tmp_path / "b")
    filled = tmp_path / "filled.csv"
    write_csv(filled, rows)
    with pytest.raises(
        review.ReviewError, match=rf"written by another export \(review set {mine.review_set}\)"
    ):
        review.import_review(ref_run, filled, export=tmp_path / "b" / "export.json")
    # a file of another run, against this run's export, and that run's export named for this run
    review.export_review(calibrated_run, n=5, out=tmp_path / "c")
    with pytest.raises(review.ReviewError, match="written by another export"):
        review.import_review(ref_run, tmp_path / "c" / "review.csv", export=export)
    with pytest.raises(review.ReviewError, match=f"the export of run {calibrated_run}, not of this run"):
        review.import_review(ref_run, filled, export=tmp_path / "c" / "export.json")
    # a few unknown or repeated rows among known ones: counted, named, not compared
    extra = [*rows[:12], {**rows[0]}, {**rows[1], "id": "nosuch/9", "review_set": ""}]
    write_csv(filled, extra)
    result = review.import_review(ref_run, filled, resamples=20, export=export)
    assert result["not_compared"] == {"duplicate_id": 1, "not_in_export": 1}
    assert result["examples"]["not_in_export"] == ["filled.csv row 15 (id nosuch/9)"]
    assert result["n"] == 12 and result["rows"] == 14 and result["not_in_file"] == 3
    assert any("The file lacks 3 of the export's 15 rows" in line for line in review.summary_lines(result))


def test_section_shows_the_agreement(ref_run, tmp_path):
    cfg = config.load(ref_run / "config.yaml")
    ctx = QualityContext(cfg, tmp_path, ref_run / "merge" / "dataset", "pairs", [], [], [])
    agreement = ref_run / "review" / "agreement.json"
    agreement.unlink(missing_ok=True)
    assert review.section(ctx) is None
    review.export_review(ref_run, n=200, out=tmp_path)  # every record: weights 1, the counts are exact
    rows = read_csv(tmp_path / "review.csv")
    for r in rows:
        r["human_verdict"] = "好" if k_of(r) % 6 in (0, 1, 2) else "差"
    filled = tmp_path / "f.csv"
    write_csv(filled, rows)
    result = review.import_review(ref_run, filled, resamples=200, export=tmp_path / "export.json")
    s = review.section(ctx)
    assert s.key == "human_agreement" and s.title == "Human agreement"
    pop = population()
    assert s.tables[0].header == ["", "human 好", "human 差"]
    assert s.tables[0].rows == [
        ["judge 好 (kept)", f"{pop['tp']} (≈{pop['tp']} records)", f"{pop['fp']} (≈{pop['fp']} records)"],
        ["judge 差 (rejected)", f"{pop['fn']} (≈{pop['fn']} records)", f"{pop['tn']} (≈{pop['tn']} records)"],
    ]
    n = sum(pop.values())
    p_o = (pop["tp"] + pop["tn"]) / n
    p_e = (
        (pop["tp"] + pop["fp"]) * (pop["tp"] + pop["fn"]) + (pop["fn"] + pop["tn"]) * (pop["fp"] + pop["tn"])
    ) / n**2
    kappa = (p_o - p_e) / (1 - p_e)
    assert s.data["file"] == "f.csv" and result["weighted"] and s.data["current"] is True
    (card,) = s.card
    assert card.startswith(f"Human agreement (point stage, n = {n}): Cohen's kappa {kappa:.2f} (95% CI ")
    assert "precision of 【好】 1.00" in card and str(tmp_path) not in card and "earlier state" not in card
    assert not any("earlier state" in line for line in s.lines)
    assert any(
        "Cohen's kappa" in line and "estimates for the stage's whole output" in line for line in s.lines
    )
    agreement.unlink()


def test_dataset_review_leads_with_precision_and_goes_stale_after_a_remerge(text_run, tmp_path):
    cfg = config.load(text_run / "config.yaml")
    ctx = QualityContext(cfg, tmp_path, text_run / "merge" / "dataset", "text", [], [], [])
    assert cli.main(["review", "export", str(text_run), "--stage", "dataset", "-n", "200"]) == 0  # all 102
    rows = read_csv(text_run / "review" / "review.csv")
    for r in rows:
        r["human_verdict"] = "差" if int(re.match(r"第(\d+)号", r["text"]).group(1)) % 3 == 0 else "好"
    filled = text_run / "review" / "filled.csv"
    write_csv(filled, rows)
    result = review.import_review(text_run, filled, resamples=300)
    good = sum(k % 3 != 0 for ks in CORPORA.values() for k in ks)  # 68 of 102
    assert result["precision"] == pytest.approx(good / 102)
    s = review.section(ctx)
    (card,) = s.card
    m = re.fullmatch(
        r"Human agreement \(dataset stage, n = 102\): precision of 【好】 0\.67 "
        r"\(95% CI (\d\.\d\d)–(\d\.\d\d)\) "
        r"\(the share of the dataset's records people call good\)\.",
        card,
    )
    assert m and float(m[1]) < good / 102 < float(m[2]), card
    assert "kappa" not in card and "-0.00" not in card and "-0.00" not in "".join(s.lines)
    assert s.lines[1].startswith(
        "Precision of 【好】 (the share of the dataset's records people call good) 0.667"
    )
    assert s.data["current"] is True
    # a re-merge that drops one record: the benchmark question is a single 13-gram (punctuation aside), and
    # only record 97 holds "第97号": the review is now of an earlier state
    bench = text_run / "bench.jsonl"
    bench.write_bytes(orjson.dumps({"question": "第97号：这是关于gamma", "answer": "-"}))
    assert cli.main(["merge", str(text_run), f"merge.decontaminate.benchmarks=[{bench}]"]) == 0
    stale = review.section(ctx)
    why = "the merged dataset changed since the export of"
    assert (
        stale.data["current"] is False
        and why in stale.data["stale"]
        and "(102 records then, 101 now)" in stale.data["stale"]
    )
    assert stale.card[0].startswith(
        f"Human agreement (dataset stage, n = 102), reviewed on an earlier state of the dataset ({why}"
    )
    assert stale.lines[0].startswith("**Reviewed on an earlier state of the dataset**: " + why)
    assert stale.card[0].endswith(card.split(": ", 1)[1])  # the numbers themselves are those of the review
