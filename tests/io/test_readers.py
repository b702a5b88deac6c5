"""Native readers against the real sample corpora and against files built to break them."""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
import tracemalloc
import zlib

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
    assert len({r["id"] for r in recs}) == 1300  # native ids repeat across the files; uniqueKey does not
    for r, o in zip(recs, expected, strict=True):
        assert r["id"] == f"wudao/{o['uniqueKey']}"
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
    assert [r["id"] for r in recs] == [f"wudao/{o['uniqueKey']}" for i, o in enumerate(objs) if i != 10]
    assert recs[19]["text"].startswith('这段文字里有 }, {"id": 1 不是分隔')


def test_truncated_wudao_file(tmp_path, sample):
    """Cut mid-object: every whole object before the cut is kept, the cut one is the damage itself (one
    corrupt_stream, as a cut JSONL line); cut right after an object, that object is whole and kept."""
    data = (sample / "wudao" / "part-0000.json").read_bytes()
    objs = json.loads(data)
    ends = [m.end() for m in re.finditer(rb"\}(?=\s*,\s*\{\s*\"id\"|\s*\]\s*$)", data)]
    assert len(ends) == len(objs)  # where each object ends, found independently of the reader
    for cut in (len(data) // 2, ends[40], ends[40] + 1, ends[40] - 1):
        path = tmp_path / "part-cut.json"
        path.write_bytes(data[:cut])
        recs, bad = read_all([path], "wudao", "wudao")
        whole = sum(1 for e in ends if e <= cut)
        assert [r["text"] for r in recs] == [o["content"] for o in objs[:whole]], cut
        assert reasons(bad) == ["corrupt_stream"] and "truncated" in bad[-1].detail


def test_wudao_file_that_is_not_an_array(tmp_path):
    path = tmp_path / "part-obj.json"
    path.write_text('{"id": 1, "content": "x"}')
    recs, bad = read_all([path], "wudao", "wudao")
    assert recs == [] and reasons(bad) == ["wrong_layout"]
    assert bad[0].detail == (
        "the file holds a JSON object with keys ['id', 'content'], not a JSON array of objects: a WuDao file "
        'is one array ([{...}, ...]), or one wrapped as {"RECORDS": [...]}'
    )


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
    assert [r["id"] for r in recs] == ["wudao/part-huge.json:1", "wudao/part-huge.json:3"]
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


# ------------------------------------------------------------------------------------------ issue 12
# Inputs taken from field bug reports, one kind per block; every expected value is computed here from how
# the test built the input (where it put a prologue, where it cut a file), not from the reader.
S3 = [
    "今天天气很好，我们一起去公园散步吧。",
    "这本书讲述了一个普通人在大城市里奋斗的故事。",
    "请把窗户关上，外面的风太大了。",
]
TEXTS = [f"第{i}条。{S3[i % 3]}" for i in range(10)]


def jsonl_bytes(objs) -> bytes:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs).encode()


def tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wudao_objs(n: int, **extra) -> list[dict]:
    return [
        {"id": i, "uniqueKey": f"k{i:04d}", "title": f"标题{i}", "content": TEXTS[i], **extra}
        for i in range(n)
    ]


