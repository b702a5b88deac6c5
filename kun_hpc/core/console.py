"""The console every table and progress bar prints to."""

from __future__ import annotations

import errno
import os

from rich.console import Console


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader of this console's output went away: raise it as Python's own writes do, so that
        ``kun-hpc`` ends the same way whichever wrote last (rich's default exits 1, which reads as a failure;
        rich documents this method as the place to change that)."""
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def console(stderr: bool = False) -> Console:
    """A rich console; 160 columns when the output is a file or pipe, so tables are not truncated."""
    c = _Console(stderr=stderr)
    return c if c.is_terminal else _Console(stderr=stderr, width=160)
