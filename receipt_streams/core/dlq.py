"""DLQ records (CONTRACT §3): a rejected input with its raw bytes, so nothing is lost silently.

Every record is bounded, measured on its encoded bytes: a DLQ record that the broker refuses
would stop the stream behind it. The raw key and value are kept up to a limit (beyond it they
are truncated, with the original size and the sha256 of the whole original), as UTF-8 text
when that is valid and JSON escaping does not make it longer than base64, else as base64; the
error message and the other free texts are cut to a few hundred bytes once escaped.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from receipt_streams.core.parsing import Rejection
from receipt_streams.core.reasons import Reason

MESSAGE_BYTES = 1_024  # the error message, JSON-escaped
TEXT_BYTES = 255  # the topic, the EDU origin and each step of an entry's path, JSON-escaped
# Everything but the key and the value: field names, numbers, two sha256, the message, the
# EDU's origin, hash and path (3 steps). Counted generously: see `DlqBounds.record_bytes`.
OVERHEAD_BYTES = 4_096
EDU_DLQ_FACTOR = 2  # the DLQ records of one EDU take at most this many times its bytes, or are one


def _b64_len(n: int) -> int:
    return 4 * ((n + 2) // 3)


@dataclass(frozen=True, slots=True)
class DlqBounds:
    """How much of a rejected record's raw key and value a DLQ record keeps."""

    value_bytes: int = 16_384
    key_bytes: int = 1_024

    @property
    def record_bytes(self) -> int:
        """The most bytes one encoded DLQ record can take (27,312 with the defaults)."""
        return _b64_len(self.value_bytes) + _b64_len(self.key_bytes) + OVERHEAD_BYTES


class Source(NamedTuple):
    """Where an input record came from, with its raw key and value bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @classmethod
    def of(cls, record: Any) -> Source:
        """The source of a consumed record (anything with topic, partition, offset, key and
        value: a Kafka client's record, a test's)."""
        return cls(record.topic, record.partition, record.offset, record.key, record.value)


def clip(text: str, max_bytes: int) -> str:
    """`text`, cut so that its JSON string (quotes aside) takes at most `max_bytes`."""
    if len(text) <= max_bytes // 6 or len(orjson.dumps(text)) - 2 <= max_bytes:
        return text  # every character escapes to at most 6 bytes
    lo, hi = 0, min(len(text), max_bytes)  # a character takes at least one byte
    while lo < hi:  # the longest prefix that fits
        mid = (lo + hi + 1) // 2
        if len(orjson.dumps(text[:mid])) - 2 <= max_bytes - 3:  # 3: the "…" marker
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "…"


def _utf8_prefix(raw: bytes) -> str | None:
    """`raw` as text, allowing it to end inside a character (a truncated prefix)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and exc.end == len(raw):
            return raw[: exc.start].decode("utf-8", "strict")
        return None


def _raw_fields(name: str, raw: bytes | None, limit: int) -> dict[str, Any]:
    """`name` (text or base64, at most base64 of `limit` bytes once encoded), and for a
    present value its `_encoding` (base64 only), `_size`, `_sha256` and `_truncated`."""
    if raw is None:
        return {name: None}
    kept = raw[:limit]
    text = _utf8_prefix(kept)
    fields: dict[str, Any] = {}
    if text is not None and len(orjson.dumps(text)) - 2 <= _b64_len(len(kept)):
        fields[name] = text
        truncated = len(text.encode()) < len(raw)
    else:
        fields[name] = base64.b64encode(kept).decode("ascii")
        fields[f"{name}_encoding"] = "base64"
        truncated = len(kept) < len(raw)
    fields[f"{name}_size"] = len(raw)
    fields[f"{name}_sha256"] = hashlib.sha256(raw).hexdigest()
    fields[f"{name}_truncated"] = truncated
    return fields


def dlq_record(
    src: Source,
    rejection: Rejection,
    now_ms: int,
    bounds: DlqBounds = DlqBounds(),
    *,
    edu: dict[str, Any] | None = None,
    output: str | None = None,
) -> bytes:
    """One DLQ record, at most `bounds.record_bytes` long. `edu` (for a part of an inbound
    EDU: its origin, hash, size and the entry's path) is added as is; its texts are clipped.
    `output` (an output that could not be produced: its topic) says that `src`'s key and value
    are that output's, and its topic, partition and offset the input it came from."""
    record: dict[str, Any] = {
        "topic": clip(src.topic, TEXT_BYTES),
        "partition": src.partition,
        "offset": src.offset,
        **_raw_fields("key", src.key, bounds.key_bytes),
        **_raw_fields("value", src.value, bounds.value_bytes),
        "error": {"code": str(rejection.reason), "message": clip(rejection.message, MESSAGE_BYTES)},
        "ts": now_ms,
    }
    if edu is not None:
        record["edu"] = edu
    if output is not None:
        record["output"] = {"topic": clip(output, TEXT_BYTES)}
    return orjson.dumps(record)


# --- inbound EDUs ------------------------------------------------------------------------


class EntryReject(NamedTuple):
    """A rejected part of an inbound EDU: where it was (room, [type, [user]]), what it held
    (the subtree at that path, as sent) and why."""

    path: tuple[str, ...]
    entry: Any
    rejection: Rejection


