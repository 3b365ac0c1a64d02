"""How ctl speaks: a table or lines for people, `--json` for scripts, progress on stderr,
and errors that say what to do."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from tqdm import tqdm


class CtlError(Exception):
    """A refusal or failure the operator can act on: `hint` says how."""

    def __init__(self, message: str, hint: str = "", code: int = 2) -> None:
        super().__init__(message)
        self.message, self.hint, self.code = message, hint, code


def dump_json(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def print_json(data: Any) -> None:
    print(dump_json(data))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain text table, columns as wide as their widest cell."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def progress(total: int | None, what: str, quiet: bool = False) -> tqdm:
    """A progress bar on stderr (hidden when not a terminal with --json, or when quiet)."""
    return tqdm(
        total=total,
        desc=what,
        unit="rec",
        file=sys.stderr,
        disable=True if quiet else None,  # None: shown only on a terminal
        leave=False,
        dynamic_ncols=True,
    )


def report_error(err: CtlError, as_json: bool) -> int:
    if as_json:
        print_json({"error": err.message, "hint": err.hint or None})
    else:
        print(f"error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"what to do: {err.hint}", file=sys.stderr)
    return err.code
