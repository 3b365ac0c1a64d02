"""Matrix identifier grammar (spec appendices: server names, user, room and event IDs).

Inputs come from remote servers and homeserver writers, so the checks accept the historical
grammar (any printable ASCII localpart for users, opaque room and event IDs, room IDs without a
server part as in room version 12) but never what would break a consumer: control characters,
spaces, missing sigils, bad server names, or IDs over 255 bytes.
"""

from __future__ import annotations

import ipaddress
import re

MAX_ID_BYTES = 255

_DNS_NAME = re.compile(r"[A-Za-z0-9.\-]{1,255}")
_PORT = re.compile(r"[0-9]{1,5}")
# The spec's IPv6 literal: 2*45 of HEXDIG, ':' and '.'. No '%' zone ID (Python's
# ipaddress accepts one, with any characters in it, spaces and control characters included).
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
# Historical user localparts: %x21-39 / %x3B-7E (printable ASCII except ':').
_USER_LOCALPART = re.compile(r"[\x21-\x39\x3b-\x7e]+")
# Opaque parts of room and event IDs: printable ASCII without ':'.
_OPAQUE = re.compile(r"[\x21-\x39\x3b-\x7e]+")


class InvalidId(ValueError):
    """An identifier that breaks the Matrix grammar."""


def _fail(kind: str, value: object, why: str) -> InvalidId:
    return InvalidId(f"invalid {kind} {value!r}: {why}")


def is_server_name(value: str) -> bool:
    """`hostname [":" port]`, hostname being IPv4, `[IPv6]`, or a DNS name."""
    if not value or len(value.encode()) > MAX_ID_BYTES:
        return False
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return False
        if _IPV6_CHARS.fullmatch(value[1:end]) is None:
            return False
        try:
            ipaddress.IPv6Address(value[1:end])
        except ValueError:
            return False
        rest = value[end + 1 :]
        return rest == "" or (rest[0] == ":" and _PORT.fullmatch(rest[1:]) is not None)
    host, sep, port = value.partition(":")
    if sep and _PORT.fullmatch(port) is None:
        return False
    # A dotted quad is a DNS name by this grammar too; both are fine.
    return _DNS_NAME.fullmatch(host) is not None


def server_of(sigil_id: str) -> str | None:
    """The server part of `@user:server` or `!room:server`, or None when there is none."""
    _, sep, server = sigil_id.partition(":")
    return server if sep else None


def validate_server_name(value: object) -> str:
    if not isinstance(value, str) or not is_server_name(value):
        raise _fail("server name", value, "expected hostname[:port] or [IPv6][:port]")
    return value


def _sigil_id(kind: str, sigil: str, value: object) -> tuple[str, str, str]:
    """Common checks of `<sigil>local[:server]`; returns (value, localpart, server or "")."""
    if not isinstance(value, str) or not value.startswith(sigil):
        raise _fail(kind, value, f"must start with {sigil!r}")
    if len(value.encode()) > MAX_ID_BYTES:
        raise _fail(kind, value, "longer than 255 bytes")
    local, sep, server = value[1:].partition(":")
    if sep and not is_server_name(server):
        raise _fail(kind, value, "bad server name")
    return value, local, server if sep else ""


def validate_user_id(value: object) -> str:
    checked, localpart, server = _sigil_id("user ID", "@", value)
    if not server or _USER_LOCALPART.fullmatch(localpart) is None:
        raise _fail("user ID", value, "expected @localpart:server")
    return checked


def _opaque_id(kind: str, sigil: str, value: object) -> str:
    """Room and event IDs: an opaque part, and a server part only in older room versions."""
    checked, opaque, _ = _sigil_id(kind, sigil, value)
    if _OPAQUE.fullmatch(opaque) is None:
        raise _fail(kind, value, "bad opaque part")
    return checked


def validate_room_id(value: object) -> str:
    return _opaque_id("room ID", "!", value)


def validate_event_id(value: object) -> str:
    return _opaque_id("event ID", "$", value)


def valid_thread_id(value: object) -> bool:
    """A receipt's `thread_id`: `main`, or the event ID of a thread root (at most 255 bytes).

    Shared by the HTTP API (400 `M_INVALID_PARAM`) and the fold (DLQ `invalid_thread`)."""
    if value == "main":
        return True
    try:
        validate_event_id(value)
    except InvalidId:
        return False
    return True
