"""Native readers against the real sample corpora and against files built to break them."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import tracemalloc

import pytest
import zstandard

from kun_hpc.io.quarantine import Bad
from kun_hpc.io.readers import InputPiece, content_id, expand_paths, fields_for, plan_pieces, read_piece

MB = 2**20


def read_all(paths, corpus, fmt, *, split_bytes=1 << 40, max_record_bytes=16 * MB, **fields):
    files = expand_paths([str(p) for p in paths], fmt)
    recs, bad = [], []
    for piece in plan_pieces(files, fmt, split_bytes):
        for item in read_piece(piece, corpus, fmt, fields_for(fmt, **fields), max_record_bytes):
            (recs if isinstance(item, dict) else bad).append(item)
    return recs, bad


# ------------------------------------------------------------------------------------------ real layouts
def test_wudao_reads_every_array_item_with_native_ids_and_metadata(sample):
    recs, bad = read_all([sample / "wudao"], "wudao", "wudao")
    expected = [o for f in sorted((sample / "wudao").glob("*.json")) for o in json.loads(f.read_text())]
    assert bad == []
    assert len(recs) == len(expected) == 1300
    for r, o in zip(recs, expected, strict=True):
        assert r["id"] == f"wudao/{o['id']}"
        assert r["text"] == o["content"]
        meta = r.get("meta", {})
        assert meta.get("title", "") == o["title"]  # empty native fields are not kept
        assert meta.get("dataType", "") == o["dataType"]


def test_wanjuan_reads_the_jsonl_inside_each_tar(sample):
    recs, bad = read_all([sample / "wanjuan"], "wanjuan", "wanjuan")
    expected = []
    for f in sorted((sample / "wanjuan").glob("*.tar.gz")):
        with tarfile.open(f) as tar:
            for m in tar.getmembers():
                expected += [json.loads(line) for line in tar.extractfile(m).read().splitlines() if line]
    assert bad == []
    assert [r["id"] for r in recs] == [f"wanjuan/{o['id']}" for o in expected]
    assert [r["text"] for r in recs] == [o["content"] for o in expected]
    assert len(recs) == 1200


def test_skypile_ids_are_content_hashes_and_stable(sample):
    recs, bad = read_all([sample / "skypile"], "skypile", "skypile")
    lines = (sample / "skypile" / "2020-40_zh_head_0000.jsonl").read_text().splitlines()
    assert bad == [] and len(recs) == len(lines) == 1004
    assert [r["text"] for r in recs] == [json.loads(line)["text"] for line in lines]
    assert all(r["id"] == content_id("skypile", r["text"]) for r in recs)
    again, _ = read_all([sample / "skypile"], "skypile", "skypile")
    assert [r["id"] for r in again] == [r["id"] for r in recs]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_generic_jsonl_with_configured_fields(tmp_path, sample, suffix):
    src = json.loads((sample / "wudao" / "part-0001.json").read_text())
    body = "".join(
        json.dumps({"doc": o["id"], "body": o["content"], "title": o["title"]}, ensure_ascii=False) + "\n"
        for o in src
    ).encode()
    path = tmp_path / f"docs{suffix}"
    path.write_bytes(
        {
            ".jsonl": body,
            ".jsonl.gz": gzip.compress(body),
            ".jsonl.zst": zstandard.ZstdCompressor().compress(body),
        }[suffix]
    )
    recs, bad = read_all([path], "mine", "jsonl", text_field="body", id_field="doc", meta_fields=("title",))
    assert bad == []
    assert [r["id"] for r in recs] == [f"mine/{o['id']}" for o in src]
    assert [r["meta"]["title"] for r in recs] == [o["title"] for o in src]
    assert recs[0]["src"] == f"docs{suffix}:line 1"


@pytest.mark.parametrize("compress", [False, True])
def test_a_big_file_split_into_pieces_reads_each_line_exactly_once(tmp_path, sample, compress):
    raw = (sample / "skypile" / "2020-40_zh_head_0000.jsonl").read_bytes()
    path = tmp_path / ("big.jsonl.zst" if compress else "big.jsonl")
    path.write_bytes(zstandard.ZstdCompressor().compress(raw) if compress else raw)
    whole, _ = read_all([path], "c", "jsonl")
    files = expand_paths([str(path)], "jsonl")
    pieces = plan_pieces(files, "jsonl", split_bytes=path.stat().st_size // 7 + 1)
    assert len(pieces) == 7
    parts = [r for p in pieces for r in read_piece(p, "c", "jsonl", fields_for("jsonl"), 16 * MB)]
    assert all(isinstance(r, dict) for r in parts)
    assert sorted(r["text"] for r in parts) == sorted(r["text"] for r in whole)
    assert len(parts) == 1004


# ------------------------------------------------------------------------------------------ bad input
def reasons(bad: list[Bad]) -> list[str]:
    return [b.reason for b in bad]


def test_bad_lines_are_quarantined_with_file_position_and_reason(tmp_path):
    good = json.dumps({"text": "正常的一行"}, ensure_ascii=False).encode()
    lines = [
        good,
        b'{"text": "unterminated',  # invalid JSON
        b'{"text": "\xff\xfe bad bytes"}',  # invalid UTF-8
        b'{"title": "no text here"}',  # missing text
        b'{"text": "   "}',  # empty text
        b'{"text": 42}',  # wrong type
        b'["a", "list"]',  # not an object
        good,
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    recs, bad = read_all([path], "c", "jsonl")
    assert len(recs) == 2
    assert reasons(bad) == [
        "invalid_json",
        "invalid_utf8",
        "missing_text",
        "empty_text",
        "wrong_type",
        "wrong_type",
    ]
    assert [b.position for b in bad] == [f"line {i}" for i in range(2, 8)]
    assert all(b.source == "mixed.jsonl" for b in bad)
    assert "unterminated" in bad[0].preview
    assert "byte" in bad[1].detail


def test_wrong_id_type_is_quarantined(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text('{"id": {"x": 1}, "text": "文本"}\n{"id": 7, "text": "文本"}\n')
    recs, bad = read_all([path], "c", "jsonl", id_field="id")
    assert [r["id"] for r in recs] == ["c/7"]
    assert reasons(bad) == ["wrong_type"] and "'id'" in bad[0].detail


def test_corrupt_zstd_stream_keeps_what_came_before(tmp_path, sample):
    texts = [
        o["content"] for f in sorted((sample / "wudao").glob("*.json")) for o in json.loads(f.read_text())
    ]
    raw = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode()
    blob = bytearray(zstandard.ZstdCompressor().compress(raw))
    cut = len(blob) * 3 // 4
    blob[cut : cut + 64] = b"\0" * 64
    path = tmp_path / "broken.jsonl.zst"
    path.write_bytes(bytes(blob))
    recs, bad = read_all([path], "c", "jsonl")
    assert bad and bad[-1].reason == "corrupt_stream"
    assert bad[-1].position.startswith("after line")
    assert 0 < len(recs) < len(texts)
    assert [r["text"] for r in recs] == texts[: len(recs)]


def test_corrupt_gzip_stream(tmp_path, sample):
    raw = (sample / "skypile" / "2020-40_zh_head_0000.jsonl").read_bytes()
    blob = bytearray(gzip.compress(raw))
    blob[len(blob) // 3 : len(blob) // 3 + 200] = bytes(range(200))
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(bytes(blob))
    recs, bad = read_all([path], "c", "jsonl")
    assert reasons(bad)[-1] == "corrupt_stream"
    assert len(recs) < 1004


def test_truncated_wanjuan_tar_yields_the_lines_before_the_cut(tmp_path, sample):
    src = sorted((sample / "wanjuan").glob("*.tar.gz"))[0]
    cut = tmp_path / "part-cut.jsonl.tar.gz"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    recs, bad = read_all([cut], "wanjuan", "wanjuan")
    assert 0 < len(recs) < 600
    assert bad[-1].reason == "corrupt_stream"
    assert bad[-1].source == "part-cut.jsonl.tar.gz"


def test_wanjuan_member_that_is_not_jsonl_is_reported(tmp_path):
    path = tmp_path / "part-x.jsonl.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [("a.jsonl", '{"id": "1", "content": "内容"}\n'.encode()), ("README", b"hello")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    recs, bad = read_all([path], "w", "wanjuan")
    assert [r["id"] for r in recs] == ["w/1"]
    assert reasons(bad) == ["unexpected_member"] and bad[0].position == "README"


def test_wudao_bad_object_in_the_middle_does_not_lose_its_neighbours(tmp_path, sample):
    objs = json.loads((sample / "wudao" / "part-0000.json").read_text())[:50]
    parts = [json.dumps(o, ensure_ascii=False) for o in objs]
    parts[10] = parts[10].replace('"title": "', '"title": ', 1)  # break one object
    parts[20] = parts[20].replace('"content": "', '"content": "这段文字里有 }, {\\"id\\": 1 不是分隔 ', 1)
    path = tmp_path / "part-bad.json"
    path.write_text("[" + ", ".join(parts) + "]")
    recs, bad = read_all([path], "wudao", "wudao")
    assert reasons(bad) == ["invalid_json"]
    assert bad[0].position.startswith("byte ")
    assert [r["id"] for r in recs] == [f"wudao/{o['id']}" for i, o in enumerate(objs) if i != 10]
    assert recs[19]["text"].startswith('这段文字里有 }, {"id": 1 不是分隔')


def test_truncated_wudao_file(tmp_path, sample):
    src = sample / "wudao" / "part-0000.json"
    path = tmp_path / "part-cut.json"
    path.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    recs, bad = read_all([path], "wudao", "wudao")
    assert 0 < len(recs) < 650
    assert reasons(bad) == ["invalid_json", "corrupt_stream"]
    assert "truncated" in bad[-1].detail


def test_wudao_file_that_is_not_an_array(tmp_path):
    path = tmp_path / "part-obj.json"
    path.write_text('{"id": 1, "content": "x"}')
    recs, bad = read_all([path], "wudao", "wudao")
    assert recs == [] and reasons(bad) == ["corrupt_stream"] and "not a JSON array" in bad[0].detail


def _peak_mb(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()


def test_a_100mb_record_is_quarantined_with_bounded_memory(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"text": "before"}\n{"text": "')
        chunk = ("长" * (MB // 3)).encode()
        for _ in range(100):
            f.write(chunk)
        f.write(b'"}\n{"text": "after"}\n')
    out: list = []
    peak = _peak_mb(lambda: out.extend(read_all([path], "c", "jsonl", max_record_bytes=8 * MB)))
    recs, bad = out
    assert [r["text"] for r in recs] == ["before", "after"]
    assert reasons(bad) == ["record_too_large"] and bad[0].position == "line 2"
    assert peak < 40, f"peak traced memory {peak:.0f} MB"


def test_a_100mb_wudao_object_is_quarantined_with_bounded_memory(tmp_path):
    path = tmp_path / "part-huge.json"
    with open(path, "wb") as f:
        f.write(b'[{"id": 1, "content": "before"}, {"id": 2, "content": "')
        chunk = ("长" * (MB // 3)).encode()
        for _ in range(100):
            f.write(chunk)
        f.write(b'"}, {"id": 3, "content": "after"}]')
    out: list = []
    peak = _peak_mb(lambda: out.extend(read_all([path], "wudao", "wudao", max_record_bytes=8 * MB)))
    recs, bad = out
    assert [r["id"] for r in recs] == ["wudao/1", "wudao/3"]
    assert reasons(bad) == ["record_too_large"]
    assert peak < 40, f"peak traced memory {peak:.0f} MB"


def test_reading_a_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        expand_paths([str(tmp_path / "nothing-here*.jsonl")], "jsonl")
    with pytest.raises(FileNotFoundError):
        list(read_piece(InputPiece(str(tmp_path / "gone.jsonl")), "c", "jsonl", fields_for("jsonl"), MB))


def test_expand_paths_is_sorted_and_filters_folders_by_format(sample):
    files = expand_paths([str(sample / "wudao" / "part-000*.json"), str(sample / "wudao")], "wudao")
    assert [f.name for f in files] == ["part-0000.json", "part-0001.json"]
    with pytest.raises(FileNotFoundError, match="no wanjuan files"):
        expand_paths([str(sample / "skypile")], "wanjuan")
