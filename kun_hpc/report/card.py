"""The dataset card (``<dataset>/README.md``, a Hugging Face dataset card): what the dataset is, sources and
licences, fields, the quality summary, config, links to ``report/`` and the citations."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from omegaconf import DictConfig, OmegaConf

from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.merge.assemble import PAIR_FIELDS, TEXT_FIELDS, column_types
from kun_hpc.quality.section import Section
from kun_hpc.report.funnel import dataset_counts
from kun_hpc.report.paths import strip_local_paths
from kun_hpc.report.render import md_table

if TYPE_CHECKING:
    from kun_hpc.merge.assemble import MergeResult


# Hugging Face's size_categories values (huggingface_hub RepoCard docs: DatasetCardData.size_categories)
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (10**6, "100K<n<1M"),
                   (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                   (10**11, "10B<n<100B"), (10**12, "100B<n<1T")]  # fmt: skip
CITATION = """\
@misc{zheng2024kun,
  title         = {Kun: Answer Polishment for Chinese Self-Alignment with Instruction Back-Translation},
  author        = {Zheng, Tianyu and Guo, Shuyue and Qu, Xingwei and Guo, Jiawei and Du, Xinrun and Jia, Qi
                   and Lin, Chenghua and Huang, Wenhao and Fu, Jie and Zhang, Ge},
  year          = {2024},
  eprint        = {2401.06477},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CL},
  url           = {https://arxiv.org/abs/2401.06477}
}

