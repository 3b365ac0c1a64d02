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


def test_bench_api_processes_is_at_least_one(capsys: pytest.CaptureFixture) -> None:
    parser = build_parser()
    assert parser.parse_args(["bench", "readside"]).api_processes == 1
    assert parser.parse_args(["bench", "readside", "--api-processes", "2"]).api_processes == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "readside", "--api-processes", "0"])
    assert "must be 1 or more, not 0" in capsys.readouterr().err


def test_schemas_command_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["schemas", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "receipts.sync.v1.json").exists()
    assert "receipts.sync.v1.json" in capsys.readouterr().out


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "receipt-streams"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "worker" in out.stdout and "RECEIPT_STREAMS_" in out.stdout


def test_a_crash_in_native_code_leaves_the_python_stack_on_stderr() -> None:
    """A command that dies of SIGSEGV (RocksDB, a C extension) says where it was."""
    crash = (
        "import ctypes, types\n"
        "from receipt_streams.entrypoints import cli\n"
        "def crash_in_native_code(args):\n"
        "    ctypes.string_at(0)\n"
        "args = types.SimpleNamespace(func=crash_in_native_code)\n"
        "cli.build_parser = lambda: types.SimpleNamespace(parse_args=lambda argv: args)\n"
        "cli.main([])\n"
    )
    out = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=60)
    assert out.returncode == -11
    assert "Segmentation fault" in out.stderr and "crash_in_native_code" in out.stderr
