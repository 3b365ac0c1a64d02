"""Unit tests of ``deploy/local-kafka/kafka.py`` that need no second broker: the session broker
(whatever kind it is) serves as the target of the stdlib Metadata probe."""

from __future__ import annotations

import base64
import importlib.util
import re
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest

LAUNCHER_PATH = Path(__file__).resolve().parents[2] / "deploy" / "local-kafka" / "kafka.py"
# Same module name as tests/conftest.py uses, so both share one module object.
LAUNCHER_MODULE = "receipt_streams_local_kafka"


def _load() -> ModuleType:
    if LAUNCHER_MODULE in sys.modules:
        return sys.modules[LAUNCHER_MODULE]
    spec = importlib.util.spec_from_file_location(LAUNCHER_MODULE, LAUNCHER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[LAUNCHER_MODULE] = module
    spec.loader.exec_module(module)
    return module


lk = _load()


def test_template_renders_ports_and_log_dir(tmp_path: Path) -> None:
    text = lk.render_server_properties(broker_port=41001, controller_port=41002, log_dirs=tmp_path)
    props = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert "$" not in text
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:41001,CONTROLLER://127.0.0.1:41002"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:41001"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:41002"
    assert props["log.dirs"] == str(tmp_path)
    assert props["process.roles"] == "broker,controller"
    assert props["offsets.topic.replication.factor"] == "1"


def test_cluster_id_is_22_char_unpadded_base64url() -> None:
    ids = {lk.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cid), cid
        assert not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = lk.free_ports(2)
    assert len(set(ports)) == 2
    for port in ports:
        assert 1024 <= port <= 65535
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_kafka_version_and_default_cache_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    version = lk.kafka_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    monkeypatch.delenv(lk.CACHE_ENV, raising=False)
    assert lk.cache_dir() == LAUNCHER_PATH.parent / ".cache" / f"kafka-{version}"
    monkeypatch.setenv(lk.CACHE_ENV, "/tmp/somewhere-else")
    assert lk.lib_dir() == Path("/tmp/somewhere-else/lib")


def test_metadata_probe_against_session_broker(kafka_bootstrap: str) -> None:
    brokers = lk.probe_metadata(kafka_bootstrap, timeout=5)
    assert len(brokers) >= 1
    node_id, host, port = brokers[0]
    assert node_id >= 0 and host and 0 < port < 65536


def test_metadata_probe_fails_fast_on_a_closed_port() -> None:
    [port] = lk.free_ports(1)
    with pytest.raises(OSError):
        lk.probe_metadata(f"127.0.0.1:{port}", timeout=1)


def test_stop_is_idempotent_on_a_never_started_instance() -> None:
    kafka = lk.LocalKafka()
    kafka.stop()
    kafka.stop()
    assert kafka.pid is None
    with pytest.raises(lk.LocalKafkaError):
        _ = kafka.bootstrap_servers


@pytest.mark.broker
async def test_restart_keeps_the_address_and_the_data(tmp_path: Path) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    kafka = lk.LocalKafka(tmp_path / "broker").start(timeout=90)
    try:
        bootstrap = kafka.bootstrap_servers
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(20):
                await producer.send_and_wait("survivors", f"r{i}".encode(), partition=0)
        finally:
            await producer.stop()
        first_pid = kafka.pid

        kafka.restart(timeout=90)  # kill -9 first: the broker shuts down uncleanly
        assert kafka.bootstrap_servers == bootstrap
        assert kafka.pid != first_pid
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        try:
            tp = TopicPartition("survivors", 0)
            consumer.assign([tp])
            got: list[bytes] = []
            for _ in range(50):
                batches = await consumer.getmany(tp, timeout_ms=200)
                got += [m.value for m in batches.get(tp, [])]
                if len(got) >= 20:
                    break
        finally:
            await consumer.stop()
        assert got == [f"r{i}".encode() for i in range(20)]

        kafka.kill()
        kafka.kill()  # idempotent
        assert kafka.pid is None
        with pytest.raises(OSError):
            lk.probe_metadata(bootstrap, timeout=1)
    finally:
        kafka.stop()
