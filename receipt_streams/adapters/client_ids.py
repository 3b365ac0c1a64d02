"""Kafka client ids of the group members, naming the HTTP port each process answers on, so
`ctl status` can probe every member's /readyz from the group description alone (the broker
gives the member's host; the port is in its client id), whatever port each process uses."""

from __future__ import annotations

import re

from receipt_streams.config import Settings

_PORT = re.compile(r"@web:(\d{1,5})$")


def member_client_id(s: Settings, role: str) -> str:
    """e.g. `rs-app-fold@web:6066`: the app, what the member does, its web port."""
    return f"{s.app_id}-{role}@web:{s.web_port}"


def web_port_of(client_id: str) -> int | None:
    """The web port a member's client id names; None for a client id of another form (an
    older worker's, or a client that is not a worker)."""
    found = _PORT.search(client_id)
    return int(found.group(1)) if found else None
