"""State backends of the batch fold: one store per (table, partition), behind one interface.

A store holds exactly a prefix of its changelog partition: it is written only after the
changelog records of a batch are acknowledged, in one atomic write that also records the
changelog offset reached, so a restart restores from that offset on and a crash can never
leave a value that is in no changelog. `RocksStore` is the production backend, `MemoryStore`
the one for unit tests; `Overlay` is the view the core folds a batch through.

Memory is bounded in bytes: each store's read cache by `cache_bytes`, and RocksDB's own
memory (block cache and memtables) by one `RocksMemory` shared by every store of a process.
Bytes kept beyond a call are copied first (`adapters/compact.py`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path

from rocksdict import (
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
)

from receipt_streams.adapters.compact import compact
from receipt_streams.adapters.isolation import NotTheRecords

Writes = Mapping[bytes, bytes | None]  # None: delete (a tombstone on the changelog)

# Table keys are JSON arrays (they start with "["), so this key can never be a table key.
_OFFSET_KEY = b"\x00changelog-offset"
_UNSET = object()
# Memory a read cache entry costs besides its key's and value's bytes: two bytes object
# headers and an OrderedDict entry (measured with tracemalloc: about 170 bytes).
ENTRY_OVERHEAD = 176
MiB = 1 << 20


class RocksMemory:
    """RocksDB's memory for every store of a process, bounded by `total_bytes`: one LRU block
    cache, which holds the data, index and filter blocks read, and to which the memtables
    are charged (a write buffer manager flushes the largest memtable once they reach half
    of it). `write_buffer_bytes` is one store's memtable size, the point it flushes at."""

    def __init__(self, total_bytes: int = 64 * MiB, write_buffer_bytes: int = 4 * MiB) -> None:
        self.total_bytes = total_bytes
        self.write_buffer_bytes = write_buffer_bytes
        self.cache = Cache(total_bytes)
        self.write_buffers = WriteBufferManager.new_write_buffer_manager_with_cache(
            total_bytes // 2, False, self.cache
        )

    def options(self) -> Options:
        options = Options(raw_mode=True)
        table = BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        # Index and bloom filter in small partitions, their top level pinned: an SST of 64 MB
        # has one index block of about 3 MB, larger than a shard of the block cache (1 MB
        # of 64 MB), so it was never kept and every point read decompressed it again (about
        # 1 ms a read at 1,000,000 keys in the read store; 6-9 us with partitions).
        table.set_index_type(BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_pin_top_level_index_and_filter(True)
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_size(self.write_buffer_bytes)
        options.set_max_write_buffer_number(2)
        options.set_write_buffer_manager(self.write_buffers)
        return options

    def usage(self) -> int:
        """Bytes held now: blocks cached, and memtables (charged to the cache)."""
        return self.cache.get_usage()


_default_memory: RocksMemory | None = None


class StoreInUse(RuntimeError):
    """A RocksDB database is open elsewhere (RocksDB locks its directory): two processes, or
    two opens in one process, on one data dir."""

    def __init__(self, path: Path, in_this_process: bool = False) -> None:
        self.path = path
        where = "already open in this process" if in_this_process else "in use by another process"
        super().__init__(
            f"{path} is {where} (it holds {path / 'LOCK'}): give each worker and API "
            "process a RECEIPT_STREAMS_DATA_DIR of its own"
        )


def open_rdict(path: Path, options: Options) -> Rdict:
    """Open (or create) a database with `options`. Given only `options`, rocksdict opens an
    existing database with the column-family options stored in its OPTIONS file, whose
    block cache and write buffer manager are then fresh defaults: neither the shared memory
    bound nor a table option changed since would apply after a restart.

    A database another open holds raises `StoreInUse` (rocksdict raises a bare `Exception`:
    "While lock file: .../LOCK: ..." from another process, "lock hold by current process"
    from this one; a LOCK it cannot even open, say for its permissions, is another error)."""
    try:
        return Rdict(str(path), options, column_families={"default": options})
    except Exception as exc:
        text = str(exc)
        in_this_process = "lock hold by current process" in text
        if not in_this_process and "While lock file" not in text:
            raise
        raise StoreInUse(path, in_this_process) from None


def claim_dir(path: Path) -> int:
    """Hold `path/LOCK` (a POSIX lock, as RocksDB takes on its own) for as long as the
    returned descriptor is open: `StoreInUse` when another process holds it. A worker claims
    its data dir so that a second worker on it stops at its start, whatever it would open;
    `ctl rebuild --local` sees the lock and refuses to wipe under it."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreInUse(path) from None
    return fd


def ensure_not_in_use(path: Path) -> None:
    """Raise `StoreInUse` when another process holds the database at `path` (RocksDB holds a
    POSIX lock on its LOCK file while the database is open). Only for a database this
    process has not opened: closing the probe would drop this process's own lock."""
    try:
        fd = os.open(path / "LOCK", os.O_RDWR)
    except OSError:
        return  # no database yet (or not ours to open: opening it will say so)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise StoreInUse(path) from None
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def default_memory() -> RocksMemory:
    """The memory of stores opened without one (tests, tools): shared too, and bounded."""
    global _default_memory
    if _default_memory is None:
        _default_memory = RocksMemory()
    return _default_memory


class StoreFailed(NotTheRecords):
    """Reading a store failed: a fault of the disk or the database, not of the record being
    folded, so the batch is not split for it (the loop restarts, and is reported stuck)."""


class TableStore(ABC):
    @abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def items(self) -> Iterator[tuple[bytes, bytes]]: ...

    def keys(self) -> Iterator[bytes]:
        return (key for key, _ in self.items())

    def prefix_keys(self, prefix: bytes) -> Iterator[bytes]:
        """Keys starting with `prefix` (a room's, for a purge), in key order."""
        return iter(sorted(k for k, _ in self.items() if k.startswith(prefix)))

    @abstractmethod
    def apply(self, writes: Writes, offset: int | None) -> None:
        """Write a batch atomically; `offset` is the last changelog offset it covers."""

    @property
    @abstractmethod
    def offset(self) -> int | None:
        """The last changelog offset held, or None when the store is empty."""

    def close(self) -> None:
        return None


class MemoryStore(TableStore):
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self._offset: int | None = None

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self.data.items()))

    def apply(self, writes: Writes, offset: int | None) -> None:
        for key, value in writes.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        if offset is not None:
            self._offset = offset

    @property
    def offset(self) -> int | None:
        return self._offset


