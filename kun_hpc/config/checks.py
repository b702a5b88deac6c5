"""The one shape of a config check, and :class:`Problems`, which gathers every failed check of a config so
that a command reports them all in one :class:`ConfigError`, before it does any work (issue 16).

A check fails with ``config key '<key>': <why> (got <value>)``. Outside :meth:`Problems.collect` it raises
at once; inside, the failure is added to the collector and the check returns, so the next check runs too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from omegaconf.errors import MissingMandatoryValue

from kun_hpc.core.errors import ConfigError

__all__ = ["Problems", "attempt", "check", "dotted", "fail"]

T = TypeVar("T")


class Problems:
    """Every problem found in one config, in the order found, each once: one line ``config key '<key>':
    <why>`` each. :meth:`raise_any` raises them as one :class:`ConfigError`."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, message: str) -> None:
        """A problem (a message of several lines is several problems); one already listed is kept once."""
        for line in message.splitlines():
            if line.strip() and line not in self.lines:
                self.lines.append(line)

    @contextmanager
    def collect(self) -> Iterator[Problems]:
        """While active, :func:`check` and :func:`attempt` add their failures here instead of raising."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def run(self, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args)`` collecting: every failed check, and the :class:`ConfigError` that ends it early
        (a check written as a raise, or a required value it read that is not set: named as one)."""
        with self.collect():
            attempt(fn, *args)

    def message(self) -> str:
        """One problem as its line; several under a count, one per line."""
        if len(self.lines) == 1:
            return self.lines[0]
        return f"{len(self.lines)} problems in the config:\n" + "\n".join(f"  {line}" for line in self.lines)

    def raise_any(self) -> None:
        """Raises :class:`ConfigError` listing every problem, when there is one."""
        if self.lines:
            raise ConfigError(self.message())


_ACTIVE: ContextVar[Problems | None] = ContextVar("kun_hpc_config_problems", default=None)


def check(ok: bool, key: str, why: str, value: Any) -> None:
    """Raise ``config key '<key>': <why> (got <value>)`` unless ``ok`` (added to the active
    :class:`Problems` instead, when one collects)."""
    if not ok:
        fail(f"config key '{key}': {why} (got {value!r})")


def attempt(fn: Callable[..., T], *args: Any) -> T | None:
    """``fn(*args)``; a :class:`ConfigError` it raises (or a required value it reads unset) is added to the
    active :class:`Problems` and None returned, or raised when none collects. Other errors propagate."""
    try:
        return fn(*args)
    except ConfigError as e:
        message = str(e)
    except MissingMandatoryValue as e:  # a required key, which the missing-keys check names too
        message = f"config key '{dotted(str(e.full_key))}': must be set (got '???')"
    fail(message)
    return None


def dotted(key: str) -> str:
    """OmegaConf's key (``corpora[0].paths``) as an override spells it (``corpora.0.paths``)."""
    return _INDEX.sub(r".\1", key)


_INDEX = re.compile(r"\[(\d+)\]")


def fail(message: str) -> None:
    """A problem worded in full (``config key '<key>': ...``): raised, or added to the active
    :class:`Problems`."""
    problems = _ACTIVE.get()
    if problems is None:
        raise ConfigError(message) from None
    problems.add(message)
