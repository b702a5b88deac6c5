"""zstd JSONL shards: ``part-XXXXX.jsonl.zst`` written atomically, read as a stream, listed in a manifest."""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import zstandard

from kun_hpc.io.atomic import atomic_open, atomic_write_bytes
from kun_hpc.io.streams import HashingWriter, iter_lines, open_stream

SHARD_GLOB = "part-*.jsonl.zst"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "kun-hpc/shards/1"


def shard_name(index: int) -> str:
    return f"part-{index:05d}.jsonl.zst"


@dataclass
class ShardInfo:
    name: str
    records: int
    bytes: int  # compressed size on disk
    sha256: str


BATCH_BYTES = 1 << 18  # lines go to the compressing thread in batches of about this size
MAX_PENDING = 4  # tasks queued for that thread at most (bounds the memory it holds)


class Background:
    """One helper thread running tasks in submission order, with at most ``MAX_PENDING`` queued.

    A task's error is re-raised in the caller by the next :meth:`submit` or :meth:`drain` after it.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()

    def submit(self, fn, *args) -> Future:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="kun-zstd")
        pending = self._pending
        fut = self._pool.submit(fn, *args)
        pending.append(fut)
        while len(pending) > MAX_PENDING or (pending and pending[0].done()):
            pending.popleft().result()
        return fut

    def drain(self) -> None:
        """Wait for every task and stop the thread; re-raise the first error."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pending.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


