"""Where destinations may be reached: public internet addresses only (no SSRF).

A destination's URL (a webhook, an SMS gateway, a WeCom bot) is refused when its host is, or
resolves to, an address that is not globally routable: loopback, private (RFC 1918, unique
local), link-local (cloud metadata at 169.254.169.254), shared (100.64/10), multicast,
reserved or unspecified. An admin may allow them for a destination on their own network
(``CONSENTRY_ACTIVATION_PRIVATE_NETWORKS=1``; the tests do, for their local receivers).

Checked twice: when a destination is declared (a 422 naming the field), and on every
connection delivery opens (``client()``): the host is resolved once, every address checked,
and the connection made to a checked address, so a name that resolves elsewhere later (DNS
rebinding) cannot reach an internal service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from app.errors import InvalidField
from app.settings import get_settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class EgressRefused(httpx.TransportError):
    """A destination's host is (or resolves to) an address delivery may not reach."""


def public(address: Address) -> bool:
    """A globally routable unicast address (an IPv4-mapped IPv6 address counts as its IPv4 one)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _allowed(addresses: Iterable[Address]) -> bool:
    found = list(addresses)
    return bool(found) and (get_settings().activation_private_networks or all(public(a) for a in found))


async def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to (a literal address is itself)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}, key=str)


async def check_url(url: str, field: str) -> None:
    """422 naming ``field`` when the URL's host is or resolves to a refused address (a name
    that does not resolve now is left to the check at connection time)."""
    parts = urlsplit(url)
    try:
        addresses = await resolve(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    except OSError:
        return
    if not _allowed(addresses):
        raise InvalidField(
            "must be a public internet address (private, loopback and link-local are refused)", field=field
        )


class _Guard(httpcore.AsyncNetworkBackend):
    """Connects only to checked addresses (resolved here, connected to by address)."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(type(exc).__name__) from exc
        if not _allowed(addresses):
            raise EgressRefused("the destination's address is not a public internet address")
        return await self.inner.connect_tcp(str(addresses[0]), port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("unix sockets are not destinations")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def client(connections: int = 8) -> httpx.AsyncClient:
    """An HTTP client for destinations: keep-alive, ``connections`` at once, every connection
    checked (no proxies from the environment: the check is on the destination itself)."""
    transport = httpx.AsyncHTTPTransport()
    transport._pool = httpcore.AsyncConnectionPool(  # the same pool httpx builds, with the guard as network
        ssl_context=httpx.create_ssl_context(),
        max_connections=connections,
        max_keepalive_connections=connections,
        keepalive_expiry=5.0,
        network_backend=_Guard(),
    )
    return httpx.AsyncClient(transport=transport, trust_env=False)
