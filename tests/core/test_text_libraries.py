"""The text-changing libraries (issue 12, kind 8): OpenCC releases known to corrupt text are excluded by the
requirement and refused at start-up, a converter that gets a probe wrong is refused before it sees a corpus,
and records name the releases that changed them."""

from __future__ import annotations

import opencc
import pytest
import tomllib
from packaging.requirements import Requirement

from kun_hpc import cli, text_libraries
from kun_hpc.filtering.clean import Cleaner
from kun_hpc.io.shards import list_shards, read_shard
from kun_hpc.merge.normalize import make_normalizer
from kun_hpc.text_libraries import OPENCC_BAD_RELEASES, TextLibraryError, t2s_converter
from tests.conftest import REPO

REAL_OPENCC = opencc.OpenCC
CASE = "这台电脑坏了，我们只好把坏掉的零件换掉。"  # shared/cases opencc/: 1.4.0 writes 坯 for 坏


class Release140:
    """OpenCC 1.4.0's fault, as seen on the real release: 坏 becomes 坯; the rest converts as it should."""

    def __init__(self, config: str):
        self._real = REAL_OPENCC(config)

    def convert(self, text: str) -> str:
        return self._real.convert(text).replace("坏", "坯")


def test_the_requirement_excludes_every_known_bad_release():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    req = next(Requirement(d) for d in deps if Requirement(d).name == "opencc")
    assert OPENCC_BAD_RELEASES == ("1.3.2", "1.4.0")
    for bad in OPENCC_BAD_RELEASES:
        assert not req.specifier.contains(bad), bad
    for good in ("1.1.9", "1.3.1", "1.4.1", "1.4.2"):
        assert req.specifier.contains(good), good


def test_the_installed_release_converts_right():
    assert text_libraries.version("opencc") not in OPENCC_BAD_RELEASES
    convert = t2s_converter("t2s.json")
    assert convert(CASE) == CASE
    assert convert("這臺電腦壞了，後來我們發現頭髮是乾淨的。") == "这台电脑坏了，后来我们发现头发是干净的。"
    for name in ("tw2s", "hk2s", "tw2sp"):
        assert t2s_converter(name)(CASE) == CASE


def test_a_known_bad_release_is_refused_before_any_text(monkeypatch):
    monkeypatch.setattr(text_libraries, "version", lambda p: "1.4.0" if p == "opencc" else "9")
    with pytest.raises(TextLibraryError) as e:
        t2s_converter("t2s")
    assert str(e.value) == (
        "OpenCC 1.4.0 is a release known to corrupt Simplified text (坏 -> 坯); install a good release: "
        "pip install 'opencc>=1.1.9,<2,!=1.3.2,!=1.4.0'"
    )


def test_a_converter_that_corrupts_a_probe_is_refused_in_the_filter_and_in_dedup(monkeypatch):
    monkeypatch.setattr(opencc, "OpenCC", Release140)
    release = text_libraries.version("opencc")
    with pytest.raises(TextLibraryError) as e:
        Cleaner(t2s=True)
    assert str(e.value) == (
        f"OpenCC {release} (t2s) converts {CASE!r} to {CASE.replace('坏', '坯')!r}, not {CASE!r}: it would "
        "rewrite the corpus wrongly; install a good release: pip install 'opencc>=1.1.9,<2,!=1.3.2,!=1.4.0'"
    )
    section = {"width": True, "lowercase": True, "punctuation": True}
    with pytest.raises(TextLibraryError):
        make_normalizer({**section, "t2s": True, "opencc_config": "t2s"})
    # without t2s nothing of OpenCC runs, and nothing is refused
    assert (
        make_normalizer({**section, "t2s": False, "opencc_config": "t2s"})(CASE)
        == "这台电脑坏了 我们只好把坏掉的零件换掉"  # punctuation separates (issue 13)
    )
    assert Cleaner(t2s=False)(CASE) == CASE


def test_cleaning_names_the_releases_that_changed_the_text():
    info = Cleaner(t2s=True).info()
    assert info == {
        "fix_unicode": True,
        "ftfy": text_libraries.version("ftfy"),
        "t2s": True,
        "opencc_config": "t2s",
        "opencc": text_libraries.version("opencc"),
    }
    assert info["ftfy"] and info["opencc"]
    assert Cleaner(fix_unicode=False).info() == {"fix_unicode": False, "t2s": False}
    assert Cleaner(t2s=True)(CASE) == CASE


def filter_run(tmp_path, tiny_model, name: str) -> list[str]:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    text = CASE + "這臺電腦壞了，後來我們發現頭髮是乾淨的。" + "我們明天去公園散步，順便買些水果。"
    (folder / "t2s.jsonl").write_text(f'{{"id": "t", "text": "{text}"}}\n', encoding="utf-8")
    return [
        "run",
        f"run.dir={tmp_path / name}",
        "executor.kind=inline",
        f"corpora=[{{name: c, format: jsonl, paths: [{folder}], id_field: id}}]",
        "pipeline.stages=[filter]",
        f"filter.tokenizer={tiny_model}",
        "filter.min_tokens=1",
        "filter.clean.t2s=true",
    ]


def test_a_run_with_a_bad_release_stops_before_any_unit(tmp_path, tiny_model, monkeypatch, capsys):
    monkeypatch.setattr(text_libraries, "version", lambda p: "1.3.2" if p == "opencc" else "9")
    assert cli.main(filter_run(tmp_path, tiny_model, "bad")) == 1
    assert "kun-hpc: OpenCC 1.3.2 is a release known to corrupt Simplified text" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "done").exists() and not (tmp_path / "bad" / "stages").exists()


def test_filtered_units_are_converted_right_and_name_the_releases(tmp_path, tiny_model):
    assert cli.main(filter_run(tmp_path, tiny_model, "good")) == 0
    (unit,) = [r for p in list_shards(tmp_path / "good" / "stages" / "filter" / "c") for r in read_shard(p)]
    assert (
        unit["text"]
        == CASE + "这台电脑坏了，后来我们发现头发是干净的。" + "我们明天去公园散步，顺便买些水果。"
    )
    prov = unit["prov"]["filter"]
    assert prov["clean"] == Cleaner(t2s=True).info()
    assert prov["clean"]["opencc"] == text_libraries.version("opencc")
    assert prov["tokenizers"] == text_libraries.version("tokenizers")
