"""Bytes kept beyond a call are copied first: orjson (3.12 on) returns a `bytes` whose
allocation is about 4 KB however short it is, so keeping the core's keys and values as they
come (in a store's cache, or in a batch's outputs until it is published) would cost 4 KB
each (README, Performance)."""

from __future__ import annotations


def compact(data: bytes) -> bytes:
    """A copy of `data` in an allocation of its own size."""
    return b"".join((data, b""))
