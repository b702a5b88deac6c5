"""Building a config: defaults <- YAML preset (and the presets it includes) <- ``key=value`` overrides,
resolved, made absolute, validated; and saving it, with its hash, in a run folder."""

from __future__ import annotations

import contextlib
import hashlib
import re
import sys
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kun_hpc.config.checks import Problems, dotted
from kun_hpc.config.kun import LLM_STAGES
from kun_hpc.config.paths import (
    CONFIGS,
    TokenizerNotFound,
    absolute_paths,
    filter_tokenizer,
    find_file,
    find_preset,
    tokenizer_file,
    use_import_paths,
)
from kun_hpc.config.schema import Config, validate
from kun_hpc.core.errors import ConfigError
from kun_hpc.core.hashing import file_sha256
from kun_hpc.io.atomic import atomic_write_bytes

__all__ = [
    "DEFAULT_PRESET",
    "config_hash",
    "load",
    "load_run",
    "preset_layers",
    "save_resolved",
    "to_yaml",
]

DEFAULT_PRESET = CONFIGS / "default.yaml"  # package data: found in a wheel install too (issue 16)
# keys an older kun-hpc read that this one does not, and why: left out of a preset with a note on stderr. A
# run's saved config.yaml (beside its config.sha256) is kun-hpc's own writing: any key this release does not
# know is left out of it the same way, so that a run made by an older release loads (status, merge, export)
RETIRED = {
    "train.fsdp": "FSDP / DeepSpeed settings are accelerate config files: train.distributed, "
    "train.accelerate_config (issue 17)",
    "train.length_group_window": "transformers' length-grouped sampler sets its own window (issue 17)",
}


def load(
    preset: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    problems: Problems | None = None,
) -> DictConfig:
    """Defaults <- YAML preset <- ``key=value`` overrides, validated and resolved.

    Without a preset, ``configs/default.yaml`` (the bundled sample on the local executor) is used. Every
    problem is found before this returns (issue 16): each override that does not apply (an unknown key, a
    wrong type or choice; the others still apply), each required key left unset and each section's checks
    (:func:`~kun_hpc.config.schema.validate`). They are added to ``problems`` when given (the caller adds
    its own and raises them all together), else raised as one :class:`ConfigError`. A config that cannot be
    built at all (a preset not found, an include loop, a preset of wrong types, an interpolation that does
    not resolve) raises at once, with the problems found so far.
    """
    found = problems if problems is not None else Problems()
    if preset is None and DEFAULT_PRESET.is_file():
        preset = DEFAULT_PRESET
    try:
        cfg = OmegaConf.structured(Config)
        if preset is not None:
            for layer in preset_layers(Path(preset)):
                cfg = OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e)) from None
    bad = [o for o in overrides if "=" not in o]
    if bad:
        found.add(f"overrides must be key=value, got: {' '.join(bad)}")
    for item in overrides:
        key, eq, value = item.partition("=")
        try:
            if eq:
                parsed = OmegaConf.from_dotlist([f"v={value}"])  # key=??? unsets a key (to test a preset)
                value = MISSING if OmegaConf.is_missing(parsed, "v") else parsed.v
                OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as e:
            found.add(_describe(e))
    try:
        # an absolute run dir before anything is resolved from it: the saved config of a run then names the
        # same folders from any working directory
        cfg.run.dir = str(Path(OmegaConf.select(cfg, "run.dir")).expanduser().resolve())
        OmegaConf.resolve(cfg)
        absolute_paths(cfg)
        _fill_file_hashes(cfg)
        use_import_paths(cfg)
    except OmegaConfBaseException as e:
        found.add(_describe(e))
        found.raise_any()  # nothing more can be checked of a config that does not resolve
    validate(cfg, found)
    if problems is None:
        found.raise_any()
    return cfg


def load_run(run_dir: str | Path) -> DictConfig:
    """The config a run was started with (its folder's ``config.yaml``)."""
    return load(Path(run_dir) / "config.yaml")


