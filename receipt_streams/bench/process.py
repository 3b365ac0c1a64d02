"""Run real `receipt-streams worker` processes, and talk Kafka: for the benchmark and the
tests. Workers run as subprocesses, as in production, so they can be SIGKILLed at any moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from receipt_streams.config import Settings

# Below the kernel's ephemeral range (32768-60999 by default): a port the kernel handed out
# as free may go to a Kafka client's next outgoing connection before the worker binds it.
_PORTS = range(20_000, 32_000)


_HANDED_OUT: set[int] = set()  # never twice from one process: a port given is bound later


def free_port() -> int:
    """A port nothing listens on now, outside the range outgoing connections take theirs,
    and not handed out before by this process (two workers of one test, started together,
    could otherwise draw the same port before either binds it)."""
    for _ in range(200):
        port = random.choice(_PORTS)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORTS.start}-{_PORTS.stop - 1}")


def worker_settings(bootstrap: str, tmp: Path, **overrides: Any) -> Settings:
    """Settings with topic names and app id of their own, so runs never share data."""
    tag = uuid.uuid4().hex[:8]
    names = {
        f"topic_{k}": f"t{tag}.{k}"
        for k in (
            "client",
            "federation",
            "membership",
            "events",
            "sync",
            "edus",
            "dlq",
            "ticks",
            "read_positions",
            "admin",
            "history",
        )
    }
    base: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "app_id": f"rs-{tag}",
        "partitions": 2,
        "data_dir": tmp / f"worker-{tag}",
        "web_port": free_port(),
        "admin_port": free_port(),
        "grace_period_s": 3.0,
        "sync_rate_limit_per_s": 0.0,  # tests long-poll /sync often; rate-limit tests set it
        "tick_interval_s": 0.5,
        "commit_interval_s": 0.5,
        "session_timeout_s": 6.0,
        "batch_window_ms": 50,
        "log_json": False,
        "server_name": "hs1",
        **names,
    }
    base.update(overrides)
    return Settings(**base)


def settings_env(s: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIPT_STREAMS_")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    for name, value in s.model_dump().items():
        if value is None:
            continue  # unset: the child uses the default
        env[f"RECEIPT_STREAMS_{name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    return env


def _die_with_parent() -> None:
    """Linux: SIGKILL the worker when the process that started it dies, so a crashed test
    run or benchmark never leaves workers behind."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) of process `pid`, from /proc (Linux); NaN when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def disk_read_bytes(pid: int) -> float:
    """Bytes process `pid` has had read from storage (not from the page cache), from
    /proc (Linux); NaN when gone or unreadable."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return float(line.split()[1])
    except OSError:
        pass
    return math.nan


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


def machine_steal_seconds() -> float:
    """CPU seconds since boot, all cores, that a virtual machine's cores were ready to run
    and the hypervisor ran something else (`steal` in /proc/stat): counted as busy above, but
    no process of ours ran in them."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return int(fields[7]) / os.sysconf("SC_CLK_TCK") if len(fields) > 7 else 0.0


class WorkerProcess:
    def __init__(self, settings: Settings, log_path: Path, command: str = "worker") -> None:
        self.settings = settings
        self.command = command  # "worker", or "api" or "relays" run apart
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> WorkerProcess:
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== start #{self.starts} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "receipt_streams.entrypoints.cli", self.command],
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 90) -> float:
        """Seconds until this start answers GET /readyz with 200 (partitions assigned, tables
        recovered, sync feed caught up). Asked on its admin port, its own: API processes may
        share the client port (`web_reuse_port`), where another could answer."""
        t0 = time.monotonic()
        url = f"http://127.0.0.1:{self.settings.admin_port}/readyz"
        while time.monotonic() - t0 < timeout:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - t0
            except (OSError, urllib.error.HTTPError):
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready in {timeout} s:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        """CPU time (user and system) this start has used so far; NaN once it has exited."""
        return cpu_seconds(self.proc.pid) if self.proc is not None else math.nan

    def _samples(self) -> dict[str, float]:
        """This process's /metrics (on the admin listener), each sample name summed over its
        labels; empty when the process does not answer."""
        url = f"http://127.0.0.1:{self.settings.admin_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        sums: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
        return sums

    def metric(self, name: str) -> float | None:
        """A gauge or counter (summed over its labels); None when the process does not answer
        or has no such metric."""
        return self._samples().get(name)

    def metric_sums(self, name: str) -> dict[str, float]:
        """A histogram's `count` and `sum`, summed over its labels; empty when the process
        does not answer."""
        samples = self._samples()
        return {p: samples[f"{name}_{p}"] for p in ("count", "sum") if f"{name}_{p}" in samples}

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no clean shutdown."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP the process group: a GC pause or a VM stall, the process unaware of it."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause()``: the process runs on as if no time had passed."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode if self.proc else None


# --- Kafka helpers ---------------------------------------------------------------------


def dumps(value: Any) -> bytes:
    return value if isinstance(value, bytes) else orjson.dumps(value)


async def produce(bootstrap: str, records: Iterable[tuple[str, bytes | None, Any]]) -> None:
    """Send (topic, key, value) in order and wait for every ack."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        enable_idempotence=True,
        max_request_size=4_000_000,
    )
    await producer.start()
    try:
        futures = [await producer.send(t, dumps(v), key=k) for t, k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class TopicReader:
    """Reads a topic from the beginning, keeping everything seen so far.

    Committed records only by default, as every consumer of the outputs and changelogs must
    read them (they are written in transactions; aborted writes are never seen).
    """

    def __init__(self, bootstrap: str, topic: str, isolation_level: str = "read_committed") -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.isolation_level = isolation_level
        self.records: list[Any] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicReader:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            isolation_level=self.isolation_level,
        )
        await self._consumer.start()
        partitions = None
        for _ in range(100):
            partitions = self._consumer.partitions_for_topic(self.topic)
            if partitions:
                break
            await self._consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        assert partitions, f"topic {self.topic} does not exist"
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._consumer is not None
        await self._consumer.stop()

    async def poll(self, timeout_ms: int = 200) -> list[Any]:
        assert self._consumer is not None
        got = await self._consumer.getmany(timeout_ms=timeout_ms)
        new = [m for msgs in got.values() for m in msgs]
        self.records.extend(new)
        return new

    async def wait_for(
        self, predicate: Callable[[list[Any]], bool], timeout: float = 30, what: str = "records"
    ) -> list[Any]:
        deadline = time.monotonic() + timeout
        while not predicate(self.records):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out waiting for {what} on {self.topic}; have {len(self.records)}"
                )
            await self.poll()
        return self.records

    def values(self) -> list[Any]:
        return [orjson.loads(m.value) for m in self.records if m.value is not None]