def write_layout(tmp_path, layout: str, prologue: bytes, n: int = 5):
    """A file of ``layout`` holding TEXTS[:n], with ``prologue`` before its first record; returns (path,
    format, where the first record starts: its line, or for WuDao its byte offset)."""
    objs = [{"id": f"r{i}", "text": TEXTS[i]} for i in range(n)]
    body = prologue + jsonl_bytes(objs)
    if layout == "jsonl":
        path, data = tmp_path / "docs.jsonl", body
    elif layout == "jsonl.gz":
        path, data = tmp_path / "docs.jsonl.gz", gzip.compress(body)
    elif layout == "jsonl.zst":
        path, data = tmp_path / "docs.jsonl.zst", zstandard.ZstdCompressor().compress(body)
    elif layout == "wanjuan":
        objs = [{"id": f"r{i}", "content": TEXTS[i]} for i in range(n)]
        body = prologue + jsonl_bytes(objs)
        path, data = tmp_path / "part-0.jsonl.tar.gz", tar_gz([("a.jsonl", body)])
    else:  # wudao, or wudao wrapped as {"RECORDS": [...]}
        array = json.dumps(wudao_objs(n), ensure_ascii=False)
        head = prologue + (b"[" if layout == "wudao" else b'{"RECORDS": [')
        path, data = (
            tmp_path / "part-0000.json",
            head + array[1:].encode() + (b"}" if layout != "wudao" else b""),
        )
        path.write_bytes(data)
        return path, "wudao", len(head)
    path.write_bytes(data)
    return path, {"wanjuan": "wanjuan"}.get(layout, "jsonl"), prologue.count(b"\n") + 1


LAYOUTS = ["jsonl", "jsonl.gz", "jsonl.zst", "wanjuan", "wudao", "wudao-records"]
PROLOGUES = {
    "bom": b"\xef\xbb\xbf",
    "bom and blank lines": b"\xef\xbb\xbf\n \n\t",
    "blank lines": b"\n\r\n  \n",
}


