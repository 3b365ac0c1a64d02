"""Checks on a local user's receipt before it is folded (CONTRACT §4.8).

The answer is Accept, WaitFor (its event or its sender's join has not been seen yet: inputs come
on different topics, so a receipt can overtake them) or a Rejection for the DLQ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

from receipt_streams.core.ids import valid_thread_id
from receipt_streams.core.membership import MemberState
from receipt_streams.core.models import ClientReceipt
from receipt_streams.core.parsing import Rejection
from receipt_streams.core.reasons import Reason
from receipt_streams.core.receipts import Receipt, ReceiptKey, client_data
from receipt_streams.core.threads import EventInfo, thread_of


class Accept(NamedTuple):
    key: ReceiptKey
    receipt: Receipt


class WaitFor(NamedTuple):
    """Wait for `dep`: an event ID (`event`) or the sender's user ID (`join`)."""

    waiting_for: Literal["event", "join"]
    dep: str


Verdict = Accept | WaitFor | Rejection


def check_thread_param(receipt_type: str, thread_id: object) -> Rejection | None:
    """The parts of the thread rule that need no room state (the HTTP API uses them too)."""
    if thread_id is None:
        return None
    if not isinstance(thread_id, str) or not thread_id:
        return Rejection(Reason.INVALID_THREAD, "thread_id must be a non-empty string")
    if not valid_thread_id(thread_id):
        return Rejection(Reason.INVALID_THREAD, "thread_id must be main or an event ID")
    if receipt_type == "m.fully_read":
        return Rejection(Reason.INVALID_THREAD, "thread_id is not allowed with m.fully_read")
    return None


def check_client_receipt(
    r: ClientReceipt,
    member: MemberState | None,
    lookup: Callable[[str], EventInfo | None],
) -> Verdict:
    if (bad := check_thread_param(r.receipt_type, r.thread_id)) is not None:
        return bad
    if member is not None and member.gone:
        return Rejection(
            Reason.NOT_JOINED,
            f"{r.user_id} is not joined to {r.room_id} (membership {member.membership})",
        )
    if member is None or not member.joined:
        return WaitFor("join", r.user_id)
    event = lookup(r.event_id)
    if event is None:
        return WaitFor("event", r.event_id)
    if r.thread_id is not None:
        actual = thread_of(r.event_id, lookup)
        if actual != r.thread_id:
            return Rejection(
                Reason.THREAD_MISMATCH, f"{r.event_id} is in thread {actual!r}, not {r.thread_id!r}"
            )
    key = ReceiptKey(r.room_id, r.user_id, r.receipt_type, r.thread_id)
    return Accept(key, Receipt(r.event_id, event.stream_pos, r.ts, client_data(r.ts, r.thread_id)))


def expiry_reason(waiting_for: str) -> Reason:
    """The DLQ reason for a held receipt whose grace period ran out."""
    return Reason.UNKNOWN_EVENT if waiting_for == "event" else Reason.NOT_JOINED
