"""An idempotent producer that a refused batch does not break.

A plain producer whose request the broker appended, but whose answer never came (the broker
killed in between), sends the batch again once the broker is back: the log holds it twice,
and a key written twice in it steps back and forth (a CI run of the faust engine's
broker-restart case: `receipts-changelog` offsets 24-32 and 33-41 the same batch). An
idempotent producer numbers its batches, and the broker drops one it already has.

aiokafka (0.14) numbers a batch when it sends it. A batch the broker refuses outright (too
large, invalid) never took its numbers, so every later batch on that partition is refused as
out of order (OutOfOrderSequenceNumber), for good. Java's producer resets its sequence then
(KIP-360); aiokafka does not. So this producer gives a failed batch's numbers back, if none
were given out after them: aiokafka sends one batch at a time per partition (it mutes a
partition while its batch is in flight), and a batch's failure callbacks run before the
sender takes the partition's next batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition


class IdempotentProducer(AIOKafkaProducer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "acks": "all", "enable_idempotence": True})
        accumulator = self._message_accumulator
        accumulator._pop_batch = self._numbered(accumulator._pop_batch)

    def _numbered(self, pop: Callable[[TopicPartition], Any]) -> Callable[[TopicPartition], Any]:
        txn = self._txn_manager
        accumulator = self._message_accumulator

        def pop_batch(tp: TopicPartition) -> Any:
            first_send = accumulator._batches[tp][0].retry_count == 0
            before = txn.sequence_number(tp)
            batch = pop(tp)
            if first_send:  # numbered now (a retry keeps its numbers)
                after = txn.sequence_number(tp)

                def give_back(fut: Any) -> None:
                    if fut.cancelled() or fut.exception() is None:
                        return
                    if txn.sequence_number(tp) == after:  # nothing numbered since
                        txn._sequence_numbers[tp] = before

                batch.future.add_done_callback(give_back)
            return batch

        return pop_batch