@pytest.mark.parametrize("prologue", PROLOGUES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_prologue_before_the_first_record_is_skipped_by_every_reader(tmp_path, layout, prologue):
    path, fmt, first = write_layout(tmp_path, layout, PROLOGUES[prologue])
    recs, bad = read_all([path], "c", fmt, id_field="id")
    assert bad == []
    assert [r["text"] for r in recs] == TEXTS[:5]
    if fmt == "wudao":
        assert [r["id"] for r in recs] == [f"c/k{i:04d}" for i in range(5)]
        assert recs[0]["src"] == f"part-0000.json:byte {first}"
    else:
        assert [r["id"] for r in recs] == [f"c/r{i}" for i in range(5)]
        where = f"a.jsonl:line {first}" if fmt == "wanjuan" else f"line {first}"
        assert recs[0]["src"] == f"{path.name}:{where}"


ENCODINGS = [
    ("utf-16-le", "UTF-16 LE"),
    ("utf-16-be", "UTF-16 BE"),
    ("utf-32-le", "UTF-32 LE"),
    ("utf-32-be", "UTF-32 BE"),
]


@pytest.mark.parametrize("with_bom", [True, False], ids=["bom", "no-bom"])
@pytest.mark.parametrize("codec,name", ENCODINGS)
@pytest.mark.parametrize("layout", ["jsonl", "jsonl.gz", "jsonl.zst", "wanjuan", "wudao"])
def test_utf16_and_utf32_input_is_refused_once_naming_the_encoding(tmp_path, layout, codec, name, with_bom):
    path, fmt, _ = write_layout(tmp_path, layout, b"")
    text = (
        json.dumps(wudao_objs(3), ensure_ascii=False)
        if fmt == "wudao"
        else jsonl_bytes(
            [{"id": f"r{i}", ("content" if fmt == "wanjuan" else "text"): TEXTS[i]} for i in range(3)]
        ).decode()
    )
    encoded = ("\ufeff" + text if with_bom else text).encode(codec)
    data = {
        "jsonl.gz": lambda: gzip.compress(encoded),
        "jsonl.zst": lambda: zstandard.ZstdCompressor().compress(encoded),
        "wanjuan": lambda: tar_gz(
            [("a.jsonl", encoded), ("b.jsonl", jsonl_bytes([{"id": "ok", "content": "好"}]))]
        ),
    }.get(layout, lambda: encoded)()
    path.write_bytes(data)
    recs, bad = read_all([path], "c", fmt, id_field="id")
    fix = f"kun-hpc reads UTF-8 only; convert it first (iconv -f {name.replace(' ', '')} -t UTF-8)"
    if with_bom:
        detail = f"the file starts with a {name} byte order mark: {fix}"
    else:
        detail = (
            f"the file looks like {name} without a byte order mark (zero bytes among its first four): {fix}"
        )
    assert [(b.reason, b.position, b.detail) for b in bad] == [
        ("unsupported_encoding", "a.jsonl" if fmt == "wanjuan" else "byte 0", detail)
    ]
    assert [r["text"] for r in recs] == (["好"] if fmt == "wanjuan" else [])  # the next member is read


def test_a_split_file_has_its_prologue_in_piece_0_only(tmp_path):
    lines = [{"text": f"{TEXTS[i % 10]}{i}"} for i in range(300)]
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl_bytes(lines))
    recs, bad = read_all([path], "c", "jsonl", split_bytes=path.stat().st_size // 5 + 1)
    assert bad == [] and [r["text"] for r in recs] == [o["text"] for o in lines]
    path.write_bytes(jsonl_bytes(lines).decode().encode("utf-16"))  # with a BOM, as Python writes it
    pieces = plan_pieces([path], "jsonl", path.stat().st_size // 5 + 1)
    items = [i for p in pieces for i in read_piece(p, "c", "jsonl", fields_for("jsonl"), MB)]
    assert len(pieces) == 5
    assert [(b.source, b.reason) for b in items] == [("bom.jsonl[1/5]", "unsupported_encoding")]


def test_a_bom_at_the_start_of_a_later_line_is_damage_not_a_prologue(tmp_path):
    path = tmp_path / "cat.jsonl"  # two BOM-prefixed files joined with cat
    path.write_bytes(
        b"\xef\xbb\xbf"
        + jsonl_bytes([{"text": TEXTS[0]}])
        + b"\xef\xbb\xbf"
        + jsonl_bytes([{"text": TEXTS[1]}])
    )
    recs, bad = read_all([path], "c", "jsonl")
    assert [r["text"] for r in recs] == [TEXTS[0]]
    assert [(b.reason, b.position) for b in bad] == [("invalid_json", "line 2")]
    assert "byte order mark (BOM)" in bad[0].detail


def test_wudao_records_layout_is_read_like_an_array(tmp_path):
    objs = wudao_objs(10)
    path = tmp_path / "part-0000.json"
    path.write_text(json.dumps({"RECORDS": objs}, ensure_ascii=False, indent=2))  # as the tutorial prints it
    recs, bad = read_all([path], "wudao", "wudao")
    assert bad == [] and [r["text"] for r in recs] == TEXTS
    assert [r["meta"]["title"] for r in recs] == [o["title"] for o in objs]


@pytest.mark.parametrize(
    "end,kept,last",
    [
        ("]", 10, "the array is not closed (no final ']}'): the file is truncated"),  # the wrapper's } lost
        ("", 10, "the array is not closed (no final ']}'): the file is truncated"),
        ("cut", 9, "the array is not closed (no final ']}'): the file is truncated"),
    ],
)
def test_a_truncated_records_file_keeps_its_whole_objects(tmp_path, end, kept, last):
    text = json.dumps({"RECORDS": wudao_objs(10)}, ensure_ascii=False)
    assert text.endswith("}]}")
    body = text[:-2] + end if end != "cut" else text[: text.rindex('"content"')]
    path = tmp_path / "part-0000.json"
    path.write_text(body)
    recs, bad = read_all([path], "wudao", "wudao")
    assert [r["text"] for r in recs] == TEXTS[:kept]
    assert [b.reason for b in bad] == ["corrupt_stream"]  # the cut object is the damage, counted once
    assert bad[-1].detail == f"EOFError: {last}; the rest is unreadable"


BIG_DATA = '{"data": [' + ", ".join(json.dumps(o, ensure_ascii=False) for o in wudao_objs(10) * 8000) + "]}"


@pytest.mark.parametrize(
    "content,layout",
    [
        ('{"data": [{"id": 0, "content": "x"}], "total": 1}', "a JSON object with keys ['data', 'total']"),
        (BIG_DATA, "a JSON object whose first key is 'data'"),
        ('{"id": 0, "content": "一"}\n{"id": 1, "content": "二"}\n', "JSON Lines (one object per line)"),
        ("", "an empty file"),
        ("\ufeff  \n", "an empty file"),
        ('"一段文字"', "a JSON string"),
        ("-42", "a JSON number"),
        ("null", "a JSON null"),
        ("<html><body>404</body></html>", "text that starts with '<html><body>404</body></html>'"),
    ],
    ids=["small-object", "big-object", "json-lines", "empty", "bom-only", "string", "number", "null", "html"],
)
def test_other_wudao_layouts_are_refused_naming_what_was_found(tmp_path, content, layout):
    path = tmp_path / "part-0000.json"
    path.write_text(content, encoding="utf-8")
    assert len(BIG_DATA.encode()) > 2 * MB  # more than the reader looks at before it decides
    recs, bad = read_all([path], "wudao", "wudao")
    assert recs == []
    assert [(b.reason, b.position, b.detail) for b in bad] == [
        (
            "wrong_layout",
            "byte 0",
            f"the file holds {layout}, not a JSON array of objects: a WuDao file is one array "
            '([{...}, ...]), or one wrapped as {"RECORDS": [...]}',
        )
    ]


# --- kind 2: truncated and damaged compressed input
def line_objs(n: int = 10) -> list[bytes]:
    return [(json.dumps({"text": TEXTS[i % 10]}, ensure_ascii=False) + "\n").encode() for i in range(n)]


def zstd_frames(groups: list[list[bytes]], checksum: bool = False) -> tuple[bytes, list[int], list[int]]:
    """Each group one zstd frame, each line one block; (blob, end offsets of each line's block, of each
    frame)."""
    out, ends, frame_ends = io.BytesIO(), [], []
    for group in groups:
        cctx = zstandard.ZstdCompressor(write_checksum=checksum, write_content_size=False)
        with cctx.stream_writer(out, closefd=False) as w:
            for line in group:
                w.write(line)
                w.flush(zstandard.FLUSH_BLOCK)
                ends.append(out.tell())
        frame_ends.append(out.tell())
    return out.getvalue(), ends, frame_ends


def read_cut(tmp_path, name: str, blob: bytes, fmt: str = "jsonl"):
    path = tmp_path / name
    path.write_bytes(blob)
    return read_all([path], "c", fmt)


def expect_after(bad, n: int, where: str = "line"):
    assert [(b.reason, b.position) for b in bad] == [("corrupt_stream", f"after {where} {n}")]


@pytest.mark.parametrize("checksum", [False, True], ids=["no-checksum", "checksum"])
@pytest.mark.parametrize("frames", [[10], [4, 3, 3]], ids=["one-frame", "three-frames"])
def test_zstd_cut_at_every_byte_keeps_every_complete_line_and_says_where(tmp_path, frames, checksum):
    lines = line_objs()
    groups, at = [], 0
    for n in frames:
        groups.append(lines[at : at + n])
        at += n
    blob, ends, frame_ends = zstd_frames(groups, checksum)
    for cut in range(len(blob) + 1):
        recs, bad = read_cut(tmp_path, "cut.jsonl.zst", blob[:cut])
        n = sum(1 for e in ends if e <= cut)  # lines whose whole block is inside the cut
        assert [r["text"] for r in recs] == TEXTS[:n], cut
        if cut == 0 or cut in frame_ends:
            assert bad == [], cut  # nothing, or whole frames: indistinguishable from a complete file
        else:
            expect_after(bad, n)


def test_zstd_raw_block_cut_keeps_the_complete_lines_inside_it(tmp_path):
    lines = line_objs()
    data1, data2 = b"".join(lines[:5]), b"".join(lines[5:])

    def raw_block(data: bytes, last: bool) -> bytes:
        return (len(data) << 3 | int(last)).to_bytes(3, "little") + data

    # RFC 8878: magic, frame header descriptor 0 (window descriptor follows, no checksum), window 1 MiB
    frame = (
        b"\x28\xb5\x2f\xfd" + b"\x00" + bytes([10 << 3]) + raw_block(data1, False) + raw_block(data2, True)
    )
    assert zstandard.ZstdDecompressor().decompressobj().decompress(frame) == data1 + data2
    start = len(frame) - len(data2)
    for cut in range(start, len(frame)):
        recs, bad = read_cut(tmp_path, "raw.jsonl.zst", frame[:cut])
        n = 5 + frame[start:cut].count(b"\n")
        assert [r["text"] for r in recs] == TEXTS[:n]
        expect_after(bad, n)


@pytest.mark.parametrize("block", [0, 1, 4, 9])
def test_a_damaged_zstd_block_costs_only_itself_and_what_follows(tmp_path, block):
    blob, ends, _ = zstd_frames([line_objs()])
    descriptor = blob[4]
    assert descriptor == 0  # no content size, not single-segment, no checksum, no dictionary: a 6-byte header
    damaged = bytearray(blob)
    damaged[ends[block - 1] if block else 6] |= 0b110  # block type 3 (reserved), which every decoder refuses
    recs, bad = read_cut(tmp_path, "bad.jsonl.zst", bytes(damaged))
    assert [r["text"] for r in recs] == TEXTS[:block]  # the blocks before were in the same read, all kept
    expect_after(bad, block)
    assert bad[0].detail.startswith("ZstdError: ")


def gzip_members(groups: list[list[bytes]]) -> tuple[bytes, list[int], list[int]]:
    """Each group one gzip member, each line flushed to a byte boundary; (blob, end offsets of each line's
    deflate data, of each member)."""
    blob, ends, member_ends = b"", [], []
    for group in groups:
        c = zlib.compressobj(6, zlib.DEFLATED, 31)
        blob += c.compress(b"")
        for line in group:
            blob += c.compress(line) + c.flush(zlib.Z_FULL_FLUSH)
            ends.append(len(blob))
        blob += c.flush()
        member_ends.append(len(blob))
    return blob, ends, member_ends


def zlib_prefix(member: bytes) -> bytes:
    """What zlib itself decodes of a (possibly cut) gzip member: the oracle for cuts between flush points."""
    return zlib.decompressobj(31).decompress(member)


@pytest.mark.parametrize("members", [[10], [4, 6]], ids=["one-member", "two-members"])
def test_gzip_cut_at_every_byte_keeps_every_complete_line_and_says_where(tmp_path, members):
    lines = line_objs()
    groups = [lines[: members[0]], lines[members[0] :]] if len(members) == 2 else [lines]
    blob, ends, member_ends = gzip_members(groups)
    starts = [0, *member_ends[:-1]]
    for cut in range(len(blob) + 1):
        recs, bad = read_cut(tmp_path, "cut.jsonl.gz", blob[:cut])
        decoded = b"".join(
            zlib_prefix(blob[s : min(cut, e)]) for s, e in zip(starts, member_ends, strict=True) if s < cut
        )
        n = decoded.count(b"\n")
        assert n >= sum(1 for e in ends if e <= cut)  # every line flushed before the cut, at least
        assert [r["text"] for r in recs] == TEXTS[:n], cut
        if cut == 0 or cut in member_ends:
            assert bad == [], cut  # whole members: indistinguishable from a complete file
        else:
            expect_after(bad, n)


@pytest.mark.parametrize("line", [0, 1, 5, 9])
def test_a_damaged_gzip_block_keeps_the_lines_before_it_in_the_same_read(tmp_path, line):
    blob, ends, _ = gzip_members([line_objs()])
    damaged = bytearray(blob)
    # after a full flush the next deflate block starts on a byte: BTYPE 11 (bits 1-2) is invalid
    damaged[ends[line - 1] if line else 10] |= 0b110
    assert blob[3] == 0  # no optional gzip header fields: the first block starts at byte 10
    recs, bad = read_cut(tmp_path, "bad.jsonl.gz", bytes(damaged))
    assert [r["text"] for r in recs] == TEXTS[:line]
    expect_after(bad, line)
    assert (
        bad[0].detail
        == "error: Error -3 while decompressing data: invalid block type; the rest is unreadable"
    )


def test_gzip_trailing_bytes(tmp_path):
    blob, _, _ = gzip_members([line_objs()])
    recs, bad = read_cut(tmp_path, "zeros.jsonl.gz", blob + b"\0" * 100)  # padding, as gzip accepts
    assert [r["text"] for r in recs] == TEXTS and bad == []
    recs, bad = read_cut(tmp_path, "junk.jsonl.gz", blob + b"\0\0junk")
    assert [r["text"] for r in recs] == TEXTS
    expect_after(bad, 10)
    assert bad[0].detail == (
        "BadGzipFile: the bytes after gzip member 1 are not a gzip member; the rest is unreadable"
    )


def test_a_crc_mismatch_is_reported_after_the_member(tmp_path):
    blob, _, _ = gzip_members([line_objs()])
    bad_crc = blob[:-8] + bytes(b ^ 0xFF for b in blob[-8:-4]) + blob[-4:]
    recs, bad = read_cut(tmp_path, "crc.jsonl.gz", bad_crc)
    assert [r["text"] for r in recs] == TEXTS  # deflate cannot tell which bytes were wrong; JSON checks each
    expect_after(bad, 10)
    assert "incorrect data check" in bad[0].detail


def test_tar_gz_cut_at_every_byte_keeps_every_complete_member_line(tmp_path):
    a = jsonl_bytes([{"id": f"a{i}", "content": TEXTS[i]} for i in range(5)])
    b = jsonl_bytes([{"id": f"b{i}", "content": TEXTS[5 + i]} for i in range(5)])
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tar:
        for name, data in [("a.jsonl", a), ("README", b"read me"), ("b.jsonl", b)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw_tar = tar_buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw_tar)) as tar:  # where each member's header and data are
        layout = [(m.name, m.offset_data, m.size) for m in tar.getmembers()]
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    blob = b"".join(
        c.compress(raw_tar[i : i + 200]) + c.flush(zlib.Z_FULL_FLUSH) for i in range(0, len(raw_tar), 200)
    )
    blob += c.flush()
    for cut in range(1, len(blob)):
        decoded = zlib_prefix(blob[:cut])
        texts, quarantined, where = [], [], "start"
        for name, data_at, size in layout:
            if len(decoded) < data_at:
                break  # its header is not whole
            if not name.endswith(".jsonl"):
                quarantined.append(("unexpected_member", name))
                continue
            part = decoded[data_at : data_at + size]
            done = part.split(b"\n")[:-1]  # the lines whose newline was decoded
            texts += [json.loads(line)["content"] for line in done]
            where = f"{name}:line {len(done)}"
        recs, bad = read_cut(tmp_path, "part-cut.jsonl.tar.gz", blob[:cut], "wanjuan")
        assert [r["text"] for r in recs] == texts, cut
        assert [(x.reason, x.position) for x in bad] == [
            *quarantined,
            ("corrupt_stream", f"after {where}"),
        ], cut
    recs, bad = read_cut(tmp_path, "part-whole.jsonl.tar.gz", blob, "wanjuan")
    assert [r["text"] for r in recs] == TEXTS and [(x.reason, x.position) for x in bad] == [
        ("unexpected_member", "README")
    ]


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.gz"])
def test_a_compression_bomb_line_is_quarantined_with_bounded_memory(tmp_path, suffix):
    body = b'{"text": "before"}\n{"text": "' + b"a" * (200 * MB) + b'"}\n{"text": "after"}\n'
    blob = zstandard.ZstdCompressor().compress(body) if suffix == ".jsonl.zst" else gzip.compress(body, 1)
    del body
    path = tmp_path / f"bomb{suffix}"
    path.write_bytes(blob)
    out: list = []
    peak = _peak_mb(lambda: out.extend(read_all([path], "c", "jsonl", max_record_bytes=8 * MB)))
    recs, bad = out
    assert [r["text"] for r in recs] == ["before", "after"]
    assert [(b.reason, b.position) for b in bad] == [("record_too_large", "line 2")]
    assert peak < 40, f"peak traced memory {peak:.0f} MB"


# --- kind 4: numbers JSON holds exactly
BIG_IDS = [2**64, 2**64 + 1, -(2**63) - 1, 10**40, -(10**30), 10**300 + 3]


def test_integer_ids_of_any_size_are_kept_exactly(tmp_path):
    ids = [*BIG_IDS, 2**64 - 1, -(2**63), 0]
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(f'{{"id": {i}, "text": "{TEXTS[0]}"}}\n' for i in ids))  # literals, as written
    recs, bad = read_all([path], "c", "jsonl", id_field="id")
    assert bad == []
    assert [r["id"] for r in recs] == [f"c/{i}" for i in ids]  # 2**64 and 2**64+1 stay apart
    wudao = tmp_path / "part-9.json"
    wudao.write_text("[" + ", ".join(f'{{"id": {i}, "content": "{TEXTS[1]}"}}' for i in BIG_IDS[:2]) + "]")
    recs, bad = read_all([wudao], "wudao", "wudao")
    assert bad == [] and [r["id"] for r in recs] == [f"wudao/part-9.json:{i}" for i in BIG_IDS[:2]]


