"""`receipt-streams api`: the client API and /sync view in a process of its own.

It needs no tables: it writes client receipts to Kafka and reads the changelogs, so any number
of API processes can run beside the workers (start workers with RECEIPT_STREAMS_SERVE_API=false).
"""

from __future__ import annotations

from receipt_streams.adapters.api.app import Api
from receipt_streams.adapters.api.auth import verifier_for
from receipt_streams.adapters.api.sync_feed import SyncFeed
from receipt_streams.config import Settings
from receipt_streams.entrypoints.running import run_command, run_until_stopped


async def serve(s: Settings) -> None:
    feed = SyncFeed(s)
    feed.open()  # a data dir another process holds stops the start here
    try:
        api = Api(s, feed, verifier_for(s), ready=lambda: True)
        await run_until_stopped(s, api, [feed.run_forever()], "API")
    finally:
        feed.close()


def run_api(s: Settings) -> int:
    return run_command(s, serve)
