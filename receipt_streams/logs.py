"""Structured logs: one JSON object per line, with `extra=` fields kept as keys; and a filter
that keeps aiokafka's transient start-up complaints out of ERROR."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


# aiokafka logs these while a fresh cluster creates topics, elects a group coordinator or
# rebalances: they resolve on their own within seconds. Matched on the message template.
TRANSIENT_AIOKAFKA = frozenset(
    {
        "Topic %s not found in cluster metadata",
        "Group Coordinator Request failed: %s",
        "Error sending %s to node %s [%s] -- marking coordinator dead",
        "Marking the coordinator dead (node %s)for group %s.",
        "OffsetCommit failed for group %s due to group error (%s), will rejoin",
        "OffsetFetchRequest -- unknown topic %s",
        "Heartbeat failed for group %s because it is rebalancing",
        "Heartbeat failed for group %s: coordinator (node %s) is either not started or not valid",
        "FindCoordinator Request failed: %s",
    }
)


class TransientKafkaErrors(logging.Filter):
    """Logs a known transient aiokafka complaint at INFO (so hidden at aiokafka's WARNING level)
    while it has lasted less than `tolerate_s`; the same complaint going on longer is a real
    problem and keeps its level. A complaint not seen for `tolerate_s` starts a new streak."""

    def __init__(self, tolerate_s: float = 60.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.tolerate_s, self.clock = tolerate_s, clock
        self.streaks: dict[tuple[str, str, str], tuple[float, float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno < logging.WARNING
            or not record.name.startswith("aiokafka")
            or record.msg not in TRANSIENT_AIOKAFKA
        ):
            return True
        now = self.clock()
        key = (record.name, str(record.msg), repr(record.args))
        first, last = self.streaks.get(key, (now, now))
        if now - last > self.tolerate_s:
            first = now
        if len(self.streaks) > 1000:
            self.streaks.clear()
        self.streaks[key] = (first, now)
        if now - first > self.tolerate_s:
            record.transient_for_s = round(now - first)
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def logging_config(level: str, json: bool) -> dict[str, Any]:
    """A dictConfig for the worker (faust/mode take it as `logging_config`)."""
    fmt = (
        {"()": JsonFormatter}
        if json
        else {"format": "[%(asctime)s] %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": fmt},
        "filters": {"transient_kafka": {"()": TransientKafkaErrors}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "main",
                "filters": ["transient_kafka"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {"aiokafka": {"level": "WARNING"}},
    }