@pytest.mark.parametrize("literal", ["1.5", "1.0", "-0.0", "1e20", "18446744073709551616.0", "2.5e-3"])
def test_a_float_id_is_wrong_type_and_says_it_is_a_float(tmp_path, literal):
    path = tmp_path / "ids.jsonl"
    path.write_text(f'{{"id": {literal}, "text": "{TEXTS[0]}"}}\n')
    recs, bad = read_all([path], "c", "jsonl", id_field="id")
    assert recs == []
    assert [(b.reason, b.detail) for b in bad] == [
        ("wrong_type", f"'id' is a float ({float(literal)!r}), not a string or an integer")
    ]


@pytest.mark.parametrize(
    "value,kept",
    [
        ("18446744073709551615", 2**64 - 1),  # the largest integer the shards hold
        ("-9223372036854775808", -(2**63)),
        ("[1, 18446744073709551615, 0.5]", [1, 2**64 - 1, 0.5]),
        ('{"n": -9223372036854775808}', {"n": -(2**63)}),
        ("1e30", 1e30),
        ("0.25", 0.25),
    ],
)
def test_metadata_numbers_come_out_exactly(tmp_path, value, kept):
    path = tmp_path / "meta.jsonl"
    path.write_text(f'{{"text": "{TEXTS[0]}", "n": {value}, "m": 18446744073709551615}}\n')
    recs, bad = read_all([path], "c", "jsonl", meta_fields=("n", "m"))
    assert bad == [] and recs[0]["meta"] == {"n": kept, "m": 2**64 - 1}
    assert type(recs[0]["meta"]["n"]) is type(kept)


