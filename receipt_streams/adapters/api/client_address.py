"""The address a request comes from, for the per-address limit on failed authentication.

Behind a reverse proxy every request has the proxy's address, so one client guessing tokens
would lock every user out. A proxy named in `RECEIPT_STREAMS_TRUSTED_PROXIES` is looked
through: the address is the last one in `X-Forwarded-For` that is not itself a trusted
proxy (what each proxy appended; anything a client wrote there comes before it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_address(
    remote: str | None, forwarded_for: str | None, proxies: Sequence[Network]
) -> str:
    """The client's address: `remote`, or, when `remote` is a trusted proxy, the last
    address of `X-Forwarded-For` that is not one (all trusted, or none given: the first)."""
    remote = remote or ""
    if not proxies or not forwarded_for or not _trusted(remote, proxies):
        return remote
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop[:64]  # an address: anything longer is not one
    return hops[0][:64] if hops else remote
