"""The console script's parser and the commands that need no broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from receipt_streams.entrypoints.cli import build_parser, main


def test_worker_and_schemas_are_subcommands() -> None:
    parser = build_parser()
    assert parser.parse_args(["worker"]).command == "worker"
    assert parser.parse_args(["schemas", "--out", "x"]).out == "x"
    with pytest.raises(SystemExit):
        parser.parse_args([])


def test_schemas_command_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["schemas", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "receipts.sync.v1.json").exists()
    assert "receipts.sync.v1.json" in capsys.readouterr().out


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "receipt-streams"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "worker" in out.stdout and "RECEIPT_STREAMS_" in out.stdout
