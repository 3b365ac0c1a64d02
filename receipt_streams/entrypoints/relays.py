"""`receipt-streams relays`: the sync-delta and federation-EDU relays in a process of their own.

They read the internal logs the fold writes (the receipts changelog, the outbox) and keep no
table, so they can run beside the workers on another core or machine (start the workers with
RECEIPT_STREAMS_RUN_RELAYS=false). Each relay is one consumer group: any number of relays
processes share the partitions.
"""

from __future__ import annotations

from receipt_streams.adapters.api.app import Api
from receipt_streams.adapters.api.auth import verifier_for
from receipt_streams.adapters.api.sync_feed import SyncFeed
from receipt_streams.adapters.relays.deltas import DeltaRelay
from receipt_streams.adapters.relays.edus import EduRelay
from receipt_streams.config import Settings
from receipt_streams.entrypoints.running import run_command, run_until_stopped


async def serve(s: Settings) -> None:
    # No client API (served elsewhere): /healthz and /readyz on the client port, those and
    # /metrics on the admin listener.
    api = Api(s, SyncFeed(s), verifier_for(s), ready=lambda: True, client=False)
    loops = [DeltaRelay(s).run_forever(), EduRelay(s).run_forever()]
    await run_until_stopped(s, api, loops, "relays")


def run_relays(s: Settings) -> int:
    return run_command(s, serve)
