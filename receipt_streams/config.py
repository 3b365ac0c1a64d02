"""Configuration from environment variables (prefix `RECEIPT_STREAMS_`), documented defaults.

`KAFKA_BOOTSTRAP_SERVERS` is honoured too, as the conventional name for the cluster address.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from receipt_streams.core.dlq import DlqBounds


def parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """`10.0.0.0/8, 192.168.1.5, ::1`: networks or single addresses, comma-separated."""
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECEIPT_STREAMS_", extra="ignore", populate_by_name=True
    )

    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices(
            "RECEIPT_STREAMS_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"
        ),
        description="Kafka bootstrap servers, comma separated.",
    )
    app_id: str = Field(
        "receipt-streams",
        description="The fold's consumer group, and the prefix of the changelog and "
        "internal topics.",
    )
    server_name: str = Field(
        "localhost",
        description="This homeserver's name: users on it are "
        "local, and it is never a federation destination.",
    )

    topic_client: str = "receipts.client.v1"
    topic_federation: str = "receipts.federation.v1"
    topic_membership: str = "rooms.membership.v1"
    topic_events: str = "rooms.events.v1"
    topic_sync: str = "receipts.sync.v1"
    topic_edus: str = "federation.edus.v1"
    topic_dlq: str = "receipts.dlq.v1"
    topic_admin: str = Field(
        "receipts.admin.v1",
        description="Operators' commands to the fold (input, compacted): `purge_room` keyed "
        "by room_id, `erase_user` keyed by user_id with one copy per partition; written by "
        "`receipt-streams ctl purge-room` / `ctl erase-user`.",
    )
    topic_history: str = Field(
        "receipts.history.v1",
        description="The history feed of accepted changes, read by `receipt-streams export` "
        "when the topic exists.",
    )
    topic_ticks: str = Field(
        "receipts.ticks.v1",
        description="Internal: per-partition clock ticks that drive the grace-period sweep.",
    )
    topic_read_positions: str = Field(
        "receipts.read-positions.v1",
        description="Output, compacted: each local user's read position per room and thread "
        "(m.read and m.read.private merged), for notification counters and pushers.",
    )
    topic_history: str = Field(
        "receipts.history.v1",
        description="Output, append-only: every accepted receipt change, with the previous "
        "receipt and the time to read, for analytics.",
    )
    feed_read_positions: bool = Field(
        True, description="Write the read-position feed (`topic_read_positions`)."
    )
    feed_history: bool = Field(True, description="Write the history feed (`topic_history`).")
    history_include_private: bool = Field(
        False,
        description="Also put m.read.private changes in the history feed (off: private "
        "receipts reach nobody but their owner).",
    )
    history_include_fully_read: bool = Field(
        False, description="Also put m.fully_read changes in the history feed."
    )
    history_retention_ms: int = Field(
        30 * 24 * 3_600_000,
        ge=-1,
        description="retention.ms of the history topic when it is created (-1: forever; "
        "an existing topic keeps its own: change it with kafka-configs).",
    )

    partitions: int = Field(
        8,
        ge=1,
        description="Partition count of every room-keyed topic; "
        "co-partitioned topics must all have it.",
    )
    replication_factor: int = Field(1, ge=1)
    create_topics: bool = Field(
        True,
        description="Create missing topics at start, then wait until the broker's metadata "
        "shows them.",
    )

    engine: Literal["batch", "faust"] = Field(
        "batch",
        description="The fold: `batch` (aiokafka, a batch at a time) or `faust` "
        "(a Faust agent, an event at a time; slower, see Performance).",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop",
        description="The event loop of the batch engine's worker, the API and relay processes "
        "and the bench: `uvloop` (libuv: sockets and callbacks in C, less CPU per HTTP request "
        "and Kafka fetch) or `asyncio` (the standard library's). The Faust engine keeps "
        "asyncio's.",
    )
    processing_guarantee: Literal["exactly_once", "at_least_once"] = Field(
        "exactly_once",
        description="Batch engine and relays: `exactly_once` writes a batch's outputs, "
        "changelog writes and input offsets in one Kafka transaction per partition (a worker "
        "that lost a partition is fenced); `at_least_once` sends, then commits (faster, but a "
        "worker paused past its session may still publish a stale batch).",
    )
    fold_batch_records: int = Field(
        5000,
        ge=1,
        description="Most input records in one batch of the batch fold, shared by its "
        "partitions; also the most one fetch returns.",
    )
    input_idle_ms: int = Field(
        500,
        ge=0,
        description="How long a partition's fold waits for one of its topics that has "
        "records on the broker not fetched yet, to keep timestamp order across topics.",
    )
    store_url: str = Field(
        "rocksdb://",
        description="Faust table store (engine faust): rocksdb:// in production, "
        "memory:// for tests.",
    )
    data_dir: Path = Field(Path(".local/worker"), description="Local table state (RocksDB).")
    store_cache_bytes: int = Field(
        4 * 2**20,
        ge=0,
        description="Batch engine: bytes of table entries (present or absent, each "
        "counted with its overhead) kept in memory per store in front of RocksDB; a worker "
        "has three stores per partition. 0: no cache.",
    )
    rocksdb_memory_bytes: int = Field(
        64 * 2**20,
        ge=2**20,
        description="Batch engine: RocksDB memory of a worker process, shared by all its "
        "stores: one block cache, to which the memtables are charged.",
    )
    rocksdb_write_buffer_bytes: int = Field(
        4 * 2**20,
        ge=64 * 2**10,
        description="Batch engine: one store's RocksDB memtable size (it is flushed to disk "
        "at this size, or sooner when all memtables reach half of rocksdb_memory_bytes).",
    )
    web_host: str = Field("127.0.0.1", description="Address of the HTTP API.")
    web_port: int = Field(
        6066,
        ge=0,
        le=65535,
        description="Port of the HTTP API: the client endpoints, /healthz and /readyz "
        "(ready or not, no detail); metrics and the detailed /readyz are on the admin port.",
    )
    web_reuse_port: bool = Field(
        False,
        description="Open the HTTP API's port with SO_REUSEPORT, so that several API processes "
        "on one host serve one port and the kernel spreads new connections over them (each "
        "process needs its own data dir and admin port; a sliding-sync connection with a pos "
        "stays on the process its TCP connection reached).",
    )

    serve_api: bool = Field(
        True,
        description="Serve the client API and /sync view in the "
        "worker; false when `receipt-streams api` processes serve them.",
    )
    run_relays: bool = Field(
        True,
        description="Run the sync-delta and federation-EDU relays in the worker; false "
        "when `receipt-streams relays` processes run them.",
    )
    tokens_file: Path | None = Field(
        None,
        description="Static access tokens (JSON object "
        "token -> user ID), for development and tests.",
    )
    homeserver_url: str | None = Field(
        None,
        description="Verify access tokens with this "
        "homeserver's /account/whoami (when no tokens file).",
    )
    whoami_cache_s: float = Field(60.0, ge=0, description="How long a whoami answer is kept.")
    rate_limit_per_s: float = Field(
        50.0, ge=0, description="Receipts per second per user over HTTP (0: no limit)."
    )
    rate_limit_burst: float = Field(100.0, ge=1, description="Requests a user may burst.")
    sync_timeout_max_ms: int = Field(30_000, ge=0, description="Longest /sync long-poll.")
    read_store: Literal["memory", "rocksdb"] = Field(
        "rocksdb",
        description="Where an API process keeps its view of the changelogs: `rocksdb` (on "
        "disk under data_dir/read-view, memory bounded by read_store_memory_bytes, ready "
        "after a restart from its local copy; RocksDB locks it, so each process needs its "
        "own data_dir) or `memory` (every receipt key in the heap, rebuilt at each start).",
    )
    read_store_memory_bytes: int = Field(
        64 * 2**20,
        ge=2**20,
        description="read_store rocksdb: RocksDB's memory (block cache and memtables).",
    )
    read_store_answers_receipts: int = Field(
        100_000,
        ge=0,
        description="read_store rocksdb: receipts kept decoded in the answers to `/sync`'s "
        "per-room queries (a room's changes since a position, all of a room's receipts), each "
        "dropped when its room is written; the least recently used go first (0: none kept).",
    )
    read_store_max_age_s: float = Field(
        43_200.0,
        gt=0,
        description="read_store rocksdb: a local copy last written longer ago is rebuilt "
        "from the changelogs (compaction may have dropped tombstones it missed; keep it under "
        "the topics' delete.retention.ms, 24 h by default).",
    )
    # --- sliding sync (issue 14) ---
    sliding_sync_connections: int = Field(
        10_000,
        ge=1,
        description="Sliding-sync connections whose state an API process keeps (the least "
        "recently used go first; a forgotten one answers M_UNKNOWN_POS).",
    )
    sliding_sync_connection_ttl_s: float = Field(
        3600.0, gt=0, description="A sliding-sync connection unused this long is forgotten."
    )
    sliding_sync_rooms_per_connection: int = Field(
        5_000,
        ge=1,
        description="Rooms one connection's state remembers (the least recently sent are "
        "forgotten, and sent as initial again if they come back).",
    )
    sliding_sync_timeline_events: int = Field(
        50,
        ge=0,
        description="Client-facing sliding sync: the newest events kept per room, the most "
        "a room subscription's timeline_limit reaches (its timeline's receipts are sent "
        "when the room is initial).",
    )
    batch_window_ms: int = Field(50, ge=0, description="Sync delta batching window.")
    edu_window_ms: int = Field(50, ge=0, description="Federation EDU batching window.")
    large_room_servers: int = Field(
        10, ge=1, description="Rooms with at least this many remote servers are paced."
    )
    large_room_interval_ms: int = Field(
        200, ge=1, description="A paced room's receipts go out at most once per this interval."
    )
    grace_period_s: float = Field(
        30.0,
        ge=0,
        description="How long a receipt waits for its event or its sender's join before the DLQ.",
    )
    tick_interval_s: float = Field(1.0, gt=0, description="Grace sweep period.")
    held_per_dep: int = Field(1000, ge=1, description="Receipts held per missing event/join.")
    max_record_bytes: int = Field(
        65_536, ge=256, description="Larger input records go to the DLQ as too_large."
    )
    # Bounds in bytes on what hostile input can make the fold keep or write (issue 12).
    held_max_bytes_per_key: int = Field(
        262_144,
        ge=1_024,
        le=900_000,
        description="Most bytes of the receipts held for one missing event/join (one held "
        "list, one changelog value); beyond it a receipt goes to the DLQ as held_overflow.",
    )
    held_max_bytes_per_partition: int = Field(
        16 * 1024 * 1024,
        ge=1_024,
        description="Most bytes of all receipts held on one partition; beyond it a receipt "
        "goes to the DLQ as held_overflow.",
    )
    dlq_max_value_bytes: int = Field(
        16_384,
        ge=256,
        le=524_288,
        description="Raw value bytes a DLQ record keeps; beyond them it is truncated (with "
        "the original size and sha256). A DLQ record is at most 4/3 of this plus 4/3 of "
        "dlq_max_key_bytes plus 4096 bytes (27,312 with the defaults).",
    )
    dlq_max_key_bytes: int = Field(
        1_024, ge=64, le=65_536, description="Raw key bytes a DLQ record keeps."
    )
    dlq_max_per_edu: int = Field(
        100,
        ge=1,
        description="DLQ records for the rejected parts of one inbound EDU (each holds its "
        "part only, and all of them at most twice the EDU's bytes); the rest go in one "
        "summary record.",
    )
    commit_interval_s: float = Field(1.0, gt=0, description="Consumer offset commit period.")
    session_timeout_s: float = Field(
        10.0,
        ge=1,
        description="Consumer group session timeout: "
        "how long a dead worker's partitions wait before they "
        "move to another worker.",
    )
    producer_linger_ms: int = Field(5, ge=0)
    txn_retry_backoff_ms: float = Field(
        2,
        gt=0,
        description="Wait before retrying a transaction's first AddPartitionsToTxn that the "
        "coordinator refused because it was still writing the last commit's markers.",
    )
    producer_max_request_bytes: int = Field(
        1_048_576,
        ge=65_536,
        description="Largest record the producers send (and their largest batch): an output "
        "over it becomes a DLQ record (`unproducible`) instead. Keep it at most the "
        "broker's `message.max.bytes` (and every output topic's `max.message.bytes`).",
    )
    log_level: str = "INFO"
    log_json: bool = Field(True, description="Structured JSON log lines.")

    # --- HTTP hardening and the admin listener (issue 12) ---
    admin_host: str = Field(
        "127.0.0.1", description="Address of the admin listener (operators only)."
    )
    admin_port: int = Field(
        6067,
        ge=0,
        le=65535,
        description="Port of the admin listener: the room receipts view, /healthz, /readyz, "
        "/metrics.",
    )
    admin_tokens_file: Path | None = Field(
        None,
        description="Admin access tokens (JSON list of strings); none: the admin receipts "
        "view refuses every request.",
    )
    http_max_body_bytes: int = Field(
        65_536, ge=1024, description="Larger request bodies get 413 M_TOO_LARGE."
    )
    http_max_connections: int = Field(
        4096,
        ge=1,
        description="Most open connections to the client listener; one more is answered at "
        "once with 503 M_LIMIT_EXCEEDED (and Retry-After) and closed, its request unread. "
        "Lowered at start (a WARNING line says so) to fit the open-file limit "
        "(RLIMIT_NOFILE, whose soft limit is first raised towards the hard one) less 1024 "
        "descriptors kept for Kafka, RocksDB and the admin listener.",
    )
    sync_rate_limit_per_s: float = Field(
        10.0, ge=0, description="/sync requests per second per user (0: no limit)."
    )
    sync_rate_limit_burst: float = Field(30.0, ge=1, description="/sync requests a user may burst.")
    auth_failure_rate_limit_per_s: float = Field(
        1.0,
        ge=0,
        description="Failed authentications per second per client IP (0: no limit); past "
        "it, every request from that IP gets 429 until its bucket refills.",
    )
    auth_failure_rate_limit_burst: float = Field(
        20.0, ge=1, description="Failed authentications a client IP may burst."
    )
    trusted_proxies: str = Field(
        "",
        description="Reverse proxies (addresses or networks, comma-separated) whose "
        "X-Forwarded-For names the client address the failed-authentication limit counts; "
        "empty: the connection's address.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)  # a ValueError names the part that is not an address
        return value

    @model_validator(mode="after")
    def _dlq_records_fit(self) -> Settings:
        """A DLQ record the producer would refuse could park nothing."""
        most = DlqBounds(self.dlq_max_value_bytes, self.dlq_max_key_bytes).record_bytes
        if most + 1_024 > self.producer_max_request_bytes:
            raise ValueError(
                f"producer_max_request_bytes ({self.producer_max_request_bytes}) must leave "
                f"room for a whole DLQ record ({most} bytes with the dlq_max_* settings, "
                "plus 1024)"
            )
        return self

    @property
    def topic_federation_in(self) -> str:
        """Internal: inbound EDU entries repartitioned by room."""
        return f"{self.app_id}-federation-in"

    @property
    def topic_outbox(self) -> str:
        """Internal: local m.read changes to federate, with their destinations."""
        return f"{self.app_id}-federation-out"

    @property
    def changelog_receipts(self) -> str:
        return f"{self.app_id}-receipts-changelog"

    @property
    def changelog_state(self) -> str:
        return f"{self.app_id}-room_state-changelog"

    @property
    def changelog_held(self) -> str:
        return f"{self.app_id}-held-changelog"

    def room_keyed_inputs(self) -> list[str]:
        return [
            self.topic_client,
            self.topic_membership,
            self.topic_events,
            self.topic_ticks,
            self.topic_federation_in,
            self.topic_admin,
        ]
