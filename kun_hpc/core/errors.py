"""Errors every layer may raise without importing the layer that defines the setting at fault."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is wrong; the message names the key."""


class BadInputError(RuntimeError):
    """More input was quarantined than the config allows (``max_bad_fraction``)."""
