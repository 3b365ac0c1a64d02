"""Matrix identifier grammar: server names, user, room and event IDs."""

from __future__ import annotations

import pytest

from receipt_streams.core import ids
from receipt_streams.core.ids import InvalidId

VALID_SERVERS = [
    "hs1",
    "matrix.org",
    "matrix.org:8448",
    "my-server.example.com:1",
    "1.2.3.4",
    "1.2.3.4:8448",
    "[::1]",
    "[::1]:8448",
    "[2001:db8::1]:443",
    "[::ffff:1.2.3.4]",
    "a" * 255,
]

INVALID_SERVERS = [
    "",
    "hs1:",  # empty port
    "hs1:abc",  # non-digit port
    "hs1:123456",  # more than 5 digits
    "hs1:-1",
    "hs1:80:80",
    "hs 1",  # space
    " hs1",
    "hs1\n",  # trailing newline must not slip through a `$` anchor
    "hs\x00",  # control char
    "hs\x7f",
    "hś",  # non-ASCII
    "hs_1",  # '_' is not a dns-char
    "::1",  # IPv6 without brackets
    "[::1",  # unclosed bracket
    "[::1]8448",  # port without ':'
    "[::1]:",  # empty port after literal
    "[::1]:abc",
    "[::1]]",
    "[]",
    "[not-an-ip]",
    "[1.2.3.4]",  # IPv4 in brackets
    "[fe80::1%eth0]",  # zone IDs are not in the spec's IPv6 grammar
    "[::1%a b]:8448",  # ... and would smuggle spaces into a server name
    "[::1%\x00]",
    "a" * 256,  # over 255 bytes
]


@pytest.mark.parametrize("name", VALID_SERVERS)
def test_valid_server_names(name: str) -> None:
    assert ids.is_server_name(name)
    assert ids.validate_server_name(name) == name


@pytest.mark.parametrize("name", INVALID_SERVERS)
def test_invalid_server_names(name: str) -> None:
    assert not ids.is_server_name(name)
    with pytest.raises(InvalidId):
        ids.validate_server_name(name)


@pytest.mark.parametrize("value", [None, 5, b"hs1", ["hs1"]])
def test_server_name_must_be_a_string(value: object) -> None:
    with pytest.raises(InvalidId):
        ids.validate_server_name(value)


@pytest.mark.parametrize(
    "user_id",
    [
        "@alice:hs1",
        "@alice:matrix.org:8448",
        "@a:[::1]:8448",
        "@a:[::1]",
        "@Alice.Old=Style!:hs1",  # historical localparts: any printable ASCII but ':'
        "@_bridge_123/x:1.2.3.4",
        "@" + "a" * (255 - len("@:hs1")) + ":hs1",  # exactly 255 bytes
    ],
)
def test_valid_user_ids(user_id: str) -> None:
    assert len(user_id.encode()) <= 255
    assert ids.validate_user_id(user_id) == user_id


@pytest.mark.parametrize(
    "user_id",
    [
        "alice:hs1",  # missing sigil
        "!alice:hs1",  # wrong sigil
        "@alice",  # no server part
        "@:hs1",  # empty localpart
        "@ali ce:hs1",  # space
        "@alice\t:hs1",  # control char
        "@alice\x00:hs1",
        "@alicé:hs1",  # non-ASCII localpart
        "@alice:",  # empty server
        "@alice:hs1:",  # empty port
        "@alice:hs1:99x",  # bad port
        "@alice:hs1:1234567",
        "@alice:[::1",
        "@alice:[::1%a b]",
        "@alice:hs 1",
        "@" + "a" * (256 - len("@:hs1")) + ":hs1",  # 256 bytes
        "",
    ],
)
def test_invalid_user_ids(user_id: str) -> None:
    with pytest.raises(InvalidId):
        ids.validate_user_id(user_id)


@pytest.mark.parametrize("value", [None, 1, b"@a:hs1", {"user": "@a:hs1"}])
def test_user_id_must_be_a_string(value: object) -> None:
    with pytest.raises(InvalidId):
        ids.validate_user_id(value)


@pytest.mark.parametrize(
    "room_id",
    [
        "!abc:hs1",
        "!abc:hs1:8448",
        "!abc:[::1]:8448",
        "!opaqueRoomV12",  # room version 12: no server part
        "!31hneApxJ_1o-63DmFrpeqnkFfWppnzWso1JvH3ogLM",
        "!" + "x" * 254,  # 255 bytes, no server
    ],
)
def test_valid_room_ids(room_id: str) -> None:
    assert ids.validate_room_id(room_id) == room_id


@pytest.mark.parametrize(
    "room_id",
    [
        "abc:hs1",  # missing sigil
        "#alias:hs1",
        "!",  # empty
        "!:hs1",  # empty opaque part
        "!abc:",  # separator without server
        "!abc:hs1:port",
        "!a b:hs1",
        "!a\x01b:hs1",
        "!abc:bad server",
        "!" + "x" * 255,  # 256 bytes
        "",
    ],
)
def test_invalid_room_ids(room_id: str) -> None:
    with pytest.raises(InvalidId):
        ids.validate_room_id(room_id)


@pytest.mark.parametrize(
    "event_id",
    [
        "$abc:hs1",  # room versions 1-2
        "$acR1l0raoZnm60CBwAVgqbZqoO/mYU81xysh1u7XcJk",  # v3 base64 with '/'
        "$acR1l0raoZnm60CBwAVgqbZqoO_mYU81xysh1u7XcJk",  # v4 URL-safe
        "$a+b=",
        "$" + "e" * 254,
    ],
)
def test_valid_event_ids(event_id: str) -> None:
    assert ids.validate_event_id(event_id) == event_id


@pytest.mark.parametrize(
    "event_id",
    [
        "abc",  # missing sigil
        "!abc:hs1",
        "$",
        "$:hs1",
        "$abc:",
        "$a b",
        "$a\nb",
        "$a\x7fb",
        "$é",
        "$abc:bad host",
        "$" + "e" * 255,
        "",
    ],
)
def test_invalid_event_ids(event_id: str) -> None:
    with pytest.raises(InvalidId):
        ids.validate_event_id(event_id)


def test_invalid_id_is_a_value_error_naming_the_kind() -> None:
    with pytest.raises(ValueError, match="room ID"):
        ids.validate_room_id("nope")


@pytest.mark.parametrize(
    ("sigil_id", "server"),
    [
        ("@a:hs1", "hs1"),
        ("@a:hs1:8448", "hs1:8448"),
        ("@a:[::1]:8448", "[::1]:8448"),
        ("!room:hs2", "hs2"),
        ("!roomv12", None),
    ],
)
def test_server_of(sigil_id: str, server: str | None) -> None:
    assert ids.server_of(sigil_id) == server
