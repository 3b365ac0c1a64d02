"""`receipt-streams api`: the client API and /sync view in a process of its own.

It needs no tables: it writes client receipts to Kafka and reads the changelogs, so any number
of API processes can run beside the workers (start workers with RECEIPT_STREAMS_SERVE_API=false).
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import signal

from receipt_streams.adapters.auth import verifier_for
from receipt_streams.adapters.http_api import Api, serving
from receipt_streams.adapters.sync_feed import SyncFeed
from receipt_streams.config import Settings
from receipt_streams.logs import logging_config

log = logging.getLogger(__name__)


async def serve(s: Settings) -> None:
    feed = SyncFeed(s)
    api = Api(s, feed, verifier_for(s), ready=lambda: True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serving(api, s):
        feed_task = asyncio.create_task(feed.run_forever())
        await stop.wait()
        feed_task.cancel()
        await asyncio.gather(feed_task, return_exceptions=True)
    log.info("API stopped")


def run_api(s: Settings) -> int:
    logging.config.dictConfig(logging_config(s.log_level, s.log_json))
    asyncio.run(serve(s))
    return 0
