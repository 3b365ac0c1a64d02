"""Raw record bytes to payloads, or a Rejection with the right DLQ reason."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from receipt_streams.core.models import (
    ClientReceipt,
    FederationReceipts,
    MembershipChange,
    RoomEvent,
)
from receipt_streams.core.parsing import Rejection, check_key, parse_payload
from receipt_streams.core.reasons import Reason

LIMIT = 65_536
RECEIPT = {
    "room_id": "!r:hs1",
    "user_id": "@a:hs1",
    "receipt_type": "m.read",
    "event_id": "$e1",
    "ts": 1_700_000_000_000,
}


def receipt(**changes: Any) -> bytes:
    value = {**RECEIPT, **changes}
    return orjson.dumps({k: v for k, v in value.items() if v is not ...})


def reason_of(model: type, raw: bytes | None, limit: int = LIMIT) -> Reason:
    parsed = parse_payload(model, raw, limit)
    assert isinstance(parsed, Rejection), parsed
    assert parsed.message  # every rejection explains itself
    return parsed.reason


def test_valid_client_receipt() -> None:
    parsed = parse_payload(ClientReceipt, receipt(thread_id="$root"), LIMIT)
    assert parsed == ClientReceipt(
        room_id="!r:hs1",
        user_id="@a:hs1",
        receipt_type="m.read",
        event_id="$e1",
        thread_id="$root",
        ts=1_700_000_000_000,
    )


def test_thread_id_is_optional_and_extra_fields_are_ignored() -> None:
    parsed = parse_payload(ClientReceipt, receipt(extra={"x": 1}), LIMIT)
    assert isinstance(parsed, ClientReceipt)
    assert parsed.thread_id is None


@pytest.mark.parametrize("receipt_type", ["m.read", "m.read.private", "m.fully_read"])
def test_every_receipt_type_parses(receipt_type: str) -> None:
    parsed = parse_payload(ClientReceipt, receipt(receipt_type=receipt_type), LIMIT)
    assert isinstance(parsed, ClientReceipt)
    assert parsed.receipt_type == receipt_type


@pytest.mark.parametrize(
    "raw",
    [
        None,  # tombstone
        b"",
        b"not json",
        b"{",
        b"\xff\xfe\x00",  # not UTF-8
        b"[]",
        b"[1, 2]",  # JSON, but an array
        b'"a string"',
        b"42",
        b"null",
    ],
)
def test_not_a_json_object(raw: bytes | None) -> None:
    assert reason_of(ClientReceipt, raw) is Reason.NOT_JSON


def test_tombstone_message_says_so() -> None:
    parsed = parse_payload(ClientReceipt, None, LIMIT)
    assert isinstance(parsed, Rejection)
    assert "tombstone" in parsed.message


@pytest.mark.parametrize(
    "raw",
    [
        b"{}",
        receipt(ts="1700000000000"),  # strict: a string is never coerced to an int
        receipt(ts=1.5),
        receipt(ts=True),
        receipt(ts=-1),
        receipt(ts=2**63),
        receipt(ts=None),
        receipt(ts=...),  # missing
        receipt(room_id=5),
        receipt(user_id=["@a:hs1"]),
        receipt(event_id=None),
    ],
)
def test_wrong_shape(raw: bytes) -> None:
    assert reason_of(ClientReceipt, raw) is Reason.BAD_SHAPE


@pytest.mark.parametrize(
    "changes",
    [
        {"room_id": "r:hs1"},
        {"room_id": "!r:bad host"},
        {"room_id": "!" + "r" * 300},
        {"user_id": "a:hs1"},
        {"user_id": "@a b:hs1"},
        {"user_id": "@a:hs1:99x"},
        {"user_id": "@a:[::1%x y]"},
        {"event_id": "e1"},
        {"event_id": "$e\x00"},
    ],
)
def test_bad_ids(changes: dict[str, Any]) -> None:
    assert reason_of(ClientReceipt, receipt(**changes)) is Reason.BAD_ID


@pytest.mark.parametrize("receipt_type", ["m.foo", "m.receipt", "M.READ", "", 7])
def test_unknown_receipt_type(receipt_type: object) -> None:
    assert reason_of(ClientReceipt, receipt(receipt_type=receipt_type)) is Reason.BAD_RECEIPT_TYPE


@pytest.mark.parametrize("thread_id", ["", 5, ["$root"], {"id": "$root"}, "x" * 256])
def test_invalid_thread_id(thread_id: object) -> None:
    assert reason_of(ClientReceipt, receipt(thread_id=thread_id)) is Reason.INVALID_THREAD


def test_explicit_null_thread_id_is_unthreaded() -> None:
    parsed = parse_payload(ClientReceipt, receipt(thread_id=None), LIMIT)
    assert isinstance(parsed, ClientReceipt)
    assert parsed.thread_id is None


def test_too_large_is_checked_before_parsing() -> None:
    raw = receipt(padding="x" * 200)
    assert reason_of(ClientReceipt, raw, limit=len(raw) - 1) is Reason.TOO_LARGE
    assert isinstance(parse_payload(ClientReceipt, raw, len(raw)), ClientReceipt)
    # Oversized garbage is too_large, not not_json: the size limit comes first.
    assert reason_of(ClientReceipt, b"\xff" * 100, limit=10) is Reason.TOO_LARGE


def test_membership_change() -> None:
    raw = orjson.dumps(
        {"room_id": "!r:hs1", "user_id": "@a:hs1", "membership": "join", "stream_pos": 3}
    )
    parsed = parse_payload(MembershipChange, raw, LIMIT)
    assert parsed == MembershipChange(
        room_id="!r:hs1", user_id="@a:hs1", membership="join", stream_pos=3
    )
    bad = orjson.dumps(
        {"room_id": "!r:hs1", "user_id": "@a:hs1", "membership": "joined", "stream_pos": 3}
    )
    assert reason_of(MembershipChange, bad) is Reason.BAD_SHAPE
    bad_pos = orjson.dumps(
        {"room_id": "!r:hs1", "user_id": "@a:hs1", "membership": "join", "stream_pos": "3"}
    )
    assert reason_of(MembershipChange, bad_pos) is Reason.BAD_SHAPE


def test_room_event_with_relation() -> None:
    value = {
        "room_id": "!r:hs1",
        "event_id": "$e2",
        "sender": "@a:hs1",
        "stream_pos": 7,
        "origin_server_ts": 1,
        "relates_to": {"rel_type": "m.thread", "event_id": "$root"},
    }
    parsed = parse_payload(RoomEvent, orjson.dumps(value), LIMIT)
    assert isinstance(parsed, RoomEvent)
    assert parsed.relates_to is not None
    assert (parsed.relates_to.rel_type, parsed.relates_to.event_id) == ("m.thread", "$root")
    bad_parent = {**value, "relates_to": {"rel_type": "m.thread", "event_id": "root"}}
    assert reason_of(RoomEvent, orjson.dumps(bad_parent)) is Reason.BAD_ID
    no_parent = {**value, "relates_to": {"rel_type": "m.thread"}}
    assert reason_of(RoomEvent, orjson.dumps(no_parent)) is Reason.BAD_SHAPE
    bad_sender = {**value, "sender": "nobody"}
    assert reason_of(RoomEvent, orjson.dumps(bad_sender)) is Reason.BAD_ID


def test_federation_receipts_origin_is_a_server_name() -> None:
    value = {
        "origin": "hs2:8448",
        "received_ts": 5,
        "edu": {"edu_type": "m.receipt", "content": {"!r:hs1": {}}},
    }
    assert isinstance(
        parse_payload(FederationReceipts, orjson.dumps(value), LIMIT), FederationReceipts
    )
    bad = {**value, "origin": "hs 2"}
    assert reason_of(FederationReceipts, orjson.dumps(bad)) is Reason.BAD_ID
    wrong_edu = {**value, "edu": {"edu_type": "m.typing", "content": {}}}
    assert reason_of(FederationReceipts, orjson.dumps(wrong_edu)) is Reason.BAD_SHAPE


def test_key_must_be_the_room_id() -> None:
    assert check_key(b"!r:hs1", "!r:hs1") is None
    for key in (b"!other:hs1", b"", b"!r:hs1 ", None, b"\xff"):
        rejection = check_key(key, "!r:hs1")
        assert rejection is not None
        assert rejection.reason is Reason.KEY_MISMATCH
        assert "!r:hs1" in rejection.message
