"""`receipt-streams schemas`: JSON Schemas of every topic, generated from the core models.

`tests/entrypoints/test_schemas.py` fails when `schemas/` drifts from what this generates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter

from receipt_streams.config import Settings
from receipt_streams.core import models, sliding_sync_models

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _schema(kind: type[BaseModel] | Any, title: str, description: str) -> dict[str, Any]:
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        body = kind.model_json_schema(mode="serialization")
    else:
        body = TypeAdapter(kind).json_schema(mode="serialization")
    return {"$schema": DRAFT, **body, "title": title, "description": description}


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema. Names follow the default topic names (see config.py)."""
    s = Settings()
    return {
        f"{s.topic_client}.json": _schema(
            models.ClientReceipt, s.topic_client, "A receipt from a local user (key: room_id)."
        ),
        f"{s.topic_federation}.json": _schema(
            models.FederationReceipts,
            s.topic_federation,
            "An inbound m.receipt EDU as the remote server sent it (key: origin).",
        ),
        f"{s.topic_membership}.json": _schema(
            models.MembershipChange,
            s.topic_membership,
            "A membership change in stream order (key: room_id).",
        ),
        f"{s.topic_events}.json": _schema(
            models.RoomEvent,
            s.topic_events,
            "An event persisted in a room, in stream order (key: room_id).",
        ),
        f"{s.topic_sync}.json": _schema(
            models.SyncDelta, s.topic_sync, "One room's batched receipt changes (key: room_id)."
        ),
        f"{s.topic_edus}.json": _schema(
            models.OutboundEdu,
            s.topic_edus,
            "One m.receipt EDU for one destination (key: destination).",
        ),
        f"{s.topic_dlq}.json": _schema(
            models.DlqRecord,
            s.topic_dlq,
            "A rejected input record with its raw bytes (key: source topic).",
        ),
        f"{s.topic_admin}.json": _schema(
            models.AdminCommand,
            s.topic_admin,
            "An operator's command (compacted): purge_room keyed by room_id; erase_user "
            "keyed by user_id, one copy per partition.",
        ),
        "internal.federation-in.json": _schema(
            models.FederationEntry,
            f"{s.topic_federation_in}",
            "Internal: one inbound EDU entry repartitioned to its room (key: room_id).",
        ),
        "internal.federation-out.json": _schema(
            models.OutboxRecord,
            f"{s.topic_outbox}",
            "Internal: a local m.read change to federate (key: room_id).",
        ),
        "receipts-changelog.key.json": _schema(
            models.ChangelogKey,
            f"{s.changelog_receipts} key",
            "[room_id, user_id, receipt_type, thread_id or null]. The topic is "
            "<app_id>-receipts-changelog, compacted: the analytics feed.",
        ),
        "receipts-changelog.value.json": _schema(
            models.ReceiptValue,
            f"{s.changelog_receipts} value",
            "The latest receipt of the key's slot.",
        ),
        f"{s.topic_read_positions}.key.json": _schema(
            models.ReadPositionKey,
            f"{s.topic_read_positions} key",
            "[room_id, user_id, thread_id or null]: one local user's read position in one "
            "room and thread. Compacted; partitioned like the room's input records.",
        ),
        f"{s.topic_read_positions}.value.json": _schema(
            models.ReadPosition,
            f"{s.topic_read_positions} value",
            "The further of the user's m.read and m.read.private receipts of the slot; "
            "written only when it moves forward. Null: a tombstone.",
        ),
        f"{s.topic_history}.key.json": _schema(
            models.ChangelogKey,
            f"{s.topic_history} key",
            "[room_id, user_id, receipt_type, thread_id or null], as on the receipts "
            "changelog. Append-only; partitioned like the room's input records.",
        ),
        f"{s.topic_history}.value.json": _schema(
            models.HistoryRecord,
            f"{s.topic_history} value",
            "One accepted change of the receipts table: once per change, never for a duplicate.",
        ),
        "http.sliding-sync-receipts.request.json": _schema(
            sliding_sync_models.SlidingReceiptsRequest,
            "POST /_receipts/v1/sliding_sync request",
            "The homeserver's sliding-sync handler, per response: the user, the connection, "
            "its pos, and per room its status and timeline.",
        ),
        "http.sliding-sync-receipts.response.json": _schema(
            sliding_sync_models.SlidingReceiptsResponse,
            "POST /_receipts/v1/sliding_sync response",
            "The extensions.receipts object, the next pos, and the positions to remember.",
        ),
    }


def render(schema: dict[str, Any]) -> bytes:
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_schemas(out: str | Path) -> list[Path]:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        path = folder / name
        path.write_bytes(render(schema))
        written.append(path)
    return written
