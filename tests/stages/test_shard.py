"""shard and reshard end to end through the CLI, on the bundled sample and on damaged copies of it."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import orjson
import pytest

from kun_hpc import cli
from kun_hpc.core.hashing import file_sha256
from kun_hpc.io.quarantine import read_quarantine
from kun_hpc.io.shards import list_shards, read_manifest, read_shard
from kun_hpc.stages.reshard import destination
from tests.conftest import sample_overrides


def records_under(folder: Path) -> list[dict]:
    return [r for p in list_shards(folder) for r in read_shard(p)]


def multiset(records: list[dict]) -> Counter:
    return Counter(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    assert (
        cli.main(["shard", *sample_overrides(run, "executor.kind=inline", "shard.records_per_shard=300")])
        == 0
    )
    return run


def test_shard_writes_manifested_shards_that_hold_every_record(sharded):
    expected = {"wudao": 1300, "wanjuan": 1200, "skypile": 1004}
    for corpus, n in expected.items():
        out = sharded / "shards" / corpus
        m = read_manifest(out)
        assert m["records"] == m["read"] == n and m["quarantined"] == {}
        assert [s["name"] for s in m["shards"]] == [p.name for p in list_shards(out)]
        for s in m["shards"]:
            path = out / s["name"]
            assert file_sha256(path) == s["sha256"] and path.stat().st_size == s["bytes"]
            assert sum(1 for _ in read_shard(path)) == s["records"] <= 300
        recs = records_under(out)
        assert len({r["id"] for r in recs}) == n and all(r["corpus"] == corpus for r in recs)
        assert not (out / "_work").exists()
    assert (sharded / "config.yaml").exists() and (sharded / "config.sha256").exists()


@pytest.mark.slow
def test_local_executor_gives_the_same_shards_as_inline(sharded, tmp_path):
    run = tmp_path / "run"
    assert (
        cli.main(["shard", *sample_overrides(run, "executor.kind=local", "shard.records_per_shard=300")]) == 0
    )
    for corpus in ("wudao", "wanjuan", "skypile"):
        a, b = read_manifest(sharded / "shards" / corpus), read_manifest(run / "shards" / corpus)
        assert a["shards"] == b["shards"]  # names, counts and sha256


def test_rerun_with_same_config_is_a_no_op_and_a_changed_config_redoes(sharded, capsys):
    before = {p: p.stat().st_mtime_ns for p in list_shards(sharded / "shards")}
    assert (
        cli.main(["shard", *sample_overrides(sharded, "executor.kind=inline", "shard.records_per_shard=300")])
        == 0
    )
    assert capsys.readouterr().err.count("done before") == 3
    assert {p: p.stat().st_mtime_ns for p in list_shards(sharded / "shards")} == before


def test_resume_runs_only_units_without_a_marker(tmp_path):
    from kun_hpc import config
    from kun_hpc.cluster.executors import InlineExecutor
    from kun_hpc.run import drive
    from kun_hpc.stages import shard

    cfg = config.load(None, sample_overrides(tmp_path, "shard.records_per_shard=100"))
    corpus = cfg.corpora[0]
    units, _ = shard.plan_corpus(cfg, corpus)
    first = shard.shard_unit(units[0])  # as if the run was killed after one unit
    marker = Path(units[0].work) / f"{units[0].unit}.done.json"
    stamp = marker.stat().st_mtime_ns
    ran = []

    class Recording(InlineExecutor):
        def map(self, fn, units, **kw):
            ran.extend(u.unit for u in units if u.corpus == "wudao")
            return super().map(fn, units, **kw)

    reports = drive(shard.run_shard(cfg), Recording(), tmp_path / "logs")
    assert ran == [u.unit for u in units[1:]]
    assert marker.exists() is False  # the work folder is cleaned once the corpus is finalized
    assert reports[0].written == 1300 and first["records"] == 650
    assert stamp > 0


BAD_LINES = [
    b'{"text": "unterminated',
    b'{"text": "\xff\xfe"}',
    b'{"title": "x"}',
    b'{"text": ""}',
    b'{"text": ["not", "a", "string"]}',
]


def damaged_corpus(tmp_path: Path, sample: Path) -> Path:
    """A skypile folder: the real file with bad lines mixed in, plus a corrupt .zst copy."""
    import zstandard

    src = (sample / "skypile" / "2020-40_zh_head_0000.jsonl").read_bytes().splitlines()
    folder = tmp_path / "skypile-bad"
    folder.mkdir()
    mixed = []
    for i, line in enumerate(src):
        mixed.append(line)
        if i % 200 == 0:
            mixed.append(BAD_LINES[(i // 200) % len(BAD_LINES)])
    (folder / "2020-40_zh_head_0000.jsonl").write_bytes(b"\n".join(mixed) + b"\n")
    blob = bytearray(zstandard.ZstdCompressor().compress(b"\n".join(src[:300]) + b"\n"))
    blob[40:80] = b"\x00" * 40
    (folder / "2020-40_zh_head_0001.jsonl.zst").write_bytes(bytes(blob))
    return folder


def test_bad_input_is_quarantined_counted_and_accounted(tmp_path, sample, capsys):
    folder = damaged_corpus(tmp_path, sample)
    run = tmp_path / "run"
    code = cli.main(["shard", *sample_overrides(run, "executor.kind=inline", f"corpora.2.paths=[{folder}]")])
    assert code == 0  # max_bad_fraction defaults to 1.0: bad input is not fatal
    err = capsys.readouterr().err
    assert "quarantined: 2020-40_zh_head_0000.jsonl:line 2: invalid_json" in err
    m = read_manifest(run / "shards" / "skypile")
    q = [
        item
        for p in sorted((run / "shards" / "skypile" / "quarantine").glob("*.zst"))
        for item in read_quarantine(p)
    ]
    assert m["read"] == m["records"] + sum(m["quarantined"].values())
    assert Counter(i["reason"] for i in q) == Counter(m["quarantined"])
    assert set(m["quarantined"]) >= {
        "invalid_json",
        "invalid_utf8",
        "missing_text",
        "empty_text",
        "wrong_type",
        "corrupt_stream",
    }
    assert all(i["source"] and i["position"] and i["reason"] for i in q)
    assert m["records"] >= 1004  # every good line of the plain file, plus what the zst gave before the damage


def test_max_bad_fraction_makes_the_command_fail(tmp_path, sample, capsys):
    folder = damaged_corpus(tmp_path, sample)
    run = tmp_path / "run"
    args = sample_overrides(
        run, "executor.kind=inline", f"corpora.2.paths=[{folder}]", "shard.max_bad_fraction=0.001"
    )
    assert cli.main(["shard", *args]) == 3
    assert "max_bad_fraction" in capsys.readouterr().err
    assert read_manifest(run / "shards" / "skypile")["records"] > 0  # the good records are still written


def test_a_failing_unit_fails_the_command_and_a_rerun_finishes(tmp_path, monkeypatch, capsys):
    from kun_hpc.stages import shard

    real = shard.read_piece

    def flaky(piece, *args):
        if piece.path.endswith("part-000001-a894b46f.jsonl.tar.gz"):
            raise OSError("Input/output error (simulated disk fault)")
        return real(piece, *args)

    monkeypatch.setattr(shard, "read_piece", flaky)
    args = sample_overrides(tmp_path, "executor.kind=inline")
    assert cli.main(["shard", *args]) == 1
    err = capsys.readouterr().err
    assert "shard wanjuan: 1 of 2 units failed" in err and "re-run" in err and "simulated disk fault" in err
    assert not (tmp_path / "shards" / "wanjuan" / "manifest.json").exists()
    monkeypatch.setattr(shard, "read_piece", real)
    assert cli.main(["shard", *args]) == 0
    assert read_manifest(tmp_path / "shards" / "wanjuan")["records"] == 1200


# ------------------------------------------------------------------------------------------ reshard
@pytest.mark.parametrize("num_shards", [1, 7])
def test_reshard_keeps_the_multiset_and_routes_by_id(sharded, tmp_path, num_shards):
    out = tmp_path / "re"
    args = sample_overrides(
        sharded, "executor.kind=inline", f"reshard.num_shards={num_shards}", f"reshard.output={out}"
    )
    assert cli.main(["reshard", *args]) == 0
    assert multiset(records_under(out)) == multiset(records_under(sharded / "shards"))
    shards = list_shards(out)
    assert len(shards) == num_shards
    for i, p in enumerate(shards):
        assert all(destination(r["id"], num_shards) == i for r in read_shard(p))
    m = read_manifest(out)
    assert m["read"] == m["records"] == 3504


@pytest.mark.slow
def test_reshard_is_identical_whatever_the_task_count(sharded, tmp_path):
    digests = []
    for i, extra in enumerate(
        [
            "executor.kind=inline",
            "executor.kind=local executor.max_parallel=1",
            "executor.kind=local executor.max_parallel=2",
        ]
    ):
        out = tmp_path / f"re{i}"
        args = sample_overrides(
            sharded,
            *extra.split(),
            "reshard.num_shards=5",
            f"reshard.output={out}",
            "reshard.split_bytes=100000",
        )  # several pieces per input shard
        assert cli.main(["reshard", *args]) == 0
        digests.append([(p.name, file_sha256(p)) for p in list_shards(out)])
    assert digests[0] == digests[1] == digests[2]


def test_reshard_round_trip_back_to_another_count(sharded, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert (
        cli.main(
            [
                "reshard",
                *sample_overrides(
                    sharded, "executor.kind=inline", "reshard.num_shards=3", f"reshard.output={a}"
                ),
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "reshard",
                *sample_overrides(
                    sharded,
                    "executor.kind=inline",
                    "reshard.num_shards=11",
                    f"reshard.input={a}",
                    f"reshard.output={b}",
                ),
            ]
        )
        == 0
    )
    assert multiset(records_under(b)) == multiset(records_under(sharded / "shards"))
    # same destination for the same record whichever layout it came from
    direct = tmp_path / "direct"
    assert (
        cli.main(
            [
                "reshard",
                *sample_overrides(
                    sharded, "executor.kind=inline", "reshard.num_shards=11", f"reshard.output={direct}"
                ),
            ]
        )
        == 0
    )
    for p, q in zip(list_shards(b), list_shards(direct), strict=True):
        assert {r["id"] for r in read_shard(p)} == {r["id"] for r in read_shard(q)}


def test_reshard_quarantines_a_corrupt_input_shard(sharded, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(sharded / "shards" / "skypile", src)
    victim = list_shards(src)[0]
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2 :] = b"\x00" * (len(blob) - len(blob) // 2)
    victim.write_bytes(bytes(blob))
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "reshard",
                *sample_overrides(
                    sharded,
                    "executor.kind=inline",
                    f"reshard.input={src}",
                    f"reshard.output={out}",
                    "reshard.num_shards=2",
                ),
            ]
        )
        == 0
    )
    m = read_manifest(out)
    assert m["quarantined"].get("corrupt_stream") == 1
    assert m["read"] == m["records"] + 1 and m["records"] < 1004


# ------------------------------------------------------------------------------------------ issue 12
FIELD_TEXTS = [f"第{i}条。今天天气很好，我们一起去公园散步吧。" for i in range(10)]


def field_corpora(tmp_path: Path) -> dict[str, Path]:
    """Small corpora shaped like the issue 12 field reports: WuDao files behind a BOM, in the RECORDS layout
    and with native ids that repeat across files; a WanJuan member behind a BOM and one cut short; a
    SkyPile .zst cut after its 6th line (a zstd block per line) and a .gz behind a BOM."""
    import gzip
    import io
    import json
    import tarfile
    import zlib

    import zstandard

    def dumps(o) -> str:
        return json.dumps(o, ensure_ascii=False)

    wudao = tmp_path / "wudao"
    wudao.mkdir()
    objs = [{"id": i, "title": f"标题{i}", "content": FIELD_TEXTS[i]} for i in range(3)]
    (wudao / "part-0000.json").write_bytes(b"\xef\xbb\xbf" + dumps(objs).encode())
    (wudao / "part-0001.json").write_text(dumps({"RECORDS": objs}))
    (wudao / "part-0002.json").write_text(dumps([{**o, "uniqueKey": f"uk{o['id']}"} for o in objs]))

    wanjuan = tmp_path / "wanjuan"
    wanjuan.mkdir()
    lines = [(dumps({"id": f"a{i}", "content": FIELD_TEXTS[i]}) + "\n").encode() for i in range(3)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("a.jsonl")
        info.size = 3 + len(b"".join(lines))
        tar.addfile(info, io.BytesIO(b"\xef\xbb\xbf" + b"".join(lines)))
    (wanjuan / "part-000000.jsonl.tar.gz").write_bytes(buf.getvalue())
    lines = [(dumps({"id": f"b{i}", "content": FIELD_TEXTS[i]}) + "\n").encode() for i in range(4)]
    header = tarfile.TarInfo("b.jsonl")
    header.size = len(b"".join(lines))
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    cut = c.compress(header.tobuf() + b"".join(lines[:2])) + c.flush(zlib.Z_FULL_FLUSH)  # then the file ends
    (wanjuan / "part-000001.jsonl.tar.gz").write_bytes(cut)

    skypile = tmp_path / "skypile"
    skypile.mkdir()
    out, ends = io.BytesIO(), []
    with zstandard.ZstdCompressor(write_content_size=False).stream_writer(out, closefd=False) as w:
        for t in FIELD_TEXTS:
            w.write((dumps({"text": t}) + "\n").encode())
            w.flush(zstandard.FLUSH_BLOCK)
            ends.append(out.tell())
    (skypile / "cut.jsonl.zst").write_bytes(out.getvalue()[: ends[5]])
    body = "".join(dumps({"text": t + "另一篇。"}) + "\n" for t in FIELD_TEXTS[:2])
    (skypile / "bom.jsonl.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + body.encode()))
    return {"wudao": wudao, "wanjuan": wanjuan, "skypile": skypile}


def test_field_inputs_are_read_whole_with_unique_ids_and_exact_damage(tmp_path):
    folders = field_corpora(tmp_path)
    run = tmp_path / "run"
    args = [f"run.dir={run}", "executor.kind=inline"]
    args += [f"corpora.{i}.paths=[{folders[c]}]" for i, c in enumerate(("wudao", "wanjuan", "skypile"))]
    assert cli.main(["shard", *args]) == 0
    expected = {
        "wudao": (9, {}, []),
        "wanjuan": (6, {"corrupt_stream": 1}, [("part-000001.jsonl.tar.gz", "after b.jsonl:line 2")]),
        "skypile": (9, {"corrupt_stream": 1}, [("cut.jsonl.zst", "after line 6")]),
    }
    ids = []
    for corpus, (read, quarantined, where) in expected.items():
        out = run / "shards" / corpus
        m = read_manifest(out)
        assert (m["read"], m["quarantined"]) == (read, quarantined), corpus
        assert m["read"] == m["records"] + sum(m["quarantined"].values())
        q = [item for p in sorted((out / "quarantine").glob("*.zst")) for item in read_quarantine(p)]
        assert [(i["source"], i["position"]) for i in q] == where
        ids += [r["id"] for r in records_under(out)]
    assert len(ids) == len(set(ids)) == 9 + 5 + 8  # the dataset's id column is a key
    wudao_ids = sorted(r["id"] for r in records_under(run / "shards" / "wudao"))
    assert wudao_ids == sorted(
        [f"wudao/part-000{f}.json:{i}" for f in (0, 1) for i in range(3)] + [f"wudao/uk{i}" for i in range(3)]
    )
    texts = sorted(r["text"] for r in records_under(run / "shards" / "skypile"))
    assert texts == sorted(FIELD_TEXTS[:6] + [t + "另一篇。" for t in FIELD_TEXTS[:2]])  # byte-exact


# ------------------------------------------------------------------ a corpus that yields nothing (issue 16)
def renamed_copy(sample: Path, fmt: str, folder: Path, old: str, new: str) -> Path:
    """The bundled sample of ``fmt`` (a skypile file for jsonl) with the field ``old`` renamed ``new`` in
    every record, in the format's own layout."""
    import io
    import json
    import tarfile

    def rename(obj: dict) -> dict:
        return {(new if k == old else k): v for k, v in obj.items()}

    def jsonl(data: bytes) -> bytes:
        return b"".join(orjson.dumps(rename(orjson.loads(x))) + b"\n" for x in data.splitlines() if x.strip())

    folder.mkdir()
    if fmt == "wudao":
        for src in sorted((sample / "wudao").glob("*.json")):
            objs = json.loads(src.read_text(encoding="utf-8"))
            (folder / src.name).write_text(json.dumps([rename(o) for o in objs], ensure_ascii=False), "utf-8")
    elif fmt == "wanjuan":
        for src in sorted((sample / "wanjuan").glob("*.tar.gz")):
            with tarfile.open(src) as tin, tarfile.open(folder / src.name, "w:gz") as tout:
                for member in tin.getmembers():
                    data = jsonl(tin.extractfile(member).read())
                    member.size = len(data)
                    tout.addfile(member, io.BytesIO(data))
    else:
        src = next((sample / "skypile").glob("*.jsonl"))
        (folder / src.name).write_bytes(jsonl(src.read_bytes()))
    return folder


