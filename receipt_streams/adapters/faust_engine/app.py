"""The Faust wiring: topics, tables and the fold agent. Agents only decode, call the core
`Processor`, and send what it returns.

All room-keyed inputs (client receipts, membership, events, ticks) feed one agent with
`concurrency=1`, so one partition's records are folded one at a time and every table write
goes to the changelog partition of the record being processed.

Outputs that cannot be produced are parked, not lost and not fatal: one over
`producer_max_request_bytes` becomes a DLQ record before it is sent (Faust would raise, and
the agent crash); one the broker refuses (Faust only logs a warning and drops it) is sent once
more on its own, and if refused again becomes a DLQ record. Faust sends its own changelog
writes: a refused one is dropped with Faust's warning (see README, "Parking").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import faust

from receipt_streams.adapters import metrics
from receipt_streams.adapters.api.app import Api, serving
from receipt_streams.adapters.api.auth import verifier_for
from receipt_streams.adapters.api.sync_feed import SyncFeed
from receipt_streams.adapters.client_ids import member_client_id
from receipt_streams.adapters.clock import now_ms
from receipt_streams.adapters.effects import Output, Router, Tally, limits_of
from receipt_streams.adapters.faust_engine.acks import FoldConsumer, Processed, consumer_class
from receipt_streams.adapters.faust_engine.producer import DurableProducer
from receipt_streams.adapters.isolation import REFUSED_DATA
from receipt_streams.adapters.parking import park_output
from receipt_streams.adapters.relays.deltas import DeltaRelay
from receipt_streams.adapters.relays.edus import EduRelay
from receipt_streams.adapters.sending import partition_of
from receipt_streams.config import Settings
from receipt_streams.core.dlq import Source
from receipt_streams.core.processor import (
    FEDERATION_IN,
    FEDERATION_OUT,
    HISTORY,
    READ_POSITIONS,
    ForgetHeld,
    Processor,
)

log = logging.getLogger(__name__)

RAW = {"key_serializer": "raw", "value_serializer": "raw"}


def create_app(s: Settings) -> faust.App:
    app = faust.App(
        s.app_id,
        broker=[f"kafka://{b.strip()}" for b in s.bootstrap_servers.split(",")],
        store=s.store_url,
        datadir=str(s.data_dir / "tables"),
        autodiscover=False,
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_client_id=member_client_id(s, "fold"),  # names the web port for `ctl status`
        broker_commit_interval=s.commit_interval_s,
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=s.session_timeout_s / 4,
        producer_acks=-1,
        producer_linger=s.producer_linger_ms / 1000,
        producer_max_request_size=s.producer_max_request_bytes,
        web_enabled=False,  # the HTTP API is our own aiohttp app (adapters/api/app.py)
        **RAW,
    )
    # Faust loses records around rebalances and broker outages (acks.py): its consumer
    # commits only what our agents processed, has them fold each partition in order, and
    # repairs a partition that stalls. Its flush gives up on buffered changelog writes
    # (producer.py): ours waits for them before any commit.
    processed = Processed()
    app.transport.Consumer = consumer_class(processed, s.bootstrap_servers)
    app.transport.Producer = DurableProducer
    n = s.partitions
    inputs = app.topic(*s.room_keyed_inputs(), **RAW)
    dlq = app.topic(s.topic_dlq, partitions=n, **RAW)
    ticks = app.topic(s.topic_ticks, partitions=n, **RAW)
    federation = app.topic(s.topic_federation, **RAW)
    processed.guard(*inputs.topics, *federation.topics)
    streams = {
        FEDERATION_IN: app.topic(s.topic_federation_in, partitions=n, **RAW),
        FEDERATION_OUT: app.topic(s.topic_outbox, partitions=n, **RAW),
        READ_POSITIONS: app.topic(s.topic_read_positions, partitions=n, **RAW),
        HISTORY: app.topic(s.topic_history, partitions=n, **RAW),
    }
    tables = {
        name: app.Table(name, partitions=n, key_type=bytes, value_type=bytes)
        for name in ("receipts", "room_state", "held")
    }
    # One Faust table serves every partition of the worker: an erasure must keep to the
    # rooms of the partition its copy is on (the producers' partitioner: murmur2 of room_id).
    processor = Processor(
        tables["receipts"],
        tables["room_state"],
        tables["held"],
        limits_of(s),
        room_partition=lambda room_id: partition_of(room_id.encode(), n),
    )
    router = Router(processor, s)
    topics = {
        s.topic_dlq: dlq,
        s.topic_federation_in: streams[FEDERATION_IN],
        s.topic_outbox: streams[FEDERATION_OUT],
        s.topic_read_positions: streams[READ_POSITIONS],
        s.topic_history: streams[HISTORY],
    }

    refusals = _Refusals(s, topics, dlq)

    # Held records to forget, per partition: applied at that partition's next tick, after
    # one producer flush makes durable everything they became (table writes, DLQ records).
    # Faust flushes before every commit too, so one flush per tick replaces one per release.
    forget: dict[int, list[ForgetHeld]] = {}

    async def run(msg: Any) -> None:
        """One record through the core; its outputs sent at once ("force": not as an
        attachment published one by one at the next commit; faust flushes the producer
        before committing, so nothing is lost)."""
        metrics.child(metrics.INPUTS, msg.topic).inc()
        outputs: list[Output] = []
        tally = Tally()
        effects = router.handle(msg, now_ms())
        origin = Source(msg.topic, msg.partition, msg.offset, None, None)
        source = router.source_of(msg.topic)
        for removal in router.carry_out(effects, source, outputs, tally, origin):
            forget.setdefault(removal.partition, []).append(removal)
        tally.flush()
        for output in outputs:
            refusals.watch(await refusals.send(output), output, origin)

    async def forget_released(partition: int) -> None:
        """Runs while a tick of `partition` is processed, so the writes land there."""
        removals = forget.pop(partition, [])
        if removals:
            await app.producer.flush()
            for removal in removals:
                processor.held.remove(removal.key, removal.records)

    def consumer() -> FoldConsumer:
        return cast(FoldConsumer, app.consumer)

    @app.agent(inputs, concurrency=1)
    async def fold(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            if not await consumer().admit(msg):
                continue  # folded already, or out of order (read again, in order)
            tick = msg.topic == s.topic_ticks
            if tick:
                await forget_released(msg.partition)
            await run(msg)
            if tick:
                # Expired receipts are forgotten at once (after their DLQ records are
                # durable): a release before the next tick must not fold them as well.
                await forget_released(msg.partition)
            consumer().done(msg)

    @app.agent(federation, concurrency=1)
    async def split_federation(stream: Any) -> None:
        """Inbound EDUs are keyed by origin: split them and route each entry to its room."""
        async for event in stream.events():
            if await consumer().admit(event.message):
                await run(event.message)
                consumer().done(event.message)

    @app.timer(5.0)
    async def fold_lag() -> None:
        await metrics.record_lag("fold", app.consumer, every_s=0)

    @app.timer(s.tick_interval_s)
    async def send_ticks() -> None:
        """Drive the grace-period sweep on every partition, busy or idle."""
        stamp = str(now_ms()).encode()
        for partition in range(n):
            await ticks.send(key=b"tick", value=stamp, partition=partition)

    relays = [DeltaRelay(s), EduRelay(s)] if s.run_relays else []

    @app.task
    async def run_relays() -> None:
        await asyncio.gather(*(relay.run_forever() for relay in relays))

    feed = SyncFeed(s)
    api = Api(
        s, feed, verifier_for(s), ready=app.tables.recovery.completed.is_set, client=s.serve_api
    )

    @app.task
    async def serve_api() -> None:
        """The HTTP API (or, with serve_api off, only health, readiness and metrics)."""
        try:
            async with serving(api, s):
                if s.serve_api:
                    await feed.run_forever()
                else:
                    await asyncio.Event().wait()
        finally:
            feed.close()  # the server has stopped: nothing reads the view any more

    return app


class _Refusals:
    """Outputs the broker refused (Faust logs them and drops them): each is sent once more,
    on its own (a batch is refused whole, so a record may have been refused for another's
    sake), then parked in the DLQ if it is refused again."""

    def __init__(self, s: Settings, topics: dict[str, Any], dlq: Any) -> None:
        self.s, self.topics, self.dlq = s, topics, dlq
        self.lock = asyncio.Lock()  # one retry at a time: each goes out alone
        self.pending: set[asyncio.Task[None]] = set()

    async def send(self, output: Output) -> Any:
        """Send at once (like `send(force=True)`: not an attachment published at the next
        commit), keeping the message's future: its error is then retrieved here, not logged
        by asyncio as never retrieved."""
        topic, key, value, partition = output  # a feed's record: its room's partition
        message = self.topics[topic].as_future_message(key, value, partition=partition)
        await self.topics[topic].publish_message(message, wait=False)
        return message

    def watch(self, sent: asyncio.Future[Any], output: Output, origin: Source) -> None:
        def done(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled() or not isinstance(fut.exception(), REFUSED_DATA):
                return
            task = asyncio.ensure_future(self._again_or_park(output, origin))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

        sent.add_done_callback(done)

    async def _again_or_park(self, output: Output, origin: Source) -> None:
        async with self.lock:
            try:
                await (await self.send(output))
                return
            except Exception as exc:
                if not isinstance(exc, REFUSED_DATA):
                    log.exception("an output refused by the broker could not be sent again")
                    return
                why = f"refused by the broker, twice: {exc!r}"
            _, dlq_key, dlq_value, _ = park_output(self.s, output, origin, why)
            await self.dlq.send(key=dlq_key, value=dlq_value, force=True)
