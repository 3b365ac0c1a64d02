"""A relay: a consumer group on an internal log the fold writes, batched into outputs.

Each source partition is a task of its own: its state (records or pending entries) and the
sink its outputs and offsets are published by. With `exactly_once`, a task's outputs and
offsets go out in one transaction on a producer whose id names the relay and the partition
(`<app_id>-<relay>-<partition>`), so a relay that was paused past its session is fenced as
soon as the partition's new owner starts, and cannot publish what it built before its pause.
It reads the log read-committed: only what the fold committed. A revoked partition's state is
dropped with it; a failing cycle restarts the relay from its last commit (and `/readyz` says
so when it keeps failing).

An output can never stop a relay: one over `producer_max_request_bytes` becomes a DLQ record
before it is sent, and when the broker refuses a partition's outputs, they are probed in
halves (in transactions that are aborted) until the refused ones are found; those become DLQ
records (`unproducible`) and the rest is published with the offsets, as one transaction (part
by part as probed: parts the broker took alone might be refused packed together).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from receipt_streams.adapters import metrics
from receipt_streams.adapters.client_ids import member_client_id
from receipt_streams.adapters.clock import now_ms
from receipt_streams.adapters.effects import Output
from receipt_streams.adapters.isolation import caused_by_contents, isolate
from receipt_streams.adapters.parking import bounded, park_output
from receipt_streams.adapters.supervise import LoopHealth, supervise
from receipt_streams.adapters.transactions import (
    Fenced,
    PartitionSink,
    fence_and_seek,
    read_committed,
    sink_for,
)
from receipt_streams.config import Settings
from receipt_streams.core.dlq import Source

log = logging.getLogger(__name__)

State = TypeVar("State")


class Relay(ABC, Generic[State]):
    name = "relay"

    def __init__(self, settings: Settings, source_topic: str, window_ms: int) -> None:
        self.s = settings
        self.source_topic = source_topic
        self.window = window_ms / 1000
        self.group_id = f"{settings.app_id}-{self.name}"
        self.states: dict[TopicPartition, State] = {}
        self.sinks: dict[TopicPartition, PartitionSink] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.lock = asyncio.Lock()
        self.health = LoopHealth.of(self.name)
        self.consumer: AIOKafkaConsumer | None = None

    # --- what a relay does with one partition ---------------------------------------------

    @abstractmethod
    def new_state(self) -> State: ...

    @abstractmethod
    def absorb(self, state: State, tp: TopicPartition, records: Sequence[Any]) -> None:
        """Take in consumed records (in offset order)."""

    @abstractmethod
    def drain(self, state: State, now: int) -> list[Output]:
        """The outputs due now."""

    @abstractmethod
    def position(self, state: State, consumed: int) -> int | None:
        """The offset safe to commit once `drain`'s outputs are published; `consumed` is
        the consumer's position (past any transaction marker after the last record)."""

    def idle_poll_ms(self) -> int:
        return 500

    # --- the loop ------------------------------------------------------------------------

    async def run_forever(self) -> None:
        await supervise(self.name, self.run, on_failure=self._reset)

    def _reset(self) -> None:
        self.states.clear()
        self.committed.clear()

    async def run(self) -> None:
        s = self.s
        self.consumer = consumer = read_committed(
            s,
            group_id=self.group_id,
            client_id=member_client_id(s, self.name),
            auto_offset_reset="earliest",
            max_poll_records=5000,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.session_timeout_s * 250),
        )
        try:
            consumer.subscribe([self.source_topic], listener=_Rebalance(self))
            await consumer.start()
            try:
                while True:
                    await self._collect(consumer)
                    async with self.lock:
                        await self._publish(consumer, now_ms())
                    self.health.succeeded()
                    await metrics.record_lag(self.name, consumer)
            finally:
                await self._drop(set(self.sinks))
                await consumer.stop()
        except Fenced:
            metrics.child(metrics.FENCED, self.name).inc()
            raise
        finally:
            # A rebalance can still assign partitions while the consumer stops: their sinks
            # must not outlive this run, or the next run's `assign` finds them, creates no
            # state for those partitions and never reads them again.
            await self._drop(set(self.sinks))
            self._reset()

    async def _collect(self, consumer: AIOKafkaConsumer) -> None:
        got = await consumer.getmany(timeout_ms=self.idle_poll_ms())
        if not got:
            return
        deadline = time.monotonic() + self.window
        while True:
            async with self.lock:  # a rebalance may have taken a partition meanwhile
                for tp, records in got.items():
                    if tp in self.states:
                        self.absorb(self.states[tp], tp, records)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            got = await consumer.getmany(timeout_ms=max(1, int(left * 1000)))

    async def _publish(self, consumer: AIOKafkaConsumer, now: int) -> None:
        """Each partition's due outputs and its new position, through its sink."""
        jobs = []
        for tp, state in self.states.items():
            outputs = self.drain(state, now)
            position = self.position(state, await consumer.position(tp))
            moved = position is not None and position != self.committed.get(tp)
            if outputs or moved:
                offsets = {tp: position} if moved and position is not None else {}
                jobs.append(self._publish_one(tp, outputs, offsets))
        await asyncio.gather(*jobs)

    async def _publish_one(
        self, tp: TopicPartition, outputs: list[Output], offsets: dict[TopicPartition, int]
    ) -> None:
        sink = self.sinks[tp]
        origin = Source(self.source_topic, tp.partition, -1, None, None)  # from many records
        outputs = [bounded(self.s, output, origin) for output in outputs]
        try:
            await sink.publish([outputs], offsets)
        except Exception as exc:
            if not (outputs and caused_by_contents(exc)):
                raise
            await self._park_refused(sink, origin, outputs, offsets, exc)
        if tp in offsets:
            self.committed[tp] = offsets[tp]

    async def _park_refused(
        self,
        sink: PartitionSink,
        origin: Source,
        outputs: list[Output],
        offsets: dict[TopicPartition, int],
        exc: BaseException,
    ) -> None:
        """The broker refused some of `outputs`: find which (probes in halves), publish the
        others and a DLQ record for each refused one, with `offsets`."""
        metrics.child(metrics.ISOLATIONS, self.name).inc()
        log.warning(
            "the broker refused a relay's outputs: probing them to park the refused ones",
            extra={"partition": origin.partition, "outputs": len(outputs), "error": repr(exc)},
        )
        await sink.reset()  # a refused send leaves the producer unusable

        taken: list[Sequence[Output]] = []  # the parts the broker took, in order

        async def probe(part: Sequence[Output]) -> BaseException | None:
            try:
                await sink.probe(part)
            except Exception as error:
                if not caused_by_contents(error):
                    raise
                await sink.reset()
                return error
            taken.append(part)
            return None

        refused: list[tuple[Output, BaseException]] = []

        async def park(output: Output, error: BaseException) -> None:
            refused.append((output, error))

        await isolate(outputs, probe, park)
        dlq = [park_output(self.s, o, origin, f"refused by the broker: {e!r}") for o, e in refused]
        # Part by part, as probed: parts the broker took alone may be refused packed together.
        await sink.publish([*taken, dlq], offsets, apart=True)

    # --- rebalance -----------------------------------------------------------------------

    def _sink(self, tp: TopicPartition) -> PartitionSink:
        assert self.consumer is not None
        tid = f"{self.s.app_id}-{self.name}-{tp.partition}"
        return sink_for(self.s, tid, self.group_id, self.consumer)

    async def assign(self, tps: list[TopicPartition]) -> None:
        new = [tp for tp in tps if tp not in self.sinks]
        sinks = {tp: self._sink(tp) for tp in new}
        self.sinks.update(sinks)
        for tp in new:
            self.states[tp] = self.new_state()
        assert self.consumer is not None
        await fence_and_seek(self.consumer, list(sinks.values()), new)
        if new:
            positions = {tp.partition: await self.consumer.position(tp) for tp in new}
            log.info(f"{self.name} relay took partitions", extra={"positions": positions})

    async def _drop(self, tps: set[TopicPartition]) -> None:
        """Forget revoked partitions: their state and sinks (their new owner re-reads from
        the last commit), and the position committed for them."""
        if tps:
            dropped = sorted(tp.partition for tp in tps)
            log.info(f"{self.name} relay let partitions go", extra={"partitions": dropped})
        for tp in tps:
            self.states.pop(tp, None)
            self.committed.pop(tp, None)
            sink = self.sinks.pop(tp, None)
            if sink is not None:
                await sink.stop()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, relay: Relay[Any]) -> None:
        self.relay = relay

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.relay.lock:
            await self.relay._drop(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        async with self.relay.lock:
            await self.relay.assign(list(assigned))
