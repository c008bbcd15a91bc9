"""Requests a hostile web page can make a visitor's browser send: refused before any route runs.

- A Host header the service does not answer to gets 400: a DNS name an attacker rebinds to
  127.0.0.1 reaches the service only under the attacker's name. Allowed: any IP address (a
  browser sends one only when it was pointed at this machine's address), `localhost`, and the
  names in ALLOWED_HOSTS (`*`: any).
- A write (POST, PUT, PATCH, DELETE) that a browser marks as coming from another site gets 403:
  `Sec-Fetch-Site` other than same-origin or none, or an `Origin` whose host is not the
  request's Host. Without either header (curl, scripts) nothing changes, and the service's own
  page is same-origin.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Collection
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import problem_response

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
_OWN_SITE = frozenset(("same-origin", "none"))  # none: typed in the address bar, a bookmark
_DEFAULT_PORTS = {"http": 80, "https": 443}


class OriginGuardMiddleware:
    def __init__(self, app: ASGIApp, *, allowed_hosts: Collection[str]) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.allowed_hosts = {host.lower().rstrip(".") for host in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            refusal = self._refusal(scope, headers)
            if refusal is not None:
                status, kind, detail = refusal
                log.warning("%s %s: %d, %s", scope["method"], scope["path"], status, detail)
                response = problem_response(Request(scope), status, detail, kind=kind)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: Headers) -> tuple[int, str, str] | None:
        host = headers.get("host")
        if host is not None and not self._host_allowed(host):
            return (
                400,
                "unknown-host",
                f"this service does not answer to the host {host!r}; add it to ALLOWED_HOSTS",
            )
        if scope["method"] not in SAFE_METHODS and is_cross_site(headers):
            return (
                403,
                "cross-origin-request",
                "a write from another site's page is refused; call the API from its own page, "
                "or without a browser",
            )
        return None

    def _host_allowed(self, host: str) -> bool:
        name = hostname_of(host)
        if name is None:
            return False
        if self.any_host or name == "localhost" or name.endswith(".localhost"):
            return True
        return is_ip_address(name) or name in self.allowed_hosts


def is_cross_site(headers: Headers) -> bool:
    """Whether a browser says the request comes from a page of another origin."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.strip().lower() not in _OWN_SITE:
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    try:  # the Host's default port is the origin's: a TLS proxy in front changes no answer
        parts = urlsplit(origin.strip())
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            return True  # `null` (a sandboxed frame, a file) or nonsense
        default = _DEFAULT_PORTS[parts.scheme]
        host = urlsplit(f"//{headers.get('host', '').strip()}")
        return (parts.hostname.rstrip("."), parts.port or default) != (
            (host.hostname or "").rstrip("."),
            host.port or default,
        )
    except ValueError:
        return True


def hostname_of(host: str) -> str | None:
    """The name or address in a Host header (`name:port`, `[v6]:port`), lower case."""
    try:
        name = urlsplit(f"//{host.strip()}").hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