def _envelope(origin: str, received_ts: int, parts: Sequence[EntryReject]) -> bytes:
    """A federation record holding only `parts` of the EDU: written back to the federation
    topic, it is checked again as it would have been."""
    content: dict[str, Any] = {}
    for part in parts:
        node = content
        for step in part.path[:-1]:
            node = node.setdefault(step, {})
        node[part.path[-1]] = part.entry
    envelope = {
        "origin": origin,
        "received_ts": received_ts,
        "edu": {"edu_type": "m.receipt", "content": content},
    }
    # The stdlib encoder: a remote server's data may hold ints orjson cannot encode.
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()


# What a routing-time DLQ record of one entry takes beyond the entry's own bytes (the record's
# fields, the error, the EDU's origin, hash and path), counted generously: the entries that get
# a share are those whose record will fit it.
ROUTED_OVERHEAD_BYTES = 900


def routing_shares(
    edu_bytes: int, used: int, entry_bytes: Sequence[int], max_records: int
) -> list[int]:
    """The DLQ bytes each accepted entry of an EDU may take if its room's partition rejects
    it (the origin has no member there): in the EDU's order, an entry gets what its record
    needs while twice the EDU's size, less `used` (its parts rejected already), has room for
    it, at most `max_records` entries; the others get 0 (counted, not written). So the DLQ
    records of an EDU stay within twice its bytes however its entries are rejected, and
    where; an EDU too small for one such record gets one, as for its parts."""
    shares = [0] * len(entry_bytes)
    if not entry_bytes or max_records <= 0:
        return shares
    # A record holds the entry as JSON text in a JSON string: its quotes escaped.
    needs = [n * 3 // 2 + ROUTED_OVERHEAD_BYTES for n in entry_bytes]
    left = EDU_DLQ_FACTOR * edu_bytes - used
    given = 0
    for i, need in enumerate(needs):
        if given == max_records:
            break
        if need <= left:
            shares[i] = need
            left -= need
            given += 1
    if given == 0 and used == 0:
        shares[0] = needs[0]  # too small an EDU for twice its bytes: one record
    return shares


def edu_dlq_records(
    src: Source,
    origin: str,
    received_ts: int,
    rejected: Sequence[EntryReject],
    now_ms: int,
    bounds: DlqBounds = DlqBounds(),
    max_records: int = 100,
) -> list[tuple[bytes, Reason]]:
    """The DLQ records of an EDU's rejected parts: one per part, each holding that part only,
    the EDU's origin and sha256, while there are at most `max_records` and all of them take
    at most `EDU_DLQ_FACTOR` times the EDU's bytes; the rest in one
    summary record (its `entries` is their count, its value holds them all, truncated at the
    EDU's size). So the records of an EDU (keys included) fit that budget, or are a single
    record."""
    if not rejected:
        return []
    raw = src.value or b""
    meta = {
        "origin": clip(origin, TEXT_BYTES),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "size": len(raw),
    }
    # No floor: a small EDU whose parts' records would pass twice its size gets one summary
    # record (its fixed overhead is unavoidable), never several (the issue 12 probe: a 371-byte
    # EDU of 5 forged entries wrote 3,955 bytes of DLQ records under a 4,096-byte floor).
    budget = EDU_DLQ_FACTOR * len(raw)
    singles: list[tuple[bytes, Reason]] = []
    for part in rejected[:max_records]:
        path = [clip(step, TEXT_BYTES) for step in part.path]
        record = dlq_record(
            src._replace(value=_envelope(origin, received_ts, [part])),
            Rejection(part.rejection.reason, f"{' / '.join(path)}: {part.rejection.message}"),
            now_ms,
            bounds,
            edu={**meta, "path": path, "entries": 1},
        )
        singles.append((record, part.rejection.reason))
    key = len(src.topic.encode())  # each DLQ record is keyed by the source topic
    sizes = [key + len(record) for record, _ in singles]
    if len(rejected) == len(singles) and (sum(sizes) <= budget or len(singles) == 1):
        return singles
    # Keep the longest run of single records that leaves room for the summary of the rest.
    k, used = 0, 0
    while k < len(singles) and used + sizes[k] <= budget:
        used += sizes[k]
        k += 1
    k = min(k, len(rejected) - 1)
    while True:
        summary = _summary(src, origin, received_ts, rejected[k:], now_ms, bounds, meta)
        excess = sum(sizes[:k]) + key + len(summary[0]) - budget
        if excess <= 0 or k == 0:
            break
        while k > 0 and excess > 0:  # the dropped parts go to the summary instead
            k -= 1
            excess -= sizes[k]
    if k == 0 and len(rejected) == 1:
        return singles
    return [*singles[:k], summary]


def _summary(
    src: Source,
    origin: str,
    received_ts: int,
    rest: Sequence[EntryReject],
    now_ms: int,
    bounds: DlqBounds,
    meta: dict[str, Any],
) -> tuple[bytes, Reason]:
    """One record for the parts beyond the cap: their count, reasons, and all of them."""
    reasons = Counter(str(r.rejection.reason) for r in rest)
    code = Reason(reasons.most_common(1)[0][0])
    summary = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
    message = f"{len(rest)} rejected parts of this EDU, not recorded one by one: {summary}"
    # Its value keeps no more than the EDU's size: the record is then at most the EDU's
    # size plus the fixed overhead.
    capped = DlqBounds(min(bounds.value_bytes, meta["size"]), bounds.key_bytes)
    record = dlq_record(
        src._replace(value=_envelope(origin, received_ts, rest)),
        Rejection(code, message),
        now_ms,
        capped,
        edu={**meta, "path": None, "entries": len(rest)},
    )
    return record, code
