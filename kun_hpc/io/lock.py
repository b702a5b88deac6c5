"""One owner per run directory at a time (issue 16): the lock ``<run>/lock`` and who holds it.

The commands that write a run (``run``, ``shard``, ``reshard``, ``merge``, ``filter-calibrate``, ``export``
and the Slurm merge job) hold it for as long as they work in the run directory; the read-only ones
(``status``, ``logs``, ``plan``, ``inspect``) never take it. It is an ``flock`` on ``<run>/lock``: the kernel
releases it when its holder ends, however it ends (``kill -9`` and a crash included), so a lock is never
left behind. The holder writes who it is (command, pid, host, start time, Slurm job) into the file, and a
second command refuses naming it (:class:`RunDirInUse`).

On a shared filesystem the lock holds across machines only where the filesystem implements ``flock``
across clients: NFSv4 and NFSv3 with ``lockd`` do; Lustre does when mounted with ``-o flock`` (with
``localflock`` it holds on one node only; with ``noflock`` locking fails, and the command goes on
unlocked with a warning); BeeGFS and GPFS only when their global locking is enabled.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from kun_hpc.core.unit_log import UnitLog, slurm_job
from kun_hpc.io.markers import valid_marker

LOCK_FILE = "lock"
_held: dict[str, int] = {}  # lock paths this process holds -> how many nested holds
# the errors of a filesystem that does not implement flock (Lustre -o noflock, some NFS setups)
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@dataclass(frozen=True)
class Holder:
    """Who holds a run directory: the command, its process, its machine, since when (epoch seconds), and
    the Slurm job it runs in ("" outside one)."""

    command: str
    pid: int
    host: str
    since: float
    job: str = ""

    def describe(self) -> str:
        """```kun-hpc run` pid 123 on host h since 2025-01-01 12:00:00`` (and its Slurm job)."""
        return f"`kun-hpc {self.command}` {self.where()}"

    def where(self) -> str:
        """``pid 123 on host h (Slurm job 12_3) since 2025-01-01 12:00:00`` (the job only on Slurm)."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        job = f" (Slurm job {self.job})" if self.job else ""
        return f"pid {self.pid} on host {self.host}{job} since {when}"

    @property
    def here(self) -> bool:
        """It runs on this machine (its pid can be signalled from here)."""
        return self.host == socket.gethostname()

    @property
    def mine(self) -> bool:
        return self.here and self.pid == os.getpid()


class RunDirInUse(RuntimeError):
    """Another command holds the run directory."""


def lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir).resolve() / LOCK_FILE


def _read(fd: int) -> Holder | None:
    raw = os.pread(fd, 4096, 0)
    try:
        return Holder(**orjson.loads(raw)) if raw.strip() else None
    except (orjson.JSONDecodeError, TypeError):
        return None


