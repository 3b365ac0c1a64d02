"""The client-server checks of the receipts and read-markers endpoints (CONTRACT §4.8, §5)."""

from __future__ import annotations

import itertools

import orjson
import pytest

from receipt_streams.core import ids
from receipt_streams.core.client_api import (
    ApiError,
    ReceiptRequest,
    bearer_token,
    decode_component,
    json_object,
    parse_flag,
    path_params,
    plausible_token,
    query_params,
    read_markers_request,
    receipt_request,
    refuse_if_not_joined,
)

ROOM, EVENT = "!room:hs1", "$event:hs1"
MARKERS = ("m.fully_read", "m.read", "m.read.private")


def error_of(call, *args) -> tuple[int, str]:
    with pytest.raises(ApiError) as info:
        call(*args)
    err = info.value
    body = err.body()
    assert body["errcode"] == err.errcode and isinstance(body["error"], str) and body["error"]
    assert "retry_after_ms" not in body
    return err.status, err.errcode


# --- json_object -----------------------------------------------------------------------------

NOT_JSON = [b"", b"   ", b"\n\t", b"{", b"not json", b"{'a': 1}", b"\xff\xfe", b"{} {}", b"NaN"]
NOT_OBJECT = [b"[]", b"null", b"1", b'"text"', b"true", b"[{}]"]


@pytest.mark.parametrize("body", NOT_JSON)
def test_json_object_not_json(body: bytes) -> None:
    assert error_of(json_object, body) == (400, "M_NOT_JSON")


@pytest.mark.parametrize("body", NOT_OBJECT)
def test_json_object_not_an_object(body: bytes) -> None:
    assert error_of(json_object, body) == (400, "M_BAD_JSON")


@pytest.mark.parametrize(
    "body, value",
    [(b"{}", {}), (b' {"a": [1, {"b": null}]} \n', {"a": [1, {"b": None}]})],
)
def test_json_object_ok(body: bytes, value: dict) -> None:
    assert json_object(body) == value


# --- receipt_request -------------------------------------------------------------------------

BAD_ROOMS = ["", "room:hs1", "#alias:hs1", "!", "!:hs1", "!a b:hs1", "!a:bad host", "!a:hs1:x:"]
BAD_EVENTS = ["", "event:hs1", "$", "$a b", "$a:bad host", "$\x00:hs1", "$" + "x" * 300]
BAD_TYPES = ["", "m.read.public", "m.receipt", "M.READ", "m.read ", "m.fully_read\n"]
BAD_THREADS = [5, 0, "", [], ["main"], {}, True, False, 1.5, None]


@pytest.mark.parametrize("room_id", BAD_ROOMS)
def test_receipt_bad_room(room_id: str) -> None:
    assert error_of(receipt_request, room_id, "m.read", EVENT, b"{}") == (400, "M_INVALID_PARAM")


@pytest.mark.parametrize("receipt_type", BAD_TYPES)
def test_receipt_bad_type(receipt_type: str) -> None:
    assert error_of(receipt_request, ROOM, receipt_type, EVENT, b"{}") == (
        400,
        "M_INVALID_PARAM",
    )


@pytest.mark.parametrize("event_id", BAD_EVENTS)
def test_receipt_bad_event(event_id: str) -> None:
    assert error_of(receipt_request, ROOM, "m.read", event_id, b"{}") == (400, "M_INVALID_PARAM")


@pytest.mark.parametrize("body", NOT_JSON)
def test_receipt_body_not_json(body: bytes) -> None:
    assert error_of(receipt_request, ROOM, "m.read", EVENT, body) == (400, "M_NOT_JSON")


@pytest.mark.parametrize("body", NOT_OBJECT)
def test_receipt_body_not_object(body: bytes) -> None:
    assert error_of(receipt_request, ROOM, "m.read", EVENT, body) == (400, "M_BAD_JSON")


@pytest.mark.parametrize("receipt_type", ["m.read", "m.read.private", "m.fully_read"])
@pytest.mark.parametrize("thread_id", BAD_THREADS)
def test_receipt_bad_thread_id(receipt_type: str, thread_id: object) -> None:
    """Not a string, empty, or explicitly null: the spec's 400 M_INVALID_PARAM."""
    body = orjson.dumps({"thread_id": thread_id})
    assert error_of(receipt_request, ROOM, receipt_type, EVENT, body) == (400, "M_INVALID_PARAM")


@pytest.mark.parametrize("thread_id", ["main", "$root:hs1"])
def test_receipt_thread_id_refused_with_fully_read(thread_id: str) -> None:
    body = orjson.dumps({"thread_id": thread_id})
    assert error_of(receipt_request, ROOM, "m.fully_read", EVENT, body) == (
        400,
        "M_INVALID_PARAM",
    )