@pytest.mark.parametrize(
    "value,number",
    [
        ("18446744073709551616", 2**64),
        ("-9223372036854775809", -(2**63) - 1),
        ("[1, 2, 100000000000000000000000]", 10**23),
        ('{"deep": [{"n": 36893488147419103232}]}', 2**65),
    ],
)
def test_metadata_integers_past_64_bits_refuse_the_record(tmp_path, value, number):
    path = tmp_path / "meta.jsonl"
    path.write_text(f'{{"text": "{TEXTS[0]}", "n": {value}}}\n{{"text": "{TEXTS[1]}", "n": 1}}\n')
    recs, bad = read_all([path], "c", "jsonl", meta_fields=("n",))
    assert [r["text"] for r in recs] == [TEXTS[1]]
    assert [(b.reason, b.position, b.detail) for b in bad] == [
        (
            "number_out_of_range",
            "line 1",
            f"'n' holds the integer {number}, outside the 64-bit range that the shards can hold exactly",
        )
    ]


# --- kind 3: ids are keys across a run
def test_wudao_ids_come_from_unique_key_else_file_and_native_id(tmp_path):
    folder = tmp_path / "wudao"
    folder.mkdir()
    for name in ("part-0000.json", "part-0001.json"):  # the same native ids in both, as the releases have
        objs = [
            {"id": 0, "uniqueKey": f"{name}-k0", "content": TEXTS[0]},  # a key: the id
            {"id": 1, "uniqueKey": "", "content": TEXTS[1]},  # an empty key: file and native id
            {"id": 2, "content": TEXTS[2]},  # no key
            {"id": 3, "uniqueKey": 12345, "content": TEXTS[3]},  # a key that is not a string
            {"id": None, "content": TEXTS[4]},  # nothing: the content hash
        ]
        (folder / name).write_text(json.dumps(objs, ensure_ascii=False))
    recs, bad = read_all([folder], "wd", "wudao")
    assert bad == []
    assert [r["id"] for r in recs] == [
        *["wd/part-0000.json-k0", "wd/part-0000.json:1", "wd/part-0000.json:2", "wd/part-0000.json:3"],
        content_id("wd", TEXTS[4]),
        *["wd/part-0001.json-k0", "wd/part-0001.json:1", "wd/part-0001.json:2", "wd/part-0001.json:3"],
        content_id("wd", TEXTS[4]),
    ]
    assert recs[3]["meta"]["uniqueKey"] == 12345  # kept as metadata


