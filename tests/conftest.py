"""Shared test fixtures: one real Kafka broker per test session, and unique names per test.

The broker is chosen in this order, because each is cheaper to reuse than the next is to start:

1. ``KAFKA_BOOTSTRAP_SERVERS`` from the environment (CI service container, a broker started by
   ``deploy/local-kafka/kafka.py start``, ...);
2. testcontainers' ``KafkaContainer`` when a Docker daemon answers;
3. the stdlib launcher ``deploy/local-kafka/kafka.py`` (Kafka jars from Maven Central, ~2 s).

If none can provide a broker the tests using it *fail*: a silently skipped integration suite
looks green while testing nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LAUNCHER_PATH = REPO_ROOT / "deploy" / "local-kafka" / "kafka.py"
LAUNCHER_MODULE = "receipt_streams_local_kafka"

# What the session broker turned out to be; printed by pytest_terminal_summary.
_BROKER_INFO: dict[str, Any] = {}
_SESSION_STARTED = time.monotonic()


def load_launcher() -> ModuleType:
    """Import ``deploy/local-kafka/kafka.py`` by path (it is a script, not a package module).

    Registered under a fixed name so every importer shares one module object.
    """
    if LAUNCHER_MODULE in sys.modules:
        return sys.modules[LAUNCHER_MODULE]
    spec = importlib.util.spec_from_file_location(LAUNCHER_MODULE, LAUNCHER_PATH)
    assert spec is not None and spec.loader is not None, LAUNCHER_PATH
    module = importlib.util.module_from_spec(spec)
    sys.modules[LAUNCHER_MODULE] = module
    spec.loader.exec_module(module)
    return module


def _docker_daemon_answers() -> bool:
    """Cheap check (<= 5 s) so machines without Docker go straight to the local launcher."""
    docker = shutil.which("docker")
    if not docker:
        return False
    try:
        result = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def pytest_sessionstart(session: pytest.Session) -> None:
    global _SESSION_STARTED
    _SESSION_STARTED = time.monotonic()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that (transitively) uses ``kafka_bootstrap`` is marked ``broker``, so
    ``-m "not broker"`` deselects exactly the tests that need Kafka."""
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a real Kafka broker shared by the whole session."""
    from_env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if from_env:
        began = time.monotonic()
        try:
            load_launcher().wait_for_metadata(from_env, timeout=30)
        except Exception as exc:
            pytest.fail(f"KAFKA_BOOTSTRAP_SERVERS={from_env} does not answer: {exc}", pytrace=False)
        _BROKER_INFO.update(
            kind="external (KAFKA_BOOTSTRAP_SERVERS)",
            bootstrap=from_env,
            start_seconds=None,
            probe_seconds=time.monotonic() - began,
        )
        yield from_env
        return

    if _docker_daemon_answers():
        began = time.monotonic()
        try:
            try:  # newer testcontainers moved it; the old import path warns
                from testcontainers.community.kafka import KafkaContainer
            except ImportError:
                from testcontainers.kafka import KafkaContainer

            container = KafkaContainer()
        except Exception as exc:
            pytest.fail(f"testcontainers' KafkaContainer is unavailable: {exc!r}", pytrace=False)
        try:
            container.start()
        except Exception as exc:
            with contextlib.suppress(Exception):
                container.stop()
            pytest.fail(f"Kafka testcontainer failed to start: {exc!r}", pytrace=False)
        try:
            bootstrap = container.get_bootstrap_server()
            _BROKER_INFO.update(
                kind=f"testcontainers ({container.image})",
                bootstrap=bootstrap,
                start_seconds=time.monotonic() - began,
            )
            yield bootstrap
        finally:
            container.stop()
        return

    launcher = load_launcher()
    began = time.monotonic()
    try:
        launcher.ensure_jars()
        jars_seconds = time.monotonic() - began
        kafka = launcher.LocalKafka().start(timeout=90)
    except Exception as exc:
        pytest.fail(
            f"local Kafka broker (deploy/local-kafka/kafka.py) did not start:\n{exc}", pytrace=False
        )
    try:
        _BROKER_INFO.update(
            kind=f"local launcher (kafka {launcher.kafka_version()}, pid {kafka.pid})",
            bootstrap=kafka.bootstrap_servers,
            start_seconds=kafka.start_seconds,
            jars_seconds=jars_seconds,
        )
        yield kafka.bootstrap_servers
    finally:
        kafka.stop()


def _slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "test"


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A per-test unique prefix for topics and groups: ``t-<test-name-slug>-<uuid8>``.

    The broker is shared by the session, so names must never collide between tests or runs.
    """
    return f"t-{_slug(request.node.name)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topic_namer(unique_name: str) -> Callable[[str], str]:
    """Factory of names under ``unique_name``: ``topic_namer("receipts")`` ->
    ``t-<test>-<uuid8>-receipts`` (valid Kafka topic and group names)."""

    def name(suffix: str = "") -> str:
        return f"{unique_name}-{_slug(suffix)}" if suffix else unique_name

    return name


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Show which broker the run used and how long it took to start, plus the suite wall time."""
    if _BROKER_INFO:
        terminalreporter.write_sep("-", "kafka broker")
        parts = [f"{_BROKER_INFO['kind']} at {_BROKER_INFO['bootstrap']}"]
        if _BROKER_INFO.get("start_seconds") is not None:
            parts.append(f"started in {_BROKER_INFO['start_seconds']:.2f} s")
        if _BROKER_INFO.get("jars_seconds") is not None:
            parts.append(f"jar check {_BROKER_INFO['jars_seconds']:.2f} s")
        if _BROKER_INFO.get("probe_seconds") is not None:
            parts.append(f"answered in {_BROKER_INFO['probe_seconds']:.2f} s")
        terminalreporter.write_line("kafka broker: " + ", ".join(parts))
    terminalreporter.write_line(
        f"suite wall time: {time.monotonic() - _SESSION_STARTED:.2f} s", bold=True
    )
