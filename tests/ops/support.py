"""Running `receipt-streams ctl` in tests through the console script's own entry (main), with
the worker's settings in the environment, and reading what it printed as JSON."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from receipt_streams.config import Settings
from receipt_streams.entrypoints.cli import main
from receipt_streams.ops.kafka import read_table
from tests.support.worker import settings_env


class Ctl:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
        self.monkeypatch, self.capsys = monkeypatch, capsys

    def __call__(self, s: Settings, *argv: str, as_json: bool = True) -> tuple[int, Any]:
        for name, value in settings_env(s).items():
            if name.startswith("RECEIPT_STREAMS_"):
                self.monkeypatch.setenv(name, value)
        self.capsys.readouterr()
        code = main(["ctl", *argv, "--quiet", *(["--json"] if as_json else [])])
        out = self.capsys.readouterr()
        return code, (orjson.loads(out.out) if as_json else out.out + out.err)


def table(s: Settings) -> dict[Any, Any]:
    raw = asyncio.run(read_table(s, s.changelog_receipts, quiet=True))
    return {tuple(orjson.loads(k)): orjson.loads(v) for k, v in raw.items()}


def wait_until(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if result := check():
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.3)


def get_json(url: str, token: str | None = None) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return orjson.loads(resp.read())
