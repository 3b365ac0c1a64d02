"""State backends of the batch fold: one store per (table, partition), behind one interface.

A store holds exactly a prefix of its changelog partition: it is written only after the
changelog records of a batch are acknowledged, in one atomic write that also records the
changelog offset reached, so a restart restores from that offset on and a crash can never
leave a value that is in no changelog. `RocksStore` is the production backend, `MemoryStore`
the one for unit tests; `Overlay` is the view the core folds a batch through.
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

Writes = Mapping[bytes, bytes | None]  # None: delete (a tombstone on the changelog)

# Table keys are JSON arrays (they start with "["), so this key can never be a table key.
_OFFSET_KEY = b"\x00changelog-offset"
_UNSET = object()


class TableStore(ABC):
    @abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def items(self) -> Iterator[tuple[bytes, bytes]]: ...

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
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = Rdict(str(path), Options(raw_mode=True))
        raw = self.db.get(_OFFSET_KEY)
        self._offset = int(raw) if raw is not None else None

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.db.get(key)
        return value

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self.db.items():
            if key != _OFFSET_KEY:
                yield key, value

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
    writes. `pending` is what the batch changed (None: deleted), in first-write order."""

    def __init__(self, store: TableStore) -> None:
        self.store = store
        self.pending: dict[bytes, bytes | None] = {}

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        value = self.pending.get(key, _UNSET)
        if value is _UNSET:
            value = self.store.get(key)
        return default if value is None else value  # type: ignore[return-value]

    def __getitem__(self, key: bytes) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.pending[key] = value

    def __delitem__(self, key: bytes) -> None:
        if self.get(key) is None:
            raise KeyError(key)
        self.pending[key] = None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self.get(key) is not None

    def items(self) -> Iterator[tuple[bytes, bytes]]:  # type: ignore[override]
        for key, value in self.store.items():
            if key not in self.pending:
                yield key, value
        for key, pending in list(self.pending.items()):
            if pending is not None:
                yield key, pending

    def __iter__(self) -> Iterator[bytes]:
        return (key for key, _ in self.items())

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    def take(self) -> dict[bytes, bytes | None]:
        """The batch's writes, handed over; the overlay starts a new batch."""
        writes, self.pending = self.pending, {}
        return writes