def preset_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[DictConfig]:
    """A preset and the presets it builds on, to merge in order (last wins).

    A preset may start with ``include: [other.yaml, ...]`` (paths relative to its own folder, else bundled
    ones such as ``profiles/cpu.yaml``): those are merged first, in order, then the preset itself. So a
    user's config can be a cluster profile plus a corpus plus a few lines of its own. A bundled preset may
    be named without its folder (``demo``, ``profiles/cpu``: :func:`~kun_hpc.config.paths.find_preset`).
    """
    path = find_preset(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"config include loop: {chain}")
    try:
        layer = OmegaConf.load(path)
    except yaml.YAMLError as e:  # the parser's message names the line and column
        raise ConfigError(f"config file {path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"config file {path}: must be a mapping of sections, not a list")
    for key, why in RETIRED.items():
        parent, _, leaf = key.rpartition(".")
        section = OmegaConf.select(layer, parent) if parent else layer
        if isinstance(section, DictConfig) and leaf in section:
            section.pop(leaf)
            print(f"kun-hpc: {path}: {key} is no longer read and was left out: {why}", file=sys.stderr)
    if path.name == "config.yaml" and (path.parent / "config.sha256").is_file():
        for key in _drop_unknown(layer, OmegaConf.structured(Config)):
            print(
                f"kun-hpc: {path}: {key} is not a key of this kun-hpc (an older release wrote it) and was "
                "left out",
                file=sys.stderr,
            )
    includes = layer.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    layers = []
    for inc in includes:
        layers += preset_layers(find_preset(str(inc), path.parent), (*seen, path))
    return [*layers, layer]


def _drop_unknown(layer: DictConfig, schema: DictConfig, prefix: str = "") -> list[str]:
    """Remove from ``layer`` the keys its schema (a structured config) has not, in every section and list
    item typed by a dataclass; return their dotted names. A free-form mapping (``pipeline.options``) keeps
    whatever it holds."""
    dropped = []
    for key in list(layer.keys()):
        name = f"{prefix}{key}"
        if key not in list(schema.keys()):  # `key in schema` is false for a key set to ??? (MISSING)
            layer.pop(key)
            dropped.append(name)
            continue
        sub, ref = layer._get_node(key), schema._get_node(key)
        typed = isinstance(ref, DictConfig) and is_dataclass(OmegaConf.get_type(ref))
        if isinstance(sub, DictConfig) and typed:
            dropped += _drop_unknown(sub, ref, f"{name}.")
        elif isinstance(sub, ListConfig) and isinstance(ref, ListConfig):
            item_type = ref._metadata.element_type
            if is_dataclass(item_type):
                for i, item in enumerate(sub):
                    if isinstance(item, DictConfig):
                        dropped += _drop_unknown(item, OmegaConf.structured(item_type), f"{name}[{i}].")
    return dropped


def _fill_file_hashes(cfg: DictConfig) -> None:
    """Record each prompt template's sha256 in its section, and the filter's tokenizer.json's in
    ``filter.tokenizer_sha256`` (each kept when already set: a run's saved config holds the hashes the run
    was submitted with, the stages refuse a file changed since, and a command that only reads the run, such
    as ``status``, needs none of the files: issue 16)."""
    for key in LLM_STAGES:
        section = cfg[key]
        if not section.template_sha256 and not OmegaConf.is_missing(section, "template"):
            path = find_file(section.template)
            if path.is_file():
                section.template_sha256 = file_sha256(path)
    tokenizer = filter_tokenizer(cfg)
    if not cfg.filter.tokenizer_sha256 and tokenizer is not None:
        with contextlib.suppress(TokenizerNotFound):  # the commands that count tokens name it missing
            cfg.filter.tokenizer_sha256 = file_sha256(tokenizer_file(tokenizer))


_BAD_CHOICE = re.compile(r"Invalid value '(.*)', expected one of \[(.*)\]")  # OmegaConf's, of an enum


def _describe(e: OmegaConfBaseException) -> str:
    """OmegaConf's error as ``config key '<key>': <why>``: a list index spelt as in an override
    (``corpora.0.format``), a bad choice as the checks word it (``must be one of (...) (got '...')``)."""
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0]
    if bad := _BAD_CHOICE.fullmatch(msg):
        msg = f"must be one of {tuple(bad[2].split(', '))} (got {bad[1]!r})"
    if not key:
        return f"config: {msg}"
    return f"config key '{dotted(str(key))}': {msg}"


def to_yaml(cfg: DictConfig | Any) -> str:
    """The config as YAML, resolved, keys sorted; a choice as its value."""
    return OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True)


def config_hash(section: DictConfig | Any) -> str:
    """Stable short hash of a (sub)config: same values, same hash, whatever the key order. A choice hashes
    as its value (a config section's by ``enum_to_str``; one in a plain dict as orjson writes a str enum)."""
    if isinstance(section, (DictConfig, ListConfig)):
        section = OmegaConf.to_container(section, resolve=True, enum_to_str=True)
    text = orjson.dumps(section, option=orjson.OPT_SORT_KEYS, default=repr).decode()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_resolved(cfg: DictConfig, run_dir: str | Path) -> str:
    """Write ``config.yaml`` and ``config.sha256`` into the run dir; return the hash."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = to_yaml(cfg)
    digest = config_hash(cfg)

    atomic_write_bytes(run_dir / "config.yaml", text.encode())
    atomic_write_bytes(run_dir / "config.sha256", (digest + "\n").encode())
    return digest
