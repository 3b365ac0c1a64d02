"""The README documents every setting the code reads, and the commands CI runs."""

from __future__ import annotations

from pathlib import Path

from receipt_streams.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_documented_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        row = f"| `RECEIPT_STREAMS_{name.upper()}` | `{shown}` |"
        assert row in readme, f"README lacks or misstates {row}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