def test_other_formats_keep_corpus_and_native_id(tmp_path):
    (tmp_path / "a.jsonl").write_text(f'{{"id": 0, "text": "{TEXTS[0]}"}}\n')
    (tmp_path / "b.jsonl").write_text(f'{{"id": "x", "text": "{TEXTS[1]}"}}\n')
    recs, _ = read_all([tmp_path], "c", "jsonl", id_field="id")
    assert [r["id"] for r in recs] == ["c/0", "c/x"]


@pytest.mark.parametrize("field", ["id", "n"])
def test_a_number_past_the_double_range_is_refused_as_such(tmp_path, field):
    path = tmp_path / "huge.jsonl"
    huge = "9" * 400  # valid JSON, but orjson reads integers past 64 bits as doubles, and this is none
    path.write_text(f'{{"text": "{TEXTS[0]}", "{field}": {huge}}}\n')
    recs, bad = read_all([path], "c", "jsonl", id_field="id", meta_fields=("n",))
    column = len(f'{{"text": "{TEXTS[0]}", "{field}": ') + 1
    assert recs == []
    assert [(b.reason, b.detail) for b in bad] == [
        (
            "number_out_of_range",
            "a number past the range of a 64-bit float (number is infinity when parsed as double: "
            f"line 1 column {column} (char {column - 1}))",
        )
    ]


def test_a_split_compressed_file_reports_its_damage_once_with_the_file_line(tmp_path):
    lines = line_objs(10) * 30  # 300 lines, one zstd block each
    blob, ends, _ = zstd_frames([lines])
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(blob[: ends[199] + 2])  # into the block of line 201
    pieces = plan_pieces([path], "jsonl", path.stat().st_size // 4 + 1)
    items = [i for p in pieces for i in read_piece(p, "c", "jsonl", fields_for("jsonl"), MB)]
    assert len(pieces) == 4
    assert sorted(i["src"] for i in items if type(i) is dict) == sorted(
        f"cut.jsonl.zst[{n % 4 + 1}/4]:line {n}" for n in range(1, 201)
    )
    assert [(b.source, b.reason, b.position) for b in items if type(b) is Bad] == [
        ("cut.jsonl.zst[1/4]", "corrupt_stream", "after line 200")
    ]
