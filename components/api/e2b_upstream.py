"""Where a call routed into a sandbox goes, and what of it goes there (issue 30; the
routing itself is :mod:`dockyard.api.e2b_routing`).

Which sandbox and port a request is for (:func:`target`: the ``E2b-Sandbox-*`` headers or
a ``<port>-<sandboxId>.<domain>`` host name), the sandbox's URL built from parts so the
request target is only ever a path on the sandbox's own address (:func:`upstream_url`),
the headers passed each way without dockyard's credentials and cookies
(:func:`forwarded_headers`, :func:`websocket_headers`, :func:`answered_headers`), and a
browser WebSocket's ``Origin`` check (:func:`same_origin`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import httpx
from starlette.types import Scope

from ..errors import DockyardError, InvalidInput
from ..sessions import e2b as sandboxes
from .errors import REQUEST_ID_HEADER
from .store import KEY_PREFIX

DOMAIN_VARIABLE = "DOCKYARD_E2B_DOMAIN"
"""The domain the SDKs build ``<port>-<id>.<domain>`` host names on (default: the host
name the SDK reached the server by)."""
DAEMON_WAIT_S = 10.0
"""How long a call to the daemon's port waits for it to listen (a new sandbox's)."""

HOST_FORM = re.compile(r"([0-9]{1,5})-([a-z0-9]{1,63})\.([^:]+)(?::[0-9]+)?", re.ASCII)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
DOCKYARD_CREDENTIALS = frozenset(
    {"x-api-key", "e2b-sandbox-id", "e2b-sandbox-port", "e2b-traffic-access-token"}
)
ACCESS_TOKEN = "x-access-token"  # noqa: S105 - a header name
TRAFFIC_TOKEN = "e2b-traffic-access-token"  # noqa: S105 - a header name
CHECKED_AS = "127.0.0.1"
"""The stand-in address a request's target is checked against (:func:`upstream_url`)
before the sandbox's own is known: a refused target never wakes a sandbox."""


def target(headers: dict[str, str]) -> tuple[str, str] | None:
    """(sandbox id, port text) when the request is for a sandbox's port, else None."""
    sandbox = headers.get("e2b-sandbox-id")
    if sandbox is not None:
        return sandbox, headers.get("e2b-sandbox-port", str(sandboxes.ENVD_PORT))
    matched = HOST_FORM.fullmatch(headers.get("host", "").lower())
    if matched is None:
        return None
    wanted = os.environ.get(DOMAIN_VARIABLE)
    if wanted and matched.group(3) != wanted.split(":", 1)[0].lower():
        return None
    return matched.group(2), matched.group(1)


CLIENT_CLAIMS = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-proto",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
    }
)
"""What a caller may say about its own address or scheme: dockyard is the proxy in front
of the sandbox, so it drops these and says it itself (:func:`forwarding`)."""


