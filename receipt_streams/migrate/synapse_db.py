"""Read a Synapse database (SQLite, or PostgreSQL with the `synapse-postgres` extra), read-only
and in pages, so a large homeserver's tables never sit in memory at once."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from receipt_streams.migrate.synapse_rows import ReceiptRow

RECEIPT_COLUMNS = (
    "stream_id, room_id, receipt_type, user_id, event_id, thread_id, data, event_stream_ordering"
)
CHUNK = 500  # IDs per `IN (...)` query
RELATION_HOPS = 3  # the fold follows relations at most this far to find an event's thread


class SynapseDatabase:
    def __init__(self, conn: Any, placeholder: str, name: str) -> None:
        self.conn, self.placeholder, self.name = conn, placeholder, name

    @classmethod
    def open(cls, target: str) -> SynapseDatabase:
        """A SQLite file path, or a `postgresql://` URL (needs psycopg: install the
        `receipt-streams[synapse-postgres]` extra)."""
        if target.startswith(("postgres://", "postgresql://")):
            try:
                import psycopg
            except ImportError:
                raise SystemExit(
                    "reading PostgreSQL needs psycopg: "
                    "pip install 'receipt-streams[synapse-postgres]'"
                ) from None
            conn = psycopg.connect(target, autocommit=True)
            conn.read_only = True
            return cls(conn, "%s", "postgresql")
        conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
        return cls(conn, "?", "sqlite")

    def close(self) -> None:
        self.conn.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.cursor()
        try:
            cur.execute(sql.replace("?", self.placeholder), tuple(params))
            return list(cur.fetchall())
        finally:
            cur.close()

    def _chunks(self, sql: str, ids: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        """`sql` with `{ids}` for an IN list, run over `ids` a chunk at a time."""
        for i in range(0, len(ids), CHUNK):
            chunk = ids[i : i + CHUNK]
            yield from self._query(sql.format(ids=", ".join("?" * len(chunk))), chunk)

    # --- receipts -------------------------------------------------------------------

    def count_receipts(self, after: int) -> int:
        return self._query("SELECT COUNT(*) FROM receipts_linearized WHERE stream_id > ?", [after])[
            0
        ][0]

    def receipt_pages(self, after: int, page: int) -> Iterator[list[ReceiptRow]]:
        """Pages in stream_id order; a page never splits rows that share a stream_id."""
        sql = f"SELECT {RECEIPT_COLUMNS} FROM receipts_linearized WHERE stream_id {{op}} ? "
        while True:
            rows = self._query(sql.format(op=">") + "ORDER BY stream_id LIMIT ?", [after, page])
            if not rows:
                return
            if len(rows) == page:
                last = rows[-1][0]
                rows = [r for r in rows if r[0] != last] + self._query(sql.format(op="="), [last])
            after = rows[-1][0]
            yield [ReceiptRow(*r) for r in rows]

    # --- what the fold needs to accept them -------------------------------------------

    def receipt_rooms(self, after: int) -> list[str]:
        return [
            r[0]
            for r in self._query(
                "SELECT DISTINCT room_id FROM receipts_linearized WHERE stream_id > ? "
                "ORDER BY room_id",
                [after],
            )
        ]

    def memberships(self, rooms: Sequence[str]) -> list[tuple[str, str, str, int]]:
        """(room, user, membership, stream ordering of the member event): each user's current
        membership in `rooms`, in stream order."""
        rows = list(
            self._chunks(
                "SELECT c.room_id, c.state_key, c.membership, e.stream_ordering "
                "FROM current_state_events AS c JOIN events AS e ON e.event_id = c.event_id "
                "WHERE c.type = 'm.room.member' AND c.room_id IN ({ids})",
                rooms,
            )
        )
        return sorted(rows, key=lambda r: r[3])

    def receipt_events(self, after: int) -> list[str]:
        return [
            r[0]
            for r in self._query(
                "SELECT DISTINCT event_id FROM receipts_linearized WHERE stream_id > ?", [after]
            )
        ]

    def events(
        self, event_ids: Sequence[str]
    ) -> list[tuple[str, str, str, int, int, tuple[str, str] | None]]:
        """(room, event, sender, stream ordering, origin_server_ts, relation) for `event_ids`
        and the events they relate to (up to RELATION_HOPS), in stream order."""
        relations: dict[str, tuple[str, str]] = {}
        wanted, frontier = set(event_ids), list(event_ids)
        for _ in range(RELATION_HOPS):
            parents = []
            for child, parent, rel_type in self._chunks(
                "SELECT event_id, relates_to_id, relation_type FROM event_relations "
                "WHERE event_id IN ({ids})",
                frontier,
            ):
                relations[child] = (rel_type, parent)
                if parent not in wanted:
                    wanted.add(parent)
                    parents.append(parent)
            frontier = parents
            if not frontier:
                break
        rows = self._chunks(
            "SELECT room_id, event_id, sender, stream_ordering, origin_server_ts FROM events "
            "WHERE event_id IN ({ids})",
            sorted(wanted),
        )
        out = [(*r, relations.get(r[1])) for r in rows]
        return sorted(out, key=lambda r: r[3])