class ZstdJsonlWriter:
    """One zstd JSONL file, written to a temp name and renamed into place by :meth:`close`.

    Lines are gathered into batches of about ``BATCH_BYTES`` that a helper thread compresses, hashes and
    writes (zstandard, hashlib and file writes release the GIL), so compression overlaps the caller's
    parsing. zstd's streaming output does not depend on how its input is cut into writes, so the bytes are
    the same as writing line by line on one thread. Writers that share a :class:`Background` share its
    thread and are written in order.
    """

    def __init__(self, path: str | Path, level: int = 3, background: Background | None = None):
        self.path = Path(path)
        self._ctx = atomic_open(self.path)
        self._hasher = HashingWriter(self._ctx.__enter__())
        self._z = zstandard.ZstdCompressor(level=level).stream_writer(self._hasher, closefd=False)
        self.records = 0
        self.raw_bytes = 0
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._own = background is None
        self._error: BaseException | None = None  # set by the helper thread when a write fails
        self._bg = Background() if background is None else background

    def write_line(self, line: bytes) -> None:
        """Write one JSON document that already ends with a newline."""
        self._batch.append(line)
        n = len(line)
        self.records += 1
        self.raw_bytes += n
        self._batch_bytes += n
        if self._batch_bytes >= BATCH_BYTES:
            self._submit_batch()

    def write(self, record: dict) -> None:
        self.write_line(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def _submit_batch(self) -> None:
        data = b"".join(self._batch)
        self._batch = []
        self._batch_bytes = 0
        self._bg.submit(self._write_batch, data)

    # --- these run on the helper thread
    def _write_batch(self, data: bytes) -> None:
        if self._error is not None:
            return  # already failed and reported; the file will be discarded
        try:
            self._z.write(data)
        except BaseException as e:
            self._error = e
            raise

    def _finish(self, records: int) -> ShardInfo:
        try:
            if self._error is not None:
                raise RuntimeError(f"{self.path.name}: an earlier write failed") from self._error
            self._z.close()
        except BaseException as e:
            self._discard(e)
            raise
        self._ctx.__exit__(None, None, None)  # fsync + rename; removes the temp file itself on error
        return ShardInfo(self.path.name, records, self._hasher.nbytes, self._hasher.sha256.hexdigest())

    def _discard(self, e: BaseException) -> None:
        with contextlib.suppress(Exception):
            self._z.close()
        self._ctx.__exit__(type(e), e, e.__traceback__)  # removes the temp file

    # --- caller side
    def close_async(self) -> Future:
        """Queue the rest and the rename; the future's result is the :class:`ShardInfo`."""
        if self._batch:
            self._submit_batch()
        return self._bg.submit(self._finish, self.records)

    def close(self) -> ShardInfo:
        fut = self.close_async()
        if self._own:
            self._bg.drain()
        return fut.result()

    def abort(self) -> None:
        """Discard this file (the helper thread must be idle: :meth:`RollingShardWriter.abort` drains it)."""
        if self._own:
            with contextlib.suppress(Exception):
                self._bg.drain()
        self._discard(RuntimeError("aborted"))


class FilteredShard:
    """The three files of a step that filters one shard: ``kept`` records, ``rejected`` ones (with their
    ``reject``), ``quarantine`` (unreadable lines). Used as a context manager: if the block raises, all
    three are aborted (no half-written file is left under a final name); :meth:`close` commits them and
    returns the kept file's :class:`ShardInfo`."""

    def __init__(self, kept: str | Path, rejected: str | Path, quarantine: str | Path, level: int = 3):
        self.kept = ZstdJsonlWriter(kept, level)
        self.rejected = ZstdJsonlWriter(rejected, level)
        self.quarantine = ZstdJsonlWriter(quarantine, level)

    def __enter__(self) -> FilteredShard:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if kind is not None:
            for w in (self.kept, self.rejected, self.quarantine):
                w.abort()

    def close(self) -> ShardInfo:
        info = self.kept.close()
        self.rejected.close()
        self.quarantine.close()
        return info


class RollingShardWriter:
    """Writes records into consecutive shards, starting a new one at a record or byte limit.

    A full shard is finished (compressed, renamed into place) on the helper thread while the next fills.
    """

    def __init__(
        self,
        folder: str | Path,
        records_per_shard: int,
        bytes_per_shard: int | None = None,
        level: int = 3,
        name=shard_name,
    ):
        self.folder = Path(folder)
        self.records_per_shard = records_per_shard
        self.bytes_per_shard = bytes_per_shard
        self.level = level
        self.name = name
        self.shards: list[ShardInfo] = []
        self._closing: list[Future] = []  # ShardInfo of each finished shard, in order
        self._cur: ZstdJsonlWriter | None = None
        self._bg = Background()
        self._dumps = orjson.dumps
        self._opt = orjson.OPT_APPEND_NEWLINE

    def write(self, record: dict) -> None:
        cur = self._cur
        if cur is None:
            cur = self._cur = ZstdJsonlWriter(
                self.folder / self.name(len(self._closing)), self.level, self._bg
            )
        cur.write_line(self._dumps(record, option=self._opt))
        if cur.records >= self.records_per_shard or (
            self.bytes_per_shard is not None and cur.raw_bytes >= self.bytes_per_shard
        ):
            self._closing.append(cur.close_async())
            self._cur = None

    def close(self) -> list[ShardInfo]:
        if self._cur is not None:
            self._closing.append(self._cur.close_async())
            self._cur = None
        self._bg.drain()
        self.shards = [f.result() for f in self._closing]
        return self.shards

    def abort(self) -> None:
        """Stop after an error: wait for the helper thread (its own errors are dropped, the caller is
        already raising one) and remove the unfinished shard."""
        with contextlib.suppress(Exception):
            self._bg.drain()
        if self._cur is not None:
            self._cur.abort()
            self._cur = None


def iter_shard_lines(path: str | Path, max_bytes: int = 1 << 30) -> Iterator[bytes]:
    with open_stream(path) as f:
        for _, line in iter_lines(f, max_bytes):
            if line:
                yield line  # type: ignore[misc]


def read_shard(path: str | Path) -> Iterator[dict]:
    """Records of one shard, in order."""
    for line in iter_shard_lines(path):
        yield orjson.loads(line)


def list_shards(folder: str | Path) -> list[Path]:
    """Shards under ``folder`` (recursively), sorted by path."""
    return sorted(p for p in Path(folder).rglob(SHARD_GLOB) if p.is_file())


def write_manifest(
    folder: str | Path,
    *,
    shards: list[ShardInfo],
    inputs: list[dict],
    config_hash: str,
    read: int,
    quarantined: dict[str, int],
    extra: dict | None = None,
) -> dict:
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config_hash": config_hash,
        "records": sum(s.records for s in shards),
        "read": read,
        "quarantined": dict(sorted(quarantined.items())),
        "inputs": inputs,
        "shards": [asdict(s) for s in shards],
        **(extra or {}),
    }
    atomic_write_bytes(Path(folder) / MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return manifest


def read_manifest(folder: str | Path) -> dict:
    return orjson.loads((Path(folder) / MANIFEST).read_bytes())


def input_info(path: str | Path, pieces: int) -> dict:
    st = os.stat(path)
    return {"path": str(path), "bytes": st.st_size, "pieces": pieces}
