"""The one shape of a config check: a failed condition raises :class:`ConfigError` naming the key."""

from __future__ import annotations

from typing import Any

from kun_hpc.core.errors import ConfigError


def check(ok: bool, key: str, why: str, value: Any) -> None:
    """Raise ``config key '<key>': <why> (got <value>)`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}': {why} (got {value!r})")
