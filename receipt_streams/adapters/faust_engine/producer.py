"""A producer whose flush waits for every buffered write.

Faust (0.15) sends table changelog writes through a buffer (`send_soon`) that one task hands
to aiokafka a message at a time. Its `flush()`, which Faust calls before every offset commit
and before it gives partitions up in a rebalance, gives up on that buffer as soon as 0.1 s
passes without one message handed over (aiokafka blocks the hand-over while a partition's
batch waits to be sent, which a loaded machine or a slow broker turns into more than 0.1 s),
and then flushes only what aiokafka already holds. So an offset commit could cover records
whose changelog writes were still in the buffer: a SIGKILL then lost them for good (a key
one change older than its inputs), and a worker giving a partition up could write its
changelog after the new owner had restored from it (a key stepping back on the changelog).

`DurableProducer.flush()` first waits until every write put in the buffer is acknowledged
by the broker (or failed), then flushes aiokafka as before.

And it is idempotent (`IdempotentProducer`): Faust's own producer is not, and a batch of
changelog writes the broker appended just before it was killed was appended again when the
producer re-sent it after the restart (a key stepping back, then forward again).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faust.transport.drivers.aiokafka import Producer
from faust.types import FutureMessage

from receipt_streams.adapters.idempotent_producer import IdempotentProducer

log = logging.getLogger(__name__)

#: How long one wait for the buffer lasts before it is logged (and waited for again).
SLOW_FLUSH_S = 10.0


class DurableProducer(Producer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Writes put in the buffer and not yet acknowledged (or failed).
        self.unsent: set[FutureMessage] = set()

    @property
    def _producer_type(self) -> type[IdempotentProducer]:
        return IdempotentProducer

    def send_soon(self, fut: FutureMessage) -> None:
        self.unsent.add(fut)
        fut.add_done_callback(self.unsent.discard)
        super().send_soon(fut)

    async def flush(self) -> None:
        await self.buffer.flush()  # Faust's: may give up with writes left in the buffer
        if self.buffer.size:
            log.info("flush: %d changelog writes left in faust's buffer: waiting", self.buffer.size)
        # The writes of every record acked before this flush are in `unsent` now (a table
        # write is put in the buffer while its record is folded); later ones can wait.
        writes = set(self.unsent)
        waited = 0.0
        while writes:
            if self.buffer.should_stop:
                log.warning("flush: the producer stopped with %d writes unsent", len(writes))
                break
            _, pending = await asyncio.wait(writes, timeout=SLOW_FLUSH_S)
            writes = set(pending)
            if writes:
                waited += SLOW_FLUSH_S
                log.warning(
                    "flush: %d buffered writes still unacknowledged after %.0f s",
                    len(writes),
                    waited,
                )
        await super().flush()
