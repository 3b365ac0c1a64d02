"""The committed `schemas/` are exactly what the models generate, and they accept what the
service emits."""

from __future__ import annotations

from pathlib import Path

import orjson
from jsonschema import Draft202012Validator

from receipt_streams.core.deltas import build_delta
from receipt_streams.core.receipts import Receipt, ReceiptKey
from receipt_streams.entrypoints.schemas import all_schemas, render, write_schemas

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_committed_schemas_match_the_models() -> None:
    expected = {name: render(schema) for name, schema in all_schemas().items()}
    on_disk = {p.name: p.read_bytes() for p in SCHEMAS.glob("*.json")}
    assert set(on_disk) == set(expected), "run `make schemas`"
    drifted = [name for name in expected if on_disk[name] != expected[name]]
    assert not drifted, f"schemas drifted from the models, run `make schemas`: {drifted}"


def test_write_schemas_writes_every_topic(tmp_path: Path) -> None:
    names = {p.name for p in write_schemas(tmp_path)}
    assert {
        "receipts.client.v1.json",
        "receipts.sync.v1.json",
        "receipts.dlq.v1.json",
        "receipts.federation.v1.json",
        "federation.edus.v1.json",
        "rooms.membership.v1.json",
        "rooms.events.v1.json",
        "receipts-changelog.key.json",
        "receipts-changelog.value.json",
    } <= names


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(orjson.loads((SCHEMAS / name).read_bytes()))


def test_schemas_accept_what_the_core_emits() -> None:
    key = ReceiptKey("!r:hs1", "@a:hs1", "m.read", "main")
    value = Receipt("$e", 3, 17, {"ts": 17, "thread_id": "main"})
    delta = build_delta(
        "!r:hs1",
        4,
        18,
        [
            (key, value),
            (
                ReceiptKey("!r:hs1", "@b:hs1", "m.read.private", None),
                Receipt("$e", 3, 1, {"ts": 1}),
            ),
            (ReceiptKey("!r:hs1", "@b:hs1", "m.fully_read", None), Receipt("$e", 3, 1, {"ts": 1})),
        ],
    )
    assert delta is not None
    _validator("receipts.sync.v1.json").validate(delta)
    _validator("receipts-changelog.key.json").validate(orjson.loads(key.encode()))
    _validator("receipts-changelog.value.json").validate(orjson.loads(value.encode()))
    _validator("receipts.client.v1.json").validate(
        {
            "room_id": "!r:hs1",
            "user_id": "@a:hs1",
            "receipt_type": "m.read",
            "event_id": "$e",
            "ts": 1,
        }
    )


def test_internal_federation_records_match_their_schemas() -> None:
    from receipt_streams.core.federation import RemoteReceipt, outbox_record

    remote = RemoteReceipt("hs2", "!r:hs1", "@u:hs2", "$e", {"ts": 1, "x": 2})
    _validator("internal.federation-in.json").validate(orjson.loads(remote.encode()))
    key = ReceiptKey("!r:hs1", "@a:hs1", "m.read", None)
    record = outbox_record(key, Receipt("$e", 1, 1, {"ts": 1}), {"hs2", "hs3"})
    _validator("internal.federation-out.json").validate(orjson.loads(record))


def test_sliding_sync_schemas_refuse_what_the_endpoint_refuses() -> None:
    request = _validator("http.sliding-sync-receipts.request.json")
    assert request.is_valid({"user_id": "@a:hs1", "rooms": {"!r:hs1": {"timeline": ["$e"]}}})
    assert not request.is_valid({"rooms": {}})
    assert not request.is_valid({"user_id": "@a:hs1", "rooms": {"!r:hs1": {"status": "x"}}})
    assert not request.is_valid({"user_id": "@a:hs1", "timeout": -1})


def test_schemas_refuse_a_malformed_delta() -> None:
    errors = list(_validator("receipts.sync.v1.json").iter_errors({"room_id": "!r:hs1"}))
    assert {e.validator for e in errors} == {"required"}


def test_feed_records_match_their_schemas() -> None:
    from receipt_streams.core.feeds import PositionKey, history_value, position_value

    key = PositionKey("!r:hs1", "@a:hs1", None)
    position = Receipt("$e", 3, 17, {"ts": 17})
    _validator("receipts.read-positions.v1.key.json").validate(orjson.loads(key.encode()))
    _validator("receipts.read-positions.v1.value.json").validate(
        orjson.loads(position_value(key, position))
    )
    slot = ReceiptKey("!r:hs1", "@a:hs1", "m.read", "$root")
    _validator("receipts.history.v1.key.json").validate(orjson.loads(slot.encode()))
    history = _validator("receipts.history.v1.value.json")
    history.validate(orjson.loads(history_value(slot, None, position, None, "federation")))
    history.validate(orjson.loads(history_value(slot, position, position, 10, "client")))
    bad = orjson.loads(history_value(slot, None, position, None, "client")) | {"source": "x"}
    assert list(history.iter_errors(bad))
