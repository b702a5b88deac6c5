"""The merge report as a person reads it, checked in headless Chromium, and the dataset card.

One real small run (the bundled sample through the test stages ``Tag``, which rejects odd-length texts, and
``Synth``, which makes pairs; raw dedup; a planted benchmark so that the merge decontaminates) merged with an
extra quality Section registered. Every number the tests compare with is counted here from the run's
shards, never read from the report.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import orjson
import pytest
import yaml

from kun_hpc import cli
from kun_hpc.io.shards import ZstdJsonlWriter, iter_shard_lines, list_shards, read_shard
from kun_hpc.quality import plots
from kun_hpc.quality import report as quality_report
from kun_hpc.quality.section import QualityContext, Section, Table
from kun_hpc.report import Step, keep_percent, size_category, step_samples, strip_local_paths
from tests.conftest import REPO, sample_overrides

CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver (make test installs it)
STAGES = "pipeline.stages=[tests.stages_for_tests:Tag,tests.stages_for_tests:Synth]"
NOT_KEPT = {"rejected", "quarantine", "_work", "_index"}  # folders beside a step's kept shards
ESCAPED = "<b>not bold</b> & <script>x</script>"


def fake_section(ctx: QualityContext) -> Section:
    """A measure with a plot, a table whose cell must be shown as text, and a card line."""
    steps = [r["step"] for r in ctx.funnel]
    name = plots.bar_chart(ctx.folder / "fake.png", steps, {"out": [r["out"] for r in ctx.funnel]}, "fake")
    table = Table(["what", "value"], [["markup", ESCAPED], ["steps", str(len(steps))]], "fake table")
    return Section("fake", "Fake measure", {"steps": len(steps)}, ["A `fake` line."], [table], [name],
                   card=["- fake card line"])  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report")
    extra = (
        "executor.kind=inline",
        "shard.records_per_shard=400",
        STAGES,
        "dedup.raw=true",
        "merge.auto=false",
    )
    assert cli.main(["run", *sample_overrides(run, *extra)]) == 0
    # a benchmark (C-Eval layout) whose question is the start of one pair that reaches the merge
    pair = next(read_shard(list_shards(run / "stages" / "synth" / "wudao")[0]))
    bench = run.parent / f"{run.name}-bench" / "val.csv"
    bench.parent.mkdir()
    bench.write_text(f"id,question,A,B,C,D,answer\n0,{pair['answer'][:30]},a,b,c,d,A\n", encoding="utf-8")
    real = quality_report.sections
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quality_report, "sections", lambda ctx: [*real(ctx), fake_section(ctx)])
        assert cli.main(["merge", str(run), f"merge.decontaminate.benchmarks=[{bench}]"]) == 0
    return run


def kept_files(root: Path) -> list[Path]:
    return [p for p in list_shards(root) if not NOT_KEPT & set(p.relative_to(root).parts)]


def lines(files: list[Path]) -> int:
    return sum(1 for p in files for _ in iter_shard_lines(p))


def expected_funnel(run: Path) -> list[tuple[str, int, int]]:
    """(step, in, out) of every step, counted from the files each step wrote."""
    quarantined = lines([p for p in (run / "shards").glob("*/quarantine/*") if p.is_file()])
    shards = lines(kept_files(run / "shards"))
    roots = [("dedup-raw", run / "dedup_raw"), ("tag", run / "stages" / "tag"),
             ("synth", run / "stages" / "synth"), ("merge-decontaminate", run / "merge" / "decontaminate"),
             ("merge-dedup-instruction", run / "merge" / "dedup-instruction")]  # fmt: skip
    rows, before = [("shard", shards + quarantined, shards)], shards
    for step, root in roots:
        out = lines(kept_files(root))
        assert before == out + lines(list_shards(root / "rejected")) + lines(list_shards(root / "quarantine"))
        rows.append((step, before, out))
        before = out
    dataset = lines(list_shards(run / "merge" / "dataset" / "jsonl"))
    return [*rows, ("dataset", dataset, dataset)]


# ------------------------------------------------------------------------------------------------ browser
@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMEDRIVER).is_file(), (
        f"{CHROMEDRIVER} is missing: apt-get install chromium chromium-driver (`make test` does)"
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(run, browser, tmp_path_factory):
    """report.html copied alone into an empty folder (it must not need the PNG files beside it), opened."""
    alone = tmp_path_factory.mktemp("alone") / "report.html"
    shutil.copyfile(run / "merge" / "report" / "report.html", alone)
    browser.get(alone.as_uri())
    return browser


def table(page, anchor: str) -> list[list[str]]:
    """The cells of the table with id ``anchor`` as the browser shows them, header row first."""
    rows = page.execute_script(
        "const t = document.getElementById(arguments[0]); if (!t) return null;"
        "return Array.from(t.querySelectorAll('tr')).map(r => Array.from(r.cells).map(c => c.textContent));",
        anchor,
    )
    assert rows is not None, f"no table #{anchor} in the report"
    return rows


@pytest.mark.slow
def test_every_image_loads_from_the_html_file_alone(run, page):
    images = page.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.src.slice(0, 22)])"
    )
    # every plot the report wrote beside report.md is embedded: its own, the fake section's, the measures'
    pngs = sorted(p.name for p in (run / "merge" / "report").glob("*.png"))
    assert {"fake.png", "funnel.png", "lengths.png", "scores.png", "diversity_sunburst.png"} <= set(pngs)
    assert sorted(alt for alt, *_ in images) == pngs
    for alt, complete, width, src in images:
        assert complete and width > 0, alt
        assert src == "data:image/png;base64,", alt


@pytest.mark.slow
def test_the_funnel_table_counts_the_records(run, page):
    shown = table(page, "funnel-table")
    assert shown[0] == ["step", "in", "out", "keep %", "rejected + quarantined by reason"]
    got = [(r[0], int(r[1].replace(",", "")), int(r[2].replace(",", "")), r[3]) for r in shown[1:]]
    want = [(s, i, o, f"{100 * o / i:.1f}%") for s, i, o in expected_funnel(run)]
    assert got == want
    steps = [s for s, *_ in want]
    assert steps.index("synth") < steps.index("merge-decontaminate") < steps.index("merge-dedup-instruction")
    decontaminate = dict((r[0], r) for r in shown[1:])["merge-decontaminate"]
    assert re.fullmatch(r"contaminated=[1-9][\d,]*", decontaminate[4])


@pytest.mark.slow
def test_every_table_is_there(run, page):
    corpora = sorted(p.name for p in (run / "shards").iterdir() if p.is_dir())
    assert table(page, "by-corpus-table")[0] == ["step", *corpora]
    assert [r[0] for r in table(page, "dedup-table")[1:]] == ["dedup-raw", "merge-dedup-instruction"]
    fake = table(page, "quality-fake-0")
    assert fake[1] == ["markup", ESCAPED]  # shown as text: escaped, not parsed
    assert page.execute_script("return document.querySelectorAll('#quality-fake-0 b, script').length") == 0
    toc = page.execute_script("return Array.from(document.querySelectorAll('nav a')).map(a => a.hash)")
    for anchor in toc:
        assert page.execute_script("return document.getElementById(arguments[0]) !== null", anchor[1:]), (
            anchor
        )
    assert "#quality-fake" in toc and "#samples-tag" in toc


@pytest.mark.slow
def test_samples_are_records_of_their_step_and_reason(run, page):
    n = 3  # merge.quality.samples_per_reason's default
    tag = run / "stages" / "tag"
    rejected = [r for p in list_shards(tag / "rejected") for r in read_shard(p)]
    odd = {r["id"] for r in rejected if r["reject"]["reason"] == "odd_length"}
    kept = {r["id"] for p in kept_files(tag) for r in read_shard(p)}
    for anchor, ids in (("samples-tag-odd-length", odd), ("samples-tag-kept", kept)):
        rows = table(page, anchor)
        assert rows[0][0] == "id" and len(rows[1:]) == min(n, len(ids)), anchor
        assert {r[0] for r in rows[1:]} <= ids, anchor
    contaminated = [
        r for p in list_shards(run / "merge" / "decontaminate" / "rejected") for r in read_shard(p)
    ]
    rows = table(page, "samples-merge-decontaminate-contaminated")
    assert {r[0] for r in rows[1:]} <= {r["id"] for r in contaminated} and len(rows) > 1
    detail = rows[0].index("detail")
    assert all("val.csv line 2" in r[detail] for r in rows[1:])  # the benchmark by name, no local path


# --------------------------------------------------------------------------------------------------- card
def card_of(run: Path) -> tuple[dict, str]:
    text = (run / "merge" / "dataset" / "README.md").read_text(encoding="utf-8")
    _, header, _ = text.split("---\n", 2)
    return yaml.safe_load(header), text


@pytest.mark.slow
def test_the_card_header_has_the_hub_keys(run):
    header, _ = card_of(run)
    rows = lines(list_shards(run / "merge" / "dataset" / "jsonl"))
    assert 1_000 <= rows < 10_000
    assert header["language"] == ["zh"]
    assert header["task_categories"] == ["text-generation", "question-answering"]
    assert header["size_categories"] == ["1K<n<10K"]
    assert header["license"] == "other" and isinstance(header["pretty_name"], str)
    assert header["configs"][0]["data_files"][0]["path"] == "parquet/*.parquet"


@pytest.mark.slow
def test_the_card_cites_kun_and_humpback_and_summarises_quality(run):
    _, text = card_of(run)
    assert "Kun: Answer Polishment for Chinese Self-Alignment with Instruction Back-Translation" in text
    assert "2401.06477" in text and "Self-Alignment with Instruction Backtranslation" in text
    assert "2308.06259" in text
    summary = text.split("## Quality summary", 1)[1].split("\n## ", 1)[0]
    assert "### Fake measure" in summary and "- fake card line" in summary


@pytest.mark.slow
def test_the_card_shows_no_local_path_and_links_inside_the_dataset(run):
    _, text = card_of(run)
    for local in {str(run), str(run.resolve()), str(REPO), str(Path.home())}:
        assert local not in text, local
    dataset = (run / "merge" / "dataset").resolve()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert "report/report.md" in links and "report/report.html" in links
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target = (dataset / link).resolve()
        assert target.is_file() and target.is_relative_to(dataset), link
    report_md = (dataset / "report" / "report.md").read_text(encoding="utf-8")
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", report_md):
        assert (dataset / "report" / image).is_file(), image


@pytest.mark.slow
def test_report_json_holds_the_sections_data(run):
    report = orjson.loads((run / "merge" / "report" / "report.json").read_bytes())
    assert report["quality"]["fake"] == {"steps": len(expected_funnel(run))}


# ---------------------------------------------------------------------------------------------- pieces
def test_samples_read_only_the_lines_they_need(tmp_path):
    """Kept: the first record of each corpus's first non-empty shard; rejected: n per reason. A line past
    what is needed is not JSON, and a shard whose marker counts nothing still missing does not exist: reading
    either would raise."""
    root = tmp_path / "stage"
    long = "长" * 200

    def shard(path: Path, records: list[dict], tail: bytes = b"") -> str:
        w = ZstdJsonlWriter(path)
        for r in records:
            w.write(r)
        if tail:
            w.write_line(tail)
        w.close()
        return str(path)

    def rec(i: str, reason: str = "") -> dict:
        reject = {"reason": reason, "detail": f"see {tmp_path}/x/rules.txt"} if reason else None
        return {"id": i, "corpus": i[:2], "text": long, **({"reject": reject} if reject else {})}

    a = shard(root / "c1" / "part-00000.jsonl.zst", [rec("c1/k0")], b"not json\n")
    shard(root / "rejected" / "c1" / "part-00000.jsonl.zst", [rec("c1/r0", "x"), rec("c1/r1", "x")], b"{\n")
    b = shard(root / "c2" / "part-00000.jsonl.zst", [rec("c2/k0")])
    shard(root / "rejected" / "c2" / "part-00000.jsonl.zst", [rec("c2/r0", "y")])
    entries = [
        {"output": a, "out": 2, "rejected": {"x": 5}},
        {"output": b, "out": 1, "rejected": {"y": 1}},
        {"output": str(root / "c3" / "part-00000.jsonl.zst"), "out": 0, "rejected": {"x": 3}},  # not on disk
    ]
    got = step_samples(Step("s", root, [{"shards": entries}], 1, samples_kept=True), 2)
    assert [r["id"] for r in got["kept"]] == ["c1/k0", "c2/k0"]
    assert {k: [r["id"] for r in v] for k, v in got["rejected"].items()} == {
        "x": ["c1/r0", "c1/r1"],
        "y": ["c2/r0"],
    }
    row = got["rejected"]["x"][0]
    assert row["text"] == "长" * 120 + " … [+80 chars]"
    assert row["detail"] == "see rules.txt"


def test_local_paths_keep_their_last_part_only():
    assert strip_local_paths("see /data/corpora/NOTICE.") == "see NOTICE."
    assert strip_local_paths('{"b": ["/srv/bench/ceval/val.csv", "~/m/q"]}') == '{"b": ["val.csv", "q"]}'
    for same in ("a/b/c", "1/2", "and/or", "</b>", "https://arxiv.org/abs/2401.06477", "CC 4.0 / CC 3.0"):
        assert strip_local_paths(same) == same


def test_size_categories_and_keep_percent():
    assert [size_category(n) for n in (0, 999, 1000, 9_999, 10_000, 10**12)] == [
        "n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "n>1T"]  # fmt: skip
    assert keep_percent({"in": 3, "out": 2}) == "66.7%" and keep_percent({"in": 0, "out": 0}) == "-"