def holder(run_dir: str | Path) -> Holder | None:
    """Who holds the run directory now; None when nobody does. A holder that died holds nothing (the kernel
    released its lock), whatever its file still says. Raises nothing: unreadable means not held."""
    path = lock_path(run_dir)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if str(path) in _held:
            return _read(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or Holder("(starting)", 0, "?", time.time())
        except OSError:
            return _read(fd)  # no locks on this filesystem: the file is all we know
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_lock(run_dir: str | Path, command: str, wait_s: float = 2.0) -> Iterator[None]:
    """Hold the run directory for ``command`` (nested holds in one process are one hold). Raises
    :class:`RunDirInUse` naming the holder when another process holds it after ``wait_s`` seconds (a
    ``status`` probing the lock holds it for microseconds)."""
    path = lock_path(run_dir)
    key = str(path)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return

    def in_use(who: Holder | None) -> None:
        by = who.describe() if who else "another kun-hpc command"
        raise RunDirInUse(
            f"run dir {path.parent} is in use by {by}; wait for it to end, or kun-hpc cancel {path.parent}"
        )

    made = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _flock(path, command, wait_s, in_use):
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            if made and [p.name for p in path.parent.iterdir()] == [LOCK_FILE]:
                # a command that failed before any work leaves no run folder (a racing command that opened
                # this very file in the meantime would lock a removed file: both must start on a new folder)
                path.unlink()
                path.parent.rmdir()


UNIT_LOCKS = "locks"  # <run>/locks/<stage>/<unit>.lock


@contextlib.contextmanager
def unit_lock(
    run_dir: str | Path, stage: str, unit: str, on_wait: Callable[[str], None], every_s: float = 60.0
) -> Iterator[None]:
    """One attempt of a unit at a time (issue 18): an exclusive ``flock`` on
    ``<run>/locks/<stage>/<unit>.lock`` for as long as the attempt works on the unit's files.

    Slurm requeues the jobs of a node it marks DOWN; when the node did not die but lost contact (slurmd
    killed, a network partition), the first attempt still runs there while the requeued one starts
    elsewhere, and both would write the unit's chunks. The second waits here instead, calling ``on_wait``
    with who holds the unit (pid, host, Slurm job, since when) at once and every ``every_s`` seconds; it goes
    on when the first ends, however it ends (the kernel, or the filesystem's lock manager, releases its
    lock). On a filesystem without ``flock`` it goes on unlocked, with a warning (the module's notes).

    A block that ends without an exception has committed the unit's marker: the lock file goes then (a
    later attempt that locks a fresh file, or one that was waiting on this one, finds the marker and writes
    nothing), so a grid leaves lock files only for units not done."""

    def busy(who: Holder | None) -> None:
        by = who.where() if who else "another process"
        on_wait(f"another attempt of this unit holds {path}: {by}; waiting for it to end")

    path = Path(run_dir) / UNIT_LOCKS / stage / f"{unit}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _flock(path, f"unit {unit}", 0.0, busy, every_s):
        yield
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def one_attempt(run_dir: str | Path, stage: str, unit: str, config_hash: str) -> Iterator[None]:
    """:func:`unit_lock` with its lines in the unit's log (``kun-hpc unit <unit>: ...``, on in an inline run
    too): while it waits, who holds the unit; when it waited and the other attempt committed the unit's
    marker meanwhile, that it has nothing left to do."""
    log = UnitLog(unit, enabled=True)
    waited = []

    def wait(text: str) -> None:
        waited.append(text)
        log.line(text)

    with unit_lock(run_dir, stage, unit, on_wait=wait):
        marker = valid_marker(run_dir, stage, unit, config_hash) if waited else None
        if marker is not None:
            log.line(f"the other attempt ended with the unit done (host {marker['host']}): nothing to do")
        yield


@contextlib.contextmanager
def _flock(
    path: Path, command: str, wait_s: float, busy: Callable[[Holder | None], None], every_s: float = 0.0
) -> Iterator[None]:
    """Hold ``path`` exclusively, its holder written into it, for the block. ``busy(holder)`` is called when
    another process still holds it after ``wait_s`` seconds, then every ``every_s`` (> 0) seconds while it
    waits on; it raises to give up."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = _acquire(fd, path, wait_s, busy, every_s)
        if locked:
            me = Holder(command, os.getpid(), socket.gethostname(), time.time(), slurm_job())
            os.ftruncate(fd, 0)
            os.pwrite(fd, orjson.dumps(asdict(me)), 0)
        try:
            yield
        finally:
            if locked:
                os.ftruncate(fd, 0)  # a released lock names nobody
    finally:
        os.close(fd)  # releases the flock


def _acquire(
    fd: int, path: Path, wait_s: float, busy: Callable[[Holder | None], None], every_s: float
) -> bool:
    """Take the lock on ``fd``: True; False (with a warning) on a filesystem without flock. While another
    process holds it: ``busy`` after ``wait_s`` seconds, then every ``every_s`` seconds."""
    start = time.monotonic()
    deadline = start + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            now = time.monotonic()
            if now >= deadline:
                busy(_read(fd))
                deadline = now + every_s
            time.sleep(0.05 if now - start < 2 else 1.0)
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                raise
            print(
                f"kun-hpc: warning: cannot lock {path} ({e.strerror}): this filesystem does not implement "
                f"flock; nothing stops a second process working on {path.parent} (docs/checkpointing.md)",
                file=sys.stderr,
            )
            return False