@pytest.mark.parametrize("receipt_type", ["m.read", "m.read.private", "m.fully_read"])
def test_receipt_unthreaded(receipt_type: str) -> None:
    assert receipt_request(ROOM, receipt_type, EVENT, b"{}") == ReceiptRequest(
        ROOM, receipt_type, EVENT, None
    )


@pytest.mark.parametrize("receipt_type", ["m.read", "m.read.private"])
@pytest.mark.parametrize("thread_id", ["main", "$root:hs1", "$opaque"])
def test_receipt_threaded(receipt_type: str, thread_id: str) -> None:
    body = orjson.dumps({"thread_id": thread_id, "unknown": [1]})
    assert receipt_request(ROOM, receipt_type, EVENT, body) == ReceiptRequest(
        ROOM, receipt_type, EVENT, thread_id
    )


@pytest.mark.parametrize(
    "room_id, event_id",
    [("!opaque-v12-room", "$opaque_event"), ("!a:[::1]:8448", "$b:1.2.3.4:80")],
)
def test_receipt_other_valid_ids(room_id: str, event_id: str) -> None:
    assert receipt_request(room_id, "m.read", event_id, b"{}").room_id == room_id


def test_receipt_checks_path_before_body() -> None:
    assert error_of(receipt_request, "bad", "m.read", EVENT, b"") == (400, "M_INVALID_PARAM")
    assert error_of(receipt_request, ROOM, "bad", EVENT, b"") == (400, "M_INVALID_PARAM")


# --- read_markers_request --------------------------------------------------------------------

EVENTS = {"m.fully_read": "$fr:hs1", "m.read": "$r:hs1", "m.read.private": "$p:hs1"}


@pytest.mark.parametrize(
    "subset", [c for n in range(4) for c in itertools.combinations(MARKERS, n)]
)
def test_read_markers_any_subset(subset: tuple[str, ...]) -> None:
    body = orjson.dumps({t: EVENTS[t] for t in reversed(subset)} | {"other": 1})
    assert read_markers_request(ROOM, body) == [
        ReceiptRequest(ROOM, t, EVENTS[t], None) for t in MARKERS if t in subset
    ]


def test_read_markers_empty_object_is_no_receipts() -> None:
    assert read_markers_request(ROOM, b"{}") == []


@pytest.mark.parametrize("marker", MARKERS)
@pytest.mark.parametrize("event_id", [None, 5, "", "e:hs1", ["$e:hs1"], {"event_id": "$e"}])
def test_read_markers_bad_event(marker: str, event_id: object) -> None:
    body = orjson.dumps({"m.read": "$ok:hs1", marker: event_id})
    assert error_of(read_markers_request, ROOM, body) == (400, "M_INVALID_PARAM")


@pytest.mark.parametrize("room_id", BAD_ROOMS)
def test_read_markers_bad_room(room_id: str) -> None:
    body = orjson.dumps({"m.read": "$ok:hs1"})
    assert error_of(read_markers_request, room_id, body) == (400, "M_INVALID_PARAM")


@pytest.mark.parametrize("body", NOT_JSON)
def test_read_markers_not_json(body: bytes) -> None:
    assert error_of(read_markers_request, ROOM, body) == (400, "M_NOT_JSON")


@pytest.mark.parametrize("body", NOT_OBJECT)
def test_read_markers_not_object(body: bytes) -> None:
    assert error_of(read_markers_request, ROOM, body) == (400, "M_BAD_JSON")


# --- refuse_if_not_joined --------------------------------------------------------------------


@pytest.mark.parametrize("membership", ["leave", "ban", "invite", "knock"])
def test_not_joined_is_forbidden(membership: str) -> None:
    assert error_of(refuse_if_not_joined, membership, "@u:hs1", ROOM) == (403, "M_FORBIDDEN")


@pytest.mark.parametrize("membership", ["join", None])
def test_joined_or_unknown_passes(membership: str | None) -> None:
    assert refuse_if_not_joined(membership, "@u:hs1", ROOM) is None


# --- ApiError --------------------------------------------------------------------------------


def test_api_error_body() -> None:
    err = ApiError(429, "M_LIMIT_EXCEEDED", "Too many requests", retry_after_ms=250)
    assert err.body() == {
        "errcode": "M_LIMIT_EXCEEDED",
        "error": "Too many requests",
        "retry_after_ms": 250,
    }
    assert ApiError(400, "M_NOT_JSON", "x").body() == {"errcode": "M_NOT_JSON", "error": "x"}
    with pytest.raises(ApiError):
        raise err


