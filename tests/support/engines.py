"""The engines a fault test runs on: every fault case runs on both, in CI too."""

from __future__ import annotations

ENGINES = ["batch", "faust"]