@misc{li2023humpback,
  title         = {Self-Alignment with Instruction Backtranslation},
  author        = {Li, Xian and Yu, Ping and Zhou, Chunting and Schick, Timo and Levy, Omer
                   and Zettlemoyer, Luke and Weston, Jason and Lewis, Mike},
  year          = {2023},
  eprint        = {2308.06259},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CL},
  url           = {https://arxiv.org/abs/2308.06259}
}"""


def size_category(rows: int) -> str:
    """The Hugging Face ``size_categories`` value of a dataset of ``rows`` examples."""
    return next((cat for limit, cat in SIZE_CATEGORIES if rows < limit), "n>1T")


def model_name(path: str | None, run_dir: str | Path) -> str | None:
    """A model as the card names it: its folder relative to the run folder when it is inside it
    (``train/chat/model``), else its folder name; never an absolute path."""
    if not path:
        return path
    p = Path(path)
    return p.relative_to(run_dir).as_posix() if p.is_relative_to(run_dir) else p.name


def card_settings(cfg: DictConfig) -> dict:
    """The ``dedup`` and ``merge`` sections as the card shows them: without ``merge.output`` (where this
    copy was written), every path by its last part (benchmark files by name)."""
    settings = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("dedup", "merge")}
    settings["merge"].pop("output", None)

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return strip_local_paths(v) if isinstance(v, str) else v

    return clean(settings)


def _feature(name: str, dtype: str) -> list[str]:
    """One column of the card's ``dataset_info.features`` (Hugging Face's YAML: ``dtype``, or ``list``)."""
    kind, _, item = dtype.partition(":")
    return [f"  - name: {name}", f"    list: {item}" if kind == "list" else f"    dtype: {dtype}"]


def write_card(cfg: DictConfig, result: MergeResult, sections: Sequence[Section] = ()) -> None:
    """Write the dataset card ``<dataset>/README.md``: the Hugging Face YAML header (data files, ``language``,
    ``task_categories``, ``pretty_name``, ``size_categories``, ``license: other``), what the dataset is,
    sources and licences, fields, the quality summary (each section's ``card`` lines), config, links to
    ``report/`` and the citations. No local absolute path: :func:`strip_local_paths` runs over the whole
    text, after models and settings were named without them."""
    ds = dataset_counts(result)
    pairs = ds["kind"] == "pairs"
    fmt = "parquet/*.parquet" if cfg.merge.parquet else "jsonl/*.jsonl.zst"
    licences = {c.name: c.license or "unknown" for c in cfg.corpora}
    fields = PAIR_FIELDS if pairs else TEXT_FIELDS
    sources = [[c, licences.get(c, "unknown"), f"{n:,}"] for c, n in ds["by_corpus"].items()]
    models = {s: model_name(OmegaConf.select(cfg, f"{s}.engine.model", throw_on_missing=False), cfg.run.dir)
              for s in ("label", "point", "answer") if s in cfg.pipeline.stages}  # fmt: skip
    tasks = ["text-generation", "question-answering"] if pairs else ["text-generation"]
    what = "Chinese instruction/output pairs" if pairs else "Chinese texts"
    pretty = f"{cfg.run.name}: {what} (kun-hpc)"
    config_sha = Path(cfg.run.dir) / "config.sha256"
    config_hash = config_sha.read_text().split()[0] if config_sha.is_file() else "unknown"
    quality_lines: list[str] = []
    for s in sections:
        if s.card:
            quality_lines += [f"### {s.title}", "", *(p for line in s.card for p in (line, ""))]
    if not quality_lines:
        quality_lines = ["No quality measure ran (`merge.quality.enabled`) or had anything to say.", ""]
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: {fmt}",
        "dataset_info:",  # the columns' types, for JSONL too (a reader infers null for an all-null column)
        "  config_name: default",
        "  features:",
        *(line for name, t in column_types(ds["kind"]) for line in _feature(name, t)),
        "language:",
        "- zh",
        "task_categories:",
        *(f"- {t}" for t in tasks),
        f"pretty_name: {orjson.dumps(pretty).decode()}",
        "size_categories:",
        f"- {size_category(ds['rows'])}",
        "license: other",
        "---",
        f"# {cfg.run.name}",
        "",
        f"{ds['rows']:,} {'instruction/output pairs' if pairs else 'texts'} made by kun-hpc "
        f"(stages: {', '.join(cfg.pipeline.stages) or 'none'}), deduplicated across all corpora "
        "(exact and verified MinHash near-duplicates"
        f"{', raw units before the stages' if cfg.dedup.raw else ''}; "
        f"final passes by {', '.join(k for k, _ in result.dedup) or 'nothing'})"
        + (
            f", decontaminated against {', '.join(Path(b).name for b in cfg.merge.decontaminate.benchmarks)} "
            f"(a shared character {cfg.merge.decontaminate.ngram}-gram removes a record)."
            if result.decontaminate
            else "."
        ),
        "",
        'Load with `datasets.load_dataset("parquet", data_files="parquet/*.parquet")`, or the JSONL with '
        'the column types above: `load_dataset("json", data_files="jsonl/*.jsonl.zst", '
        'features=load_dataset_builder(".").info.features)` (from this folder).',
        "",
        "## Sources and licences",
        "",
        *md_table(["corpus", "licence", "records"], sources),
        "",
        "## Fields",
        "",
        f"`{'`, `'.join(fields)}`; `prov` is a JSON string: per stage, the model, sampling and config hash "
        "that made the record. `meta` is a JSON string too: the native fields the corpus keeps "
        "(`corpora[i].meta_fields`; WuDao: title, dataType, uniqueKey; `{}` when none)."
        + (" `unit_text` is the unit the pair was made from (drop it for training)." if pairs else "")
        + " `score` is Point's calibrated score, `ppl` the filter's perplexity (floats, null when not "
        "computed). `dup_count` is "
        "how many copies of the record the dedup passes removed in its favour (0: none), `dup_corpora` "
        "the corpora those copies came from: weigh or audit by them."
        + (
            " `lcs_recall` / `lcs_precision`: the share of the unit's characters the output keeps in order / "
            "of the output's characters taken from the unit in order; `novel_share`: the share of the "
            "output's character n-grams not in the unit; `flags`: `drift` (mostly new text), `copy` (the "
            "unit nearly verbatim), `refusal` (null values: no unit to compare)."
            if pairs
            else ""
        ),
        "",
        "## Quality summary",
        "",
        *quality_lines,
        "The funnel (records in and out of every step, by reason and corpus), the quality measures and "
        "sample records of every step and reject reason: [report/report.md](report/report.md) "
        "([HTML, one file](report/report.html)).",
        "",
        "## Config",
        "",
        f"Run `{cfg.run.name}` (config sha256 `{config_hash}`), models {models or 'none'}; local paths are "
        "shown by their last part.",
        "",
        "```json",
        orjson.dumps(card_settings(cfg), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode(),
        "```",
        "",
        "## Citation",
        "",
        "kun-hpc implements Kun (answer polishment), built on Humpback's instruction back-translation:",
        "",
        "```bibtex",
        CITATION,
        "```",
    ]
    if result.inputs.missing:
        missing = ", ".join(result.inputs.missing)
        lines += ["", f"**Partial**: built from the complete groups only; missing: {missing}"]
    text = strip_local_paths("\n".join(lines) + "\n")
    atomic_write_bytes(Path(result.dataset) / "README.md", text.encode())