class RocksStore(TableStore):
    """A RocksDB store, with two in-memory shortcuts, since a call into RocksDB costs as much
    as ten dict lookups and the fold reads a few keys per record:

    - a cache of the keys read last (first in, first out), absent keys included, at most
      `cache_bytes` of them (keys, values and `ENTRY_OVERHEAD` each), kept true by every
      write: a batch reads the same rooms' members, events and servers record after record;
    - with `index_keys`, every key of the store, so that a read of an absent key is a set
      lookup: for a small table asked mostly for keys it does not have (the held receipts,
      asked at every join and event).

    RocksDB's own memory is `memory`'s, shared with the process's other stores."""

    def __init__(
        self,
        path: Path,
        index_keys: bool = False,
        cache_bytes: int = 0,
        memory: RocksMemory | None = None,
    ) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.memory = memory or default_memory()
        self.db = open_rdict(path, self.memory.options())
        raw = self.db.get(_OFFSET_KEY)
        self._offset = int(raw) if raw is not None else None
        self._keys: set[bytes] | None = None
        if index_keys:
            self._keys = {key for key, _ in self.items()}
        self.cache_bytes = cache_bytes
        self.cached_bytes = 0  # what the cache's entries cost now, by `entry_cost`
        self._cache: OrderedDict[bytes, bytes | None] = OrderedDict()

    @staticmethod
    def entry_cost(key: bytes, value: bytes | None) -> int:
        return len(key) + (len(value) if value is not None else 0) + ENTRY_OVERHEAD

    def get(self, key: bytes) -> bytes | None:
        value = self._cache.get(key, _UNSET)
        if value is not _UNSET:
            return value  # type: ignore[return-value]
        if self._keys is not None and key not in self._keys:
            return None
        try:
            value = self.db.get(key)
        except Exception as exc:  # the disk, not the record being folded: never park for it
            raise StoreFailed(f"{self.path}: {exc!r}") from exc
        if self.cache_bytes > 0:
            self._remember(key, value)  # type: ignore[arg-type]
        return value  # type: ignore[return-value]

    def _remember(self, key: bytes, value: bytes | None) -> None:
        cache = self._cache
        self.cached_bytes += self.entry_cost(key, value)
        cache[compact(key)] = value  # the caller's key may be orjson's; the value is RocksDB's
        while self.cached_bytes > self.cache_bytes and cache:
            old_key, old_value = cache.popitem(last=False)
            self.cached_bytes -= self.entry_cost(old_key, old_value)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        try:
            for key, value in self.db.items():
                if key != _OFFSET_KEY:
                    yield key, value
        except Exception as exc:
            raise StoreFailed(f"{self.path}: {exc!r}") from exc

    def keys(self) -> Iterator[bytes]:
        """Every key, values unread (a user erasure's pass)."""
        for key in self.db.keys():  # noqa: SIM118 (a RocksDB iterator)
            if key != _OFFSET_KEY:
                yield key

    def prefix_keys(self, prefix: bytes) -> Iterator[bytes]:
        """One seek, then the keys in order while they share the prefix."""
        for key in self.db.keys(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key

    def apply(self, writes: Writes, offset: int | None) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, value in writes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if offset is not None:
            batch.put(_OFFSET_KEY, str(offset).encode())
        self.db.write(batch)
        cache = self._cache
        for key, value in writes.items():
            old = cache.get(key, _UNSET)
            if old is not _UNSET:  # kept true; not added: a restore writes every key once
                if value is not None:
                    value = compact(value)
                cache[key] = value
                self.cached_bytes += self.entry_cost(key, value) - self.entry_cost(key, old)  # type: ignore[arg-type]
            if self._keys is not None:
                if value is None:
                    self._keys.discard(key)
                elif key not in self._keys:
                    self._keys.add(compact(key))
        while self.cached_bytes > self.cache_bytes and cache:  # an entry grew
            old_key, old_value = cache.popitem(last=False)
            self.cached_bytes -= self.entry_cost(old_key, old_value)
        if offset is not None:
            self._offset = offset

    @property
    def offset(self) -> int | None:
        return self._offset

    def close(self) -> None:
        self.db.close()

    @staticmethod
    def destroy(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)


class Overlay(MutableMapping[bytes, bytes]):
    """A store seen through the writes of the batch in progress: what the core reads and
    writes. `pending` is what the batch changed (None: deleted), in first-write order.

    `seal` hands a batch's writes over while they are made durable and keeps them visible
    (`sealed`, oldest first), so the next batch can be folded on top of them meanwhile;
    `settle` forgets them once the store holds them. Written keys and values are kept as
    `compact` copies: two batches of them are in memory at once, and the stores keep some."""

    def __init__(self, store: TableStore) -> None:
        self.store = store
        self.pending: dict[bytes, bytes | None] = {}
        self.sealed: list[dict[bytes, bytes | None]] = []

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        value = self.pending.get(key, _UNSET)
        if value is _UNSET:
            for layer in reversed(self.sealed):
                value = layer.get(key, _UNSET)
                if value is not _UNSET:
                    break
            else:
                value = self.store.get(key)
        return default if value is None else value  # type: ignore[return-value]

    def __getitem__(self, key: bytes) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        pending = self.pending
        if key not in pending:
            key = compact(key)
        pending[key] = compact(value)

    def __delitem__(self, key: bytes) -> None:
        if self.get(key) is None:
            raise KeyError(key)
        self.pending[compact(key)] = None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self.get(key) is not None

    def items(self) -> Iterator[tuple[bytes, bytes]]:  # type: ignore[override]
        newer: dict[bytes, bytes | None] = {}
        for layer in (*self.sealed, self.pending):
            newer.update(layer)
        for key, value in self.store.items():
            if key not in newer:
                yield key, value
        for key, value in newer.items():
            if value is not None:
                yield key, value

    def __iter__(self) -> Iterator[bytes]:
        return (key for key, _ in self.items())

    def keys(self) -> Iterator[bytes]:  # type: ignore[override]
        """Every key, values unread: the store's less those the batches deleted, plus those
        they wrote."""
        newer: dict[bytes, bytes | None] = {}
        for layer in (*self.sealed, self.pending):
            newer.update(layer)
        for key in self.store.keys():  # noqa: SIM118 (a TableStore is not iterable)
            if key not in newer:
                yield key
        for key, value in newer.items():
            if value is not None:
                yield key

    def prefix_keys(self, prefix: bytes) -> Iterator[bytes]:
        """The store's keys with `prefix` (a seek), less those the batches deleted, plus
        those they wrote."""
        newer: dict[bytes, bytes | None] = {}
        for layer in (*self.sealed, self.pending):
            newer.update(layer)
        for key in self.store.prefix_keys(prefix):
            if key not in newer:
                yield key
        for key, value in newer.items():
            if value is not None and key.startswith(prefix):
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    def take(self) -> dict[bytes, bytes | None]:
        """The batch's writes, handed over; the overlay starts a new batch."""
        writes, self.pending = self.pending, {}
        return writes

    def seal(self) -> dict[bytes, bytes | None]:
        """The batch's writes, handed over but still seen until `settle`d; the overlay
        starts a new batch on top of them."""
        writes = self.take()
        self.sealed.append(writes)
        return writes

    def discard(self) -> None:
        """Forget every write the store does not hold (their batches failed)."""
        self.pending = {}
        self.sealed = []

    def settle(self, writes: dict[bytes, bytes | None]) -> None:
        """The store now holds `writes`, the oldest sealed batch: stop keeping them."""
        if not self.sealed or self.sealed[0] is not writes:
            raise ValueError("batches settle in the order they were sealed")
        self.sealed.pop(0)
