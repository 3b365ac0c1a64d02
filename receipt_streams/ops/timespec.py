"""Times on the command line: ISO 8601 (`2024-05-01T12:00`, naive means UTC), epoch ms, or
an age (`90s`, `15m`, `2h`, `3d`: that long ago)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time_ms(text: str, now_ms: int | None = None) -> int:
    text = text.strip()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if m := _AGE.match(text):
        return now - int(float(m.group(1)) * _UNIT[m.group(2)] * 1000)
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use ISO 8601 (2024-05-01T12:00:00Z), epoch ms, "
            "or an age such as 15m, 2h, 3d"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