def forwarding(scope: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``X-Forwarded-*`` headers dockyard sets for a routed call: the caller's address
    as the server saw it (uvicorn takes a trusted local proxy's word for it), the scheme and
    the host name the caller used."""
    client = scope.get("client")
    found = [("x-forwarded-for", str(client[0]))] if client else []
    found.append(
        ("x-forwarded-proto", "https" if scope.get("scheme") in ("https", "wss") else "http")
    )
    for raw_name, raw_value in scope.get("headers", []):
        if raw_name.lower() == b"host":
            found.append(("x-forwarded-host", raw_value.decode("latin-1")))
            break
    return found


def forwarded_headers(
    headers: list[tuple[bytes, bytes]], port: int, scope: Mapping[str, Any] | None = None
) -> list[tuple[str, str]]:
    """The request's headers without hop-by-hop ones, without dockyard's credentials (its
    API key in any header, its dashboard cookies, the traffic token; the sandbox's own
    access token only reaches its daemon's port) and without what the caller claims about
    its address; with ``scope``, dockyard's own ``X-Forwarded-*`` (:func:`forwarding`)."""
    kept = []
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in HOP_BY_HOP or name in DOCKYARD_CREDENTIALS or name in CLIENT_CLAIMS:
            continue
        if name == ACCESS_TOKEN and port != sandboxes.ENVD_PORT:
            continue
        if KEY_PREFIX in value and name in ("authorization", "x-api-key"):
            continue
        if name == "cookie":
            pairs = [p.strip() for p in value.split(";") if not dockyards(p.split("=", 1)[0])]
            pairs = [p for p in pairs if p]
            if not pairs:
                continue
            value = "; ".join(pairs)
        kept.append((name, value))
    return kept + (forwarding(scope) if scope is not None else [])


def dockyards(cookie_name: str) -> bool:
    """Whether ``cookie_name`` is one of dockyard's (``dockyard_*``, any case, with or
    without a ``__Host-``/``__Secure-`` prefix)."""
    name = cookie_name.strip().lower()
    for prefix in ("__host-", "__secure-"):
        name = name.removeprefix(prefix)
    return name.startswith("dockyard_")


def harmless_cookie(set_cookie: str) -> bool:
    """A sandbox's ``Set-Cookie`` the caller may get: a cookie with a name (a nameless one,
    ``=dockyard_session=…`` or a bare value, comes back from a browser as whatever its value
    says), not named like dockyard's, and with no Domain attribute (it stays on the
    sandbox's own host name, never on the parent domain the dashboard is served from)."""
    pair, *attributes = set_cookie.split(";")
    name = pair.split("=", 1)[0].strip() if "=" in pair else ""
    if not name or dockyards(name):
        return False
    return not any(a.split("=", 1)[0].strip().lower() == "domain" for a in attributes)


def answered_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """The sandbox's answer headers the caller gets: no hop-by-hop ones, no request id of
    its own, and no cookie named like dockyard's (a sandbox on ``<port>-<id>.<domain>``
    must not plant the dashboard's login or session cookie on the parent domain)."""
    kept = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered == REQUEST_ID_HEADER.lower():
            continue
        if lowered == "set-cookie" and not harmless_cookie(value):
            continue
        kept.append((lowered.encode("latin-1"), value.encode("latin-1")))
    return kept


def websocket_headers(
    headers: list[tuple[bytes, bytes]], port: int, scope: Mapping[str, Any] | None = None
) -> list[tuple[str, str]]:
    """:func:`forwarded_headers` for a WebSocket upgrade, without the handshake's own
    headers (the upstream handshake makes its own) and the user agent (passed apart)."""
    return [
        (name, value)
        for name, value in forwarded_headers(headers, port, scope)
        if not name.startswith("sec-websocket-") and name != "user-agent"
    ]


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a WebSocket's ``Origin`` (sent by browsers, whose pages could otherwise
    open a socket to a sandbox with the credentials a user's browser holds) names the host
    the request was sent to. No Origin (a program, the SDKs): True."""
    if origin is None:
        return True
    try:
        parsed = httpx.URL(origin.strip())
        if parsed.scheme not in ("http", "https") or not parsed.host or not host:
            return False
        sent = httpx.URL(f"{parsed.scheme}://{host.strip()}")
    except httpx.InvalidURL:
        return False
    default = 443 if parsed.scheme == "https" else 80
    return bool(sent.host) and (parsed.host, parsed.port or default) == (
        sent.host,
        sent.port or default,
    )


def upstream_url(scope: Scope, ip: str, port: int) -> httpx.URL:
    """The sandbox's URL for this request, built from parts: the request target is only
    ever a path (+ query) on ``ip:port``. Anything else uvicorn's h11 hands through as
    the target (``@host:port/x``, ``http://host/x``, ``host:port``, ``*``) is refused, so no
    caller makes the server connect anywhere but the sandbox it proved it may reach."""
    path = scope.get("raw_path") or scope["path"].encode()
    shown = path.decode("latin-1")[:100]
    refused = BadTarget(
        "request-target",
        [f"request-target: {shown!r} is not a path (allowed: a path starting with /)"],
    )
    if not path.startswith(b"/"):
        raise refused
    query = scope.get("query_string", b"")
    raw = path + (b"?" + query if query else b"")
    try:
        url = httpx.URL(scheme="http", host=ip, port=port, raw_path=raw)
    except (httpx.InvalidURL, UnicodeDecodeError) as exc:  # not ASCII: no valid target
        raise refused from exc
    if url.host != ip or url.port != port or url.userinfo:
        raise refused
    return url


def port_of(text: str) -> int:
    """The ``E2b-Sandbox-Port`` (or host name) port as a number, 1-65535."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InvalidInput(
            "E2b-Sandbox-Port",
            ["E2b-Sandbox-Port: not a port (allowed: a whole number 1-65535)"],
        )
    return int(text)


class BadTarget(DockyardError, status=400, kind="invalid-input"):
    """A request target that is not a path (HTTP's 400: the request line itself is bad)."""


class BadGateway(DockyardError, status=502, kind="bad-gateway"):
    """The sandbox's port refused, broke off or could not be reached."""
