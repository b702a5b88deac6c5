"""The ``corpora`` section: the input corpora, each sharded into its own folder."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING, ListConfig, OmegaConf

from kun_hpc.config.checks import check
from kun_hpc.config.choices import CORPUS_FORMATS, CorpusFormat

__all__ = ["CORPUS_FORMATS", "CorpusConfig", "validate_corpora"]


@dataclass
class CorpusConfig:
    name: str = MISSING  # names its shard folder, its records' corpus field and its report rows
    format: CorpusFormat = MISSING  # one of CORPUS_FORMATS
    paths: list[str] = MISSING  # files, folders or globs; relative: under the working dir, else the repo
    text_field: str = "text"  # jsonl only: where the text is
    id_field: str | None = None  # jsonl only: native id field; None: content hash
    meta_fields: list[str] = field(default_factory=list)  # jsonl only: native fields kept under "meta"
    license: str = ""  # carried into the dataset card
    # `kun-hpc plan` before the corpus is sharded: its expected number of records (once shards exist, their
    # manifest counts instead); None: unknown
    expected_records: int | None = None


def validate_corpora(corpora: ListConfig) -> None:
    """Each corpus complete, with a unique name fit for a folder; its format is checked at load."""
    names = [OmegaConf.select(c, "name", throw_on_missing=False) for c in corpora]
    for i, c in enumerate(corpora):
        unset = [key for key in ("name", "format", "paths") if OmegaConf.is_missing(c, key)]
        for key in unset:
            check(False, f"corpora.{i}.{key}", "must be set", "???")
        if unset:  # the checks below read them
            continue
        check(bool(c.paths), f"corpora.{i}.paths", "must list at least one path", c.paths)
        check(names.count(c.name) == 1, f"corpora.{i}.name", "must be unique", c.name)
        check(c.name.replace("_", "").replace("-", "").isalnum(), f"corpora.{i}.name",
              "must be letters, digits, '-' or '_'", c.name)  # fmt: skip
        n = c.expected_records
        check(n is None or n >= 0, f"corpora.{i}.expected_records", "must be >= 0 or null", n)
