"""Who may drive this server: requests from other web sites and from DNS-rebinding pages are
refused before any route runs.

- ``Origin`` must name the host the request went to; ``Origin: null`` (a sandboxed iframe, a
  ``data:`` page) is refused as well, as is ``Sec-Fetch-Site: cross-site`` / ``same-site`` on
  anything that changes state and on the websocket (the browser's own statement that another
  site sent it).
- ``Host`` must be a name the server answers to: an IP address, ``localhost``, the address given
  to ``--listen`` or a name given with ``--allow-host``. A rebinding page reaches a loopback server
  under its own domain name, which is none of these.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from aiohttp import web

READ_ONLY_METHODS = ("GET", "HEAD", "OPTIONS")


def _host_name(host: str) -> str:
    """``"[::1]:8188"`` -> ``"::1"``, ``"Example.com:80"`` -> ``"example.com"``."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, _, port = host.rpartition(":")
    if not name or not port.isdigit() or ":" in name:
        name = host  # no port, or a bare IPv6 address
    return name.rstrip(".").lower()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def allowed_host_names(listen: str = "127.0.0.1", allow_hosts=()) -> frozenset[str]:
    """The names besides IP addresses a request's Host may carry."""
    names = {"localhost", *(name.lower().rstrip(".") for name in allow_hosts)}
    if listen and not _is_ip(listen):
        names.add(listen.lower().rstrip("."))
    return frozenset(names)


def host_allowed(host: str | None, names: frozenset[str]) -> bool:
    if not host:
        return True  # HTTP/1.0 without Host: the connection itself reached the bound address
    name = _host_name(host)
    return _is_ip(name) or name in names or name.endswith(".localhost")


def refusal(request: web.Request, names: frozenset[str]) -> str | None:
    """Why ``request`` is refused, or None."""
    if not host_allowed(request.headers.get("Host"), names):
        return (f"Host {request.headers.get('Host')!r} is not a name this server answers to; "
                f"start it with --allow-host NAME to allow one")
    origin = request.headers.get("Origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower()):
        return "requests from other sites are refused"
    changes_state = request.method not in READ_ONLY_METHODS or request.headers.get("Upgrade", "").lower() == "websocket"
    if changes_state and request.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site"):
        return "requests from other sites are refused"
    return None


def guard_middleware(names: frozenset[str]):
    @web.middleware
    async def guard(request: web.Request, handler):
        why = refusal(request, names)
        if why is not None:
            return web.Response(status=403, text=why)
        return await handler(request)
    return guard
