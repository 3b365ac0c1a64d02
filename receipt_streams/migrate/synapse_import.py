"""`receipt-streams import-synapse`: a Synapse's read receipts into the input topics, so a
deployment can switch to receipt-streams without losing read state (README: Migrating from
Synapse). Membership and events go first, so the fold accepts the receipts at once."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm import tqdm

from receipt_streams.config import Settings
from receipt_streams.migrate.kafka_writer import RecordWriter
from receipt_streams.migrate.synapse_db import SynapseDatabase
from receipt_streams.migrate.synapse_rows import (
    Record,
    event_record,
    map_receipts,
    membership_record,
)


@dataclass
class Summary:
    database: str
    dry_run: bool
    after_stream_id: int
    receipts_read: int = 0
    client_receipts: int = 0
    federation_edus: int = 0
    federation_receipts: int = 0
    membership: int = 0
    events: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    last_stream_id: int | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _room_records(db: SynapseDatabase, after: int) -> tuple[list[Record], list[Record], dict]:
    """Membership and event records of the receipts' rooms, and who is joined where. Synapse's
    backfilled events have negative stream orderings: they count as 0, older than any other."""
    joined: dict[str, set[str]] = {}
    members = []
    for room, user, membership, pos in db.memberships(db.receipt_rooms(after)):
        members.append(membership_record(room, user, membership, max(0, pos)))
        if membership == "join":
            joined.setdefault(room, set()).add(user)
    events = [
        event_record(room, event_id, sender, max(0, pos), max(0, ts or 0), relation)
        for room, event_id, sender, pos, ts, relation in db.events(db.receipt_events(after))
    ]
    return members, events, joined


async def import_synapse(
    s: Settings,
    database: str,
    *,
    dry_run: bool = False,
    with_rooms: bool = True,
    after: int = 0,
    page: int = 5000,
    progress: bool = True,
) -> Summary:
    started = time.monotonic()
    db = SynapseDatabase.open(database)
    summary = Summary(db.name, dry_run, after)
    skipped: Counter[str] = Counter()
    writer = None if dry_run else RecordWriter(s)
    try:
        if writer is not None:
            await writer.__aenter__()
        joined = None
        if with_rooms:
            members, events, joined = _room_records(db, after)
            summary.membership, summary.events = len(members), len(events)
            if writer is not None:
                for i in range(0, len(members), page):
                    await writer.write(members[i : i + page])
                for i in range(0, len(events), page):
                    await writer.write(events[i : i + page])
        total = db.count_receipts(after)
        with tqdm(total=total, unit="receipt", desc="receipts", disable=not progress) as bar:
            for rows in db.receipt_pages(after, page):
                mapped = map_receipts(rows, s.server_name, int(time.time() * 1000), joined)
                if writer is not None:
                    await writer.write(mapped.records)
                skipped.update(mapped.skipped)
                summary.receipts_read += len(rows)
                for r in mapped.records:
                    if r.kind == "client":
                        summary.client_receipts += 1
                    else:
                        summary.federation_edus += 1
                        summary.federation_receipts += sum(
                            len(users)
                            for by_type in r.value["edu"]["content"].values()
                            for users in by_type.values()
                        )
                summary.last_stream_id = rows[-1].stream_id
                bar.update(len(rows))
    finally:
        if writer is not None and writer.producer is not None:
            await writer.__aexit__(None, None, None)
        db.close()
    summary.skipped = dict(sorted(skipped.items()))
    summary.seconds = round(time.monotonic() - started, 3)
    return summary
