"""`receipt-streams worker`: provision topics, guard local state, run the Faust worker."""

from __future__ import annotations

import asyncio
import logging
import logging.config

import faust

from receipt_streams.adapters.faust_app import create_app
from receipt_streams.adapters.state_guard import StateGuard
from receipt_streams.adapters.topics import ensure_topics
from receipt_streams.config import Settings
from receipt_streams.logs import logging_config

log = logging.getLogger(__name__)


def run_worker(s: Settings) -> int:
    config = logging_config(s.log_level, s.log_json)
    logging.config.dictConfig(config)
    if s.create_topics:
        asyncio.run(ensure_topics(s))
    asyncio.set_event_loop(asyncio.new_event_loop())
    guard = StateGuard(s.data_dir)
    guard.open()
    app = create_app(s)
    worker = faust.Worker(
        app, loglevel=s.log_level, logging_config=config, quiet=True, redirect_stdouts=False
    )
    log.info(
        "worker starting",
        extra={
            "bootstrap": s.bootstrap_servers,
            "app_id": s.app_id,
            "partitions": s.partitions,
            "web_port": s.web_port,
        },
    )
    code: int = 1
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    if code == 0 and app.crash_reason is None:
        guard.close_clean()
    return code
