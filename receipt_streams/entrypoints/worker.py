"""`receipt-streams worker`: provision topics, then run the fold, the relays and the API
(the relays and the API can run in processes of their own: `receipt-streams relays`, `api`).

The fold is the batch engine (aiokafka) unless RECEIPT_STREAMS_ENGINE=faust.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os

from receipt_streams.adapters import metrics
from receipt_streams.adapters.api.app import Api
from receipt_streams.adapters.api.auth import verifier_for
from receipt_streams.adapters.api.sync_feed import SyncFeed
from receipt_streams.adapters.engine.runner import FoldEngine
from receipt_streams.adapters.engine.stores import claim_dir, ensure_not_in_use
from receipt_streams.adapters.relays.deltas import DeltaRelay
from receipt_streams.adapters.relays.edus import EduRelay
from receipt_streams.adapters.topics import ensure_topics
from receipt_streams.config import Settings
from receipt_streams.entrypoints.running import (
    EXIT_REFUSED,
    refused_start,
    run_loop,
    run_until_stopped,
)
from receipt_streams.logs import logging_config

log = logging.getLogger(__name__)


def _starting(s: Settings) -> None:
    log.info(
        "worker starting",
        extra={
            "engine": s.engine,
            "bootstrap": s.bootstrap_servers,
            "app_id": s.app_id,
            "partitions": s.partitions,
            "web_port": s.web_port,
        },
    )


async def serve(s: Settings) -> None:
    """The batch fold, the relays (unless run apart) and the HTTP API in one event loop,
    until SIGINT/SIGTERM."""
    feed = SyncFeed(s)
    if s.serve_api:
        feed.open()  # a data dir another process holds stops the start here
    engine = FoldEngine(s)
    api = Api(s, feed, verifier_for(s), ready=engine.ready, client=s.serve_api)
    _starting(s)
    loops = [engine.run_forever()]
    if s.run_relays:
        loops += [DeltaRelay(s).run_forever(), EduRelay(s).run_forever()]
    if s.serve_api:
        loops.append(feed.run_forever())
    try:
        await run_until_stopped(s, api, loops, "worker")
    finally:
        feed.close()


def run_faust_worker(s: Settings, config: dict[str, object]) -> int:
    import faust

    from receipt_streams.adapters.faust_engine.app import create_app
    from receipt_streams.adapters.faust_engine.state_guard import StateGuard

    if s.serve_api and s.read_store == "rocksdb":
        # The Faust app opens its view when its API task starts: refuse a held one now.
        ensure_not_in_use(s.data_dir / "read-view")
    if s.create_topics:
        asyncio.run(ensure_topics(s))
    asyncio.set_event_loop(asyncio.new_event_loop())
    guard = StateGuard(s.data_dir)
    guard.open()
    app = create_app(s)
    worker = faust.Worker(
        app, loglevel=s.log_level, logging_config=config, quiet=True, redirect_stdouts=False
    )
    _starting(s)
    code: int = 1
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    if code == 0 and app.crash_reason is None:
        guard.close_clean()
    return code


def run_worker(s: Settings) -> int:
    config = logging_config(s.log_level, s.log_json)
    logging.config.dictConfig(config)
    metrics.time_gc_pauses()
    with refused_start():
        claim = claim_dir(s.data_dir)  # one worker per data dir, whichever engine
        try:
            if s.engine == "faust":
                return run_faust_worker(s, config)
            run_loop(s, serve(s))
            return 0
        finally:
            os.close(claim)
    return EXIT_REFUSED
