"""The app's consumer groups and the topics each one reads (from the settings, as the
workers name them)."""

from __future__ import annotations

from receipt_streams.config import Settings


def fold_group(s: Settings) -> str:
    return s.app_id


def app_groups(s: Settings) -> dict[str, list[str]]:
    """group id -> the topics it consumes. The API's sync feed reads the changelogs without a
    group (it reads them whole at each start), so it has no offsets to show."""
    return {
        fold_group(s): [*s.room_keyed_inputs(), s.topic_federation],
        f"{s.app_id}-sync-deltas": [s.changelog_receipts],
        f"{s.app_id}-federation-edus": [s.topic_outbox],
    }


def reset_inputs(s: Settings) -> list[str]:
    """What `reset` moves: the fold's external inputs. Not the ticks (wall-clock beats, an
    hour of retention: replaying them means nothing) and not the internal federation-in
    topic (a replayed EDU is split into it again and read from where the fold is). The admin
    topic is: a replay that skipped a purge or an erasure would bring its receipts back."""
    return [s.topic_client, s.topic_membership, s.topic_events, s.topic_federation, s.topic_admin]