# --- thread_id grammar (issue 12) ------------------------------------------------------------

LONG_EVENT = "$" + "x" * 254  # 255 bytes: the most an ID may have


@pytest.mark.parametrize(
    "thread_id",
    ["x" * 300, "$" + "x" * 255, "root", "$a b", "$a\x00", "Main", "main ", '"""', "$é:hs1"],
)
def test_receipt_thread_id_must_be_main_or_an_event_id(thread_id: str) -> None:
    body = orjson.dumps({"thread_id": thread_id})
    assert error_of(receipt_request, ROOM, "m.read", EVENT, body) == (400, "M_INVALID_PARAM")


@pytest.mark.parametrize(
    "value, ok",
    [
        ("main", True),
        ("$root:hs1", True),
        ("$opaque", True),
        (LONG_EVENT, True),
        (LONG_EVENT + "x", False),
        ("", False),
        ("root", False),
        (None, False),
        (5, False),
    ],
)
def test_valid_thread_id(value: object, ok: bool) -> None:
    assert ids.valid_thread_id(value) is ok


def test_receipt_thread_id_of_255_bytes_passes() -> None:
    body = orjson.dumps({"thread_id": LONG_EVENT})
    assert receipt_request(ROOM, "m.read", EVENT, body).thread_id == LONG_EVENT


# --- the request line ------------------------------------------------------------------------

TEMPLATE = "/_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}"


@pytest.mark.parametrize(
    "raw, decoded",
    [("!a%3Ahs1", "!a:hs1"), ("%24ab%2Fc", "$ab/c"), ("plain", "plain"), ("%C3%A9", "é")],
)
def test_decode_component(raw: str, decoded: str) -> None:
    assert decode_component(raw, "x") == decoded


@pytest.mark.parametrize("raw", ["%", "%Z", "%ZZ", "a%2", "%g0", "%FF", "%C3", "%ED%A0%80"])
def test_decode_component_refuses_bad_escapes_and_utf8(raw: str) -> None:
    assert error_of(decode_component, raw, "roomId") == (400, "M_INVALID_PARAM")


def test_path_params_decodes_only_the_named_segments() -> None:
    raw = "/_matrix/client/v3/rooms/!r%3Ahs1/receipt/m.read/%24e%2F1"
    assert path_params(TEMPLATE, raw) == {
        "roomId": "!r:hs1",
        "receiptType": "m.read",
        "eventId": "$e/1",
    }


@pytest.mark.parametrize(
    "raw",
    [
        "/_matrix/client/v3/rooms/!r%ZZ/receipt/m.read/$e",
        "/_matrix/client/v3/rooms/!r/receipt/m.read/$e%FF",
        "/_matrix/client/v3/rooms/!r/receipt/m.read/$e/extra",
    ],
)
def test_path_params_refuses(raw: str) -> None:
    assert error_of(path_params, TEMPLATE, raw) == (400, "M_INVALID_PARAM")


def test_query_params() -> None:
    assert query_params("since=r1&timeout=30&since=r2&a+b=c+d&flag&&x=%41") == {
        "since": "r1",
        "timeout": "30",
        "a b": "c d",
        "flag": "",
        "x": "A",
    }
    assert query_params("") == {}
    assert error_of(query_params, "since=%ZZ") == (400, "M_INVALID_PARAM")
    assert error_of(query_params, "since=%FF") == (400, "M_INVALID_PARAM")


@pytest.mark.parametrize(
    "header, query, token",
    [
        ("Bearer abc", None, "abc"),
        ("bearer abc", None, "abc"),
        ("BEARER  abc ", None, "abc"),
        ("Basic abc", None, None),
        ("Bearer", None, None),
        ("Bearer ", "q", "q"),
        (None, "q", "q"),
        (None, "", None),
        (None, None, None),
        ("Bearer h", "q", "h"),
    ],
)
def test_bearer_token(header: str | None, query: str | None, token: str | None) -> None:
    assert bearer_token(header, query) == token


@pytest.mark.parametrize(
    "token, ok",
    [
        ("syt_abc_123", True),
        ("a" * 1024, True),
        ("a" * 1025, False),
        ("a b", False),
        ("a\r\nX: y", False),
        ("é", False),
        ("", False),
    ],
)
def test_plausible_token(token: str, ok: bool) -> None:
    assert plausible_token(token) is ok


def test_parse_flag() -> None:
    assert parse_flag(None, "f") is False
    assert parse_flag("false", "f") is False
    assert parse_flag("true", "f") is True
    for bad in ("", "1", "True", "yes"):
        assert error_of(parse_flag, bad, "f") == (400, "M_INVALID_PARAM")
