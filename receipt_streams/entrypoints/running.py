"""What every long-running command does: serve HTTP, run its loops, stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.config
import signal
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from receipt_streams.adapters import metrics
from receipt_streams.adapters.api.app import Api, serving
from receipt_streams.adapters.engine.stores import StoreInUse
from receipt_streams.adapters.topics import ensure_topics
from receipt_streams.config import Settings
from receipt_streams.logs import logging_config

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_REFUSED = 2  # the start was refused (the message says why), not a crash


@contextlib.contextmanager
def refused_start() -> Iterator[None]:
    """A start this process must not go on with (its data dir is another's) ends with one
    clear log line, no stack trace; the caller then returns `EXIT_REFUSED`."""
    try:
        yield
    except StoreInUse as exc:
        log.critical("cannot start: %s", exc, extra={"path": str(exc.path)})


async def run_until_stopped(
    s: Settings, api: Api, loops: Sequence[Coroutine[Any, Any, None]], name: str
) -> None:
    """Create missing topics, then serve `api` and run `loops` until SIGINT or SIGTERM.
    Whichever process starts first lays the topics out (a consumer must not auto-create one
    with the broker's default partition count). Stopping may cut a batch short: everything
    here commits only after its outputs are acknowledged, so the batch is replayed."""
    if s.create_topics:
        await ensure_topics(s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serving(api, s):
        tasks = [asyncio.create_task(c) for c in loops]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    log.info("%s stopped", name)


def run_loop(s: Settings, main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on the configured event loop (`EVENT_LOOP`): under the latency bench the
    API process spent an eighth of its time in asyncio's socket transport, which uvloop does
    in C."""
    if s.event_loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)


def run_command(s: Settings, serve: Callable[[Settings], Coroutine[Any, Any, None]]) -> int:
    """A console command's body: logging as configured, then `serve` until stopped."""
    logging.config.dictConfig(logging_config(s.log_level, s.log_json))
    metrics.time_gc_pauses()
    with refused_start():
        run_loop(s, serve(s))
        return 0
    return EXIT_REFUSED