NOTHING_CASES = {
    # format, field renamed (old -> new), extra corpus keys: what the message must name
    "jsonl-content": ("jsonl", ("text", "content"), "", "set corpora.0.text_field (now 'text')",
                      "corpora.0.text_field=content"),
    "jsonl-id": ("jsonl", ("text", "text"), ", id_field: meta", "set corpora.0.id_field (now 'meta')", ""),
    "skypile": ("skypile", ("text", "content"), "", "the skypile format reads the text from 'text'",
                "set corpora.0.format (jsonl: JSON Lines, any corpora.0.text_field, "
                "corpora.0.text_field=content)"),
    "wudao": ("wudao", ("content", "body"), "", "the wudao format reads the text from 'content'",
              "corpora.0.text_field=body"),
    "wanjuan": ("wanjuan", ("content", "body"), "", "the wanjuan format reads the text from 'content'",
                "corpora.0.text_field=body"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(NOTHING_CASES))
def test_a_corpus_that_yields_nothing_fails_at_once_naming_its_fields_and_the_key(
    tmp_path, sample, case, capsys
):
    fmt, (old, new), extra, key, hint = NOTHING_CASES[case]
    folder = renamed_copy(sample, "skypile" if fmt == "jsonl" else fmt, tmp_path / "in", old, new)
    if case == "jsonl-id":  # every record's 'meta' a JSON object, so no record has a usable id
        for f in folder.iterdir():
            lines = f.read_bytes().splitlines()
            f.write_bytes(
                b"".join(orjson.dumps({**orjson.loads(x), "meta": {"a": 1}}) + b"\n" for x in lines)
            )
    run = tmp_path / "run"
    corpora = (
        f"corpora=[{{name: bad, format: {fmt}, paths: [{folder}]{extra}}}, "
        f"{{name: good, format: skypile, paths: [{sample / 'skypile'}]}}]"
    )
    assert cli.main(["shard", f"run.dir={run}", "executor.kind=inline", corpora]) == 3
    err = capsys.readouterr().err
    m = read_manifest(run / "shards" / "bad")
    assert m["records"] == 0 and m["read"] == sum(m["quarantined"].values()) > 0
    assert f"kun-hpc: shard bad: corpus corpora.0 yields no records: all {m['read']:,} input items" in err
    assert "  quarantined: " in err
    assert key in err and hint in err
    first = (
        orjson.loads(next(folder.iterdir()).read_bytes().splitlines()[0])
        if fmt in ("jsonl", "skypile")
        else {}
    )
    fields = err.split("the first ones of each file): ")[1].splitlines()[0]
    assert new in fields and all(k in fields for k in first)
    assert not (run / "shards" / "good").exists()  # failed at once: the next corpus was not sharded


def test_a_jsonl_file_of_another_layout_names_the_format_key(tmp_path, sample, capsys):
    """A WuDao array given as JSON Lines: no field to name, the format to check."""
    run = tmp_path / "run"
    corpora = f"corpora=[{{name: x, format: jsonl, paths: [{sample / 'wudao' / 'part-0000.json'}]}}]"
    assert cli.main(["shard", f"run.dir={run}", "executor.kind=inline", corpora]) == 3
    err = capsys.readouterr().err
    assert "these files are not jsonl input: check corpora.0.format (now 'jsonl') and corpora.0.paths" in err
    assert "part-0000.json:line 1: wrong_type (expected a JSON object, got list)" in err


def test_a_run_on_a_corpus_that_yields_nothing_stops_before_any_stage(tmp_path, sample, capsys):
    folder = renamed_copy(sample, "skypile", tmp_path / "in", "text", "content")
    run = tmp_path / "run"
    args = [
        f"run.dir={run}",
        "executor.kind=inline",
        "pipeline.stages=[tests.stages_for_tests:Tag]",
        f"corpora=[{{name: mine, format: jsonl, paths: [{folder}]}}]",
    ]
    assert cli.main(["run", *args]) == 3
    err = capsys.readouterr().err
    assert "set corpora.0.text_field (now 'text') to the field that holds the text" in err
    assert "merge" not in err.split("yields no records")[1]  # no false "run 'kun-hpc run' first"
    assert not (run / "stages").exists() and not (run / "done").exists() and not (run / "merge").exists()
    # a re-run finds the same manifest and fails the same way, at once
    assert cli.main(["run", *args]) == 3
    assert "corpus corpora.0 yields no records" in capsys.readouterr().err
    # and status says where the run stopped and why, though no unit ran
    assert cli.main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "stopped at the shard step (exit 3): shard mine: corpus corpora.0 yields no records" in out
    assert "set corpora.0.text_field (now 'text')" in out


@pytest.mark.slow
def test_the_first_quarantine_messages_of_each_corpus_reach_the_console_from_local_workers(
    tmp_path, sample, capsys
):
    folder = damaged_corpus(tmp_path, sample)
    run = tmp_path / "run"
    args = sample_overrides(run, "executor.kind=local", f"corpora.2.paths=[{folder}]")
    assert cli.main(["shard", *args]) == 0
    err = capsys.readouterr().err
    q = [
        item
        for p in sorted((run / "shards" / "skypile" / "quarantine").glob("*.zst"))
        for item in read_quarantine(p)
    ]
    shown = [line for line in err.splitlines() if line.startswith("quarantined: ")]
    expected = [f"quarantined: {i['source']}:{i['position']}: {i['reason']} ({i['detail']})" for i in q[:5]]
    assert shown == expected  # wudao and wanjuan quarantine nothing
    folder = run / "shards" / "skypile" / "quarantine"
    assert f"shard skypile: {len(q) - 5:,} more quarantined; all are in {folder}" in err
