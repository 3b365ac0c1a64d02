"""Checks on a local user's receipt before it is folded (CONTRACT §4.8)."""

from __future__ import annotations

from typing import Any

import pytest

from receipt_streams.core.membership import MemberState
from receipt_streams.core.models import ClientReceipt
from receipt_streams.core.parsing import Rejection
from receipt_streams.core.reasons import Reason
from receipt_streams.core.receipts import Receipt, ReceiptKey
from receipt_streams.core.threads import EventInfo
from receipt_streams.core.validation import (
    Accept,
    WaitFor,
    check_client_receipt,
    check_thread_param,
    expiry_reason,
)

ROOM, USER = "!r:hs1", "@u:hs1"
EVENTS = {
    "$root": EventInfo(1, "@a:hs1"),
    "$plain": EventInfo(2, "@a:hs1"),
    "$t1": EventInfo(3, "@a:hs1", "m.thread", "$root"),
    "$react": EventInfo(4, "@a:hs1", "m.annotation", "$t1"),
}
JOINED = MemberState("join", 1)


def cr(receipt_type: str = "m.read", event_id: str = "$plain", **kw: Any) -> ClientReceipt:
    return ClientReceipt(
        room_id=ROOM, user_id=USER, receipt_type=receipt_type, event_id=event_id, ts=50, **kw
    )


def check(r: ClientReceipt, member: MemberState | None = JOINED):
    return check_client_receipt(r, member, EVENTS.get)


def test_accept_builds_key_and_receipt() -> None:
    assert check(cr()) == Accept(
        ReceiptKey(ROOM, USER, "m.read", None), Receipt("$plain", 2, 50, {"ts": 50})
    )
    assert check(cr("m.read.private", "$t1", thread_id="$root")) == Accept(
        ReceiptKey(ROOM, USER, "m.read.private", "$root"),
        Receipt("$t1", 3, 50, {"ts": 50, "thread_id": "$root"}),
    )


@pytest.mark.parametrize(
    ("event_id", "thread_id"),
    [("$plain", "main"), ("$root", "main"), ("$t1", "$root"), ("$react", "$root")],
)
def test_matching_thread_is_accepted(event_id: str, thread_id: str) -> None:
    verdict = check(cr(event_id=event_id, thread_id=thread_id))
    assert isinstance(verdict, Accept)
    assert verdict.key.thread_id == thread_id
    assert verdict.receipt.data == {"ts": 50, "thread_id": thread_id}


@pytest.mark.parametrize(
    ("event_id", "thread_id"),
    [
        ("$plain", "$root"),
        ("$root", "$root"),
        ("$t1", "main"),
        ("$react", "main"),
        ("$t1", "$plain"),
    ],
)
def test_thread_mismatch(event_id: str, thread_id: str) -> None:
    verdict = check(cr(event_id=event_id, thread_id=thread_id))
    assert isinstance(verdict, Rejection)
    assert verdict.reason is Reason.THREAD_MISMATCH


@pytest.mark.parametrize("membership", ["leave", "ban"])
def test_gone_is_rejected_at_once(membership: str) -> None:
    verdict = check(cr(), MemberState(membership, 9))
    assert isinstance(verdict, Rejection)
    assert verdict.reason is Reason.NOT_JOINED
    # ... even when the event is unknown: no point waiting for it.
    verdict = check(cr(event_id="$unknown"), MemberState(membership, 9))
    assert isinstance(verdict, Rejection) and verdict.reason is Reason.NOT_JOINED


@pytest.mark.parametrize("member", [None, MemberState("invite", 1), MemberState("knock", 1)])
def test_not_yet_joined_is_held(member: MemberState | None) -> None:
    assert check(cr(), member) == WaitFor("join", USER)


def test_unknown_event_is_held() -> None:
    assert check(cr(event_id="$later")) == WaitFor("event", "$later")
    assert check(cr(event_id="$later", thread_id="main")) == WaitFor("event", "$later")


def test_fully_read_refuses_thread_id() -> None:
    verdict = check(cr("m.fully_read", thread_id="main"))
    assert isinstance(verdict, Rejection) and verdict.reason is Reason.INVALID_THREAD
    assert isinstance(check(cr("m.fully_read")), Accept)


def test_check_thread_param() -> None:
    assert check_thread_param("m.read", None) is None
    assert check_thread_param("m.read", "main") is None
    assert check_thread_param("m.fully_read", None) is None
    for bad in ("", 5, ["x"]):
        rejection = check_thread_param("m.read", bad)
        assert rejection is not None and rejection.reason is Reason.INVALID_THREAD
    rejection = check_thread_param("m.fully_read", "$root")
    assert rejection is not None and rejection.reason is Reason.INVALID_THREAD


def test_expiry_reason() -> None:
    assert expiry_reason("event") is Reason.UNKNOWN_EVENT
    assert expiry_reason("join") is Reason.NOT_JOINED
