"""The client address behind trusted reverse proxies (X-Forwarded-For)."""

from __future__ import annotations

import pytest

from receipt_streams.adapters.api.client_address import client_address
from receipt_streams.config import Settings, parse_networks

PROXIES = parse_networks("10.0.0.0/8, 192.168.1.5, ::1")


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [
        ("203.0.113.9", None, "203.0.113.9"),  # no proxy
        ("203.0.113.9", "198.51.100.7", "203.0.113.9"),  # not a trusted proxy: ignored
        ("10.1.2.3", None, "10.1.2.3"),  # a proxy that says nothing
        ("10.1.2.3", "198.51.100.7", "198.51.100.7"),
        ("10.1.2.3", "1.1.1.1, 198.51.100.7", "198.51.100.7"),  # the client's own claim first
        ("10.1.2.3", "198.51.100.7, 192.168.1.5", "198.51.100.7"),  # two proxies deep
        ("::1", "2001:db8::1", "2001:db8::1"),
        ("10.1.2.3", "10.9.9.9, 192.168.1.5", "10.9.9.9"),  # all trusted: the first
        ("10.1.2.3", "not-an-address", "not-an-address"),  # counted as it is, bounded
        ("10.1.2.3", "x" * 500, "x" * 64),
    ],
)
def test_client_address(remote: str, forwarded: str | None, expected: str) -> None:
    assert client_address(remote, forwarded, PROXIES) == expected


def test_no_trusted_proxies_is_the_connections_address() -> None:
    assert client_address("10.1.2.3", "198.51.100.7", ()) == "10.1.2.3"


def test_a_setting_that_is_not_an_address_is_refused() -> None:
    with pytest.raises(ValueError, match=r"proxy\.example"):
        Settings(trusted_proxies="10.0.0.0/8, proxy.example")
