"""The console every table and progress bar prints to."""

from __future__ import annotations

from rich.console import Console


def console(stderr: bool = False) -> Console:
    """A rich console; 160 columns when the output is a file or pipe, so tables are not truncated."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=160)
