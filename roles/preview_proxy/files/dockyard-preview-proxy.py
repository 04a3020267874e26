#!/usr/bin/env python3
"""dockyard preview proxy: authenticated preview URLs for every environment port.

Keeps one Caddy (Debian's package) in step with the running dockyard environments:

- ``https://<port>-<session>.<domain>`` for each published port, proxied to its host port
  (on loopback, where the components publish, docs/access.md);
- with discovery on, each port the agent listens on inside the environment (read from
  the container's network namespace, ``/proc/<pid>/net/tcp``) that is not published gets
  a route to the container's own address — so a dev server started later is reachable
  one watch interval after it starts and loses its route one interval after it stops;
- every route needs that environment's token: ``Authorization: Bearer <token>``, or a
  ``__Host-dockyard_preview`` cookie set by visiting any of its URLs once with
  ``?dockyard_token=<token>`` (host-only cookie: it opens only that host name). Anything
  else gets 401 and never reaches the app. One token per environment, generated here
  and kept in ``--token-dir`` (0600), so one session's token never opens another's.
- preview hosts are sibling names of one site, so a page served by one session could
  make the browser send another session's cookie: browser requests from another origin
  are refused (403) unless they are top-level GET/HEAD navigations (see ``caddyfile``);
- dockyard's token never reaches the app: the bearer header and dockyard's cookie are
  removed before forwarding (the app's own cookies pass), and a request carrying the
  query parameter is answered by Caddy (login redirect, or 401) and never forwarded.
- TLS from Caddy's internal CA (``tls internal``); Caddy redirects HTTP to HTTPS and
  passes WebSocket upgrades through ``reverse_proxy``.

Wake on use (issue 29 item 4): with ``--wake-listen`` a paused environment keeps its
routes, and each authenticated handle of them first asks this watcher (Caddy's
``forward_auth`` to a unix socket it serves while ``--watch`` runs, in a directory of
its user's alone; when it cannot serve it, paused environments get no route) to wake it: the
endpoint checks the environment's token itself (a request without it never wakes
anything), unpauses the container once however many requests arrive at once (single
flight per environment, a failed wake is not retried for RETRY_AFTER_S), leaves a
session alone while a snapshot or backup holds it paused and never wakes an E2B sandbox
(``--state-dir``, required: the sessions layer's freeze lock and E2B records, so the
sessions' server must run on this host), and writes an audit line (``resume``, actor
``host:dockyard-preview-proxy``) with the host scripts' writer. The request then goes
on to the woken app. Running environments' routes are unchanged (no extra hop). A
hibernated environment (stopped, holding its checkpoint) has no route: its restore
needs the sessions layer (``dockyard resume``), which this host script does not have.

Idempotent: Caddy is reloaded only when the generated Caddyfile changed (or started
when its admin endpoint does not answer). ``--watch N`` repeats every N seconds;
``--remove`` stops Caddy and deletes the generated file (tokens stay). ``--json`` prints
what was done. stdlib only; needs the docker CLI and caddy; runs as root (reads other
processes' network tables).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hmac
import json
import os
import re
import secrets
import socketserver
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

# Installed, the package's host modules sit beside this script as dockyard/ (its directory
# is sys.path[0]; host_common installs them); in the repository, the checkout's package.
from dockyard import host

MANAGED = "dockyard.managed=true"
LABEL_SESSION = "dockyard.session"
LABEL_DISCOVER = "dockyard-preview.discover"
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}", re.ASCII)
# ``__Host-``: browsers accept it only with Secure, Path=/ and no Domain, so no sibling
# preview host (another session's app) can plant or shadow it for this host.
COOKIE = "__Host-dockyard_preview"
QUERY = "dockyard_token"
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
TOKEN = re.compile(r"[A-Za-z0-9_-]{32,}", re.ASCII)  # token_urlsafe: safe inside a regexp
# The engine's container names: safe in a Caddyfile, a URL path and a file name.
CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}", re.ASCII)
LABEL_STACK = "dockyard.stack"
WAKE_PATH = "/wake/"
# A unix socket in a directory only this (root) process may enter: no other local user
# can listen in its place and collect the tokens forward_auth carries. Safe in a Caddyfile.
WAKE_LISTEN = re.compile(r"unix:(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)+", re.ASCII)
WAKE_LISTEN_ALLOWED = "unix:/ABSOLUTE/PATH of a socket (A-Z a-z 0-9 _ . -, no . or .. part)"
AUDIT_ACTOR = "host:dockyard-preview-proxy"
WOKEN_BY = "woken by a preview request"
RETRY_AFTER_S = 5.0  # a failed wake is not tried again sooner (a flood does not hammer)
WAKE_WAIT_S = 10.0  # a request waits at most this long for another request's wake
MAX_WAITERS = 64  # requests of one environment waiting for its wake; more answer 503
MAX_WAITING = 128  # requests of all environments waiting at once; more answer 503


class ProxyError(RuntimeError):
    pass


@dataclass(frozen=True)
class Route:
    host: str
    upstream: str
    environment: str
    discovered: bool
    paused: bool = False


def run(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise ProxyError(f"{' '.join(argv[:2])} failed: {result.stderr.strip()}")
    return result.stdout


def listening_ports(pid: int) -> set[int]:
    """Ports listened on in a process's network namespace, on any address but loopback
    (a server bound to 127.0.0.1 inside cannot be reached from outside anyway)."""
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != LISTEN:
                continue
            address, _, port = fields[1].partition(":")
            if address.startswith("0100007F") or address == "0" * 24 + "01000000":
                continue
            ports.add(int(port, 16))
    return ports


def token_for(token_dir: Path, environment: str) -> str:
    path = token_dir / f"{environment}.token"
    if not path.exists():
        token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    token = path.read_text().strip()
    if not TOKEN.fullmatch(token):
        # It goes into Caddy's configuration (and a regexp): never an arbitrary string.
        raise ProxyError(f"{path}: not a token (allowed: 32 or more of A-Z a-z 0-9 _ -)")
    return token


def routes(
    domain: str, discover: bool, scope: str | None, paused: bool = False
) -> tuple[list[Route], list[str], dict[str, dict[str, str]]]:
    """The routes of the running environments (and of the paused ones with ``paused``),
    what was skipped and why, and the paused environments' labels."""
    filters = ["--filter", f"label={MANAGED}", "--filter", "status=running"]
    if paused:
        filters += ["--filter", "status=paused"]  # status filters are OR'ed
    if scope:
        filters += ["--filter", f"label={scope}"]
    ids = run(["docker", "ps", "-q", *filters]).split()
    if not ids:
        return [], [], {}
    found, skipped = [], []
    suspended: dict[str, dict[str, str]] = {}
    for info in json.loads(run(["docker", "inspect", *ids])):
        labels = info["Config"].get("Labels") or {}
        session = labels.get(LABEL_SESSION, "")
        environment = info["Name"].lstrip("/")
        if not DNS_LABEL.fullmatch(session):
            skipped.append(f"{environment}: session id {session!r} is not a DNS label")
            continue
        is_paused = bool(info["State"].get("Paused"))
        if is_paused:
            if not CONTAINER_NAME.fullmatch(environment):
                skipped.append(f"{environment}: paused, and its name cannot be woken")
                continue
            suspended[environment] = dict(labels)
        published: dict[int, str] = {}
        for spec, bindings in (info["NetworkSettings"].get("Ports") or {}).items():
            port, _, proto = spec.partition("/")
            if proto == "tcp" and bindings:
                # Published on 0.0.0.0 or loopback: the proxy reaches both on loopback.
                ip = bindings[0]["HostIp"]
                host_ip = "127.0.0.1" if ip in ("", "0.0.0.0", "::") else ip  # noqa: S104
                published[int(port)] = f"{host_ip}:{bindings[0]['HostPort']}"
        for port, upstream in sorted(published.items()):
            found.append(
                Route(f"{port}-{session}.{domain}", upstream, environment, False, is_paused)
            )
        if discover and labels.get(LABEL_DISCOVER, "true") != "false":
            networks = info["NetworkSettings"].get("Networks") or {}
            addresses = [n["IPAddress"] for n in networks.values() if n.get("IPAddress")]
            pid = int(info["State"].get("Pid") or 0)
            if addresses and pid:
                for port in sorted(listening_ports(pid) - set(published)):
                    upstream = f"{addresses[0]}:{port}"
                    found.append(
                        Route(f"{port}-{session}.{domain}", upstream, environment, True, is_paused)
                    )
    return sorted(found, key=lambda r: r.host), skipped, suspended


# One browser request in the site of the preview hosts but from another origin (another
# session's page): Sec-Fetch-Site says so on every request of current browsers. Only a
# top-level GET/HEAD navigation may come from anywhere (a link); a same-site form POST,
# frame, fetch, subresource or WebSocket would carry this host's cookie (SameSite Lax
# and Strict alike: sibling hosts are one site) and is refused. Non-browser clients send
# no Sec-Fetch-* and are not affected (they need the token anyway).
CROSS_ORIGIN_FETCH = [
    "  @cross_origin_fetch {",
    "    header Sec-Fetch-Site *",
    "    not header Sec-Fetch-Site same-origin",
    "    not {",
    "      header Sec-Fetch-Mode navigate",
    "      header Sec-Fetch-Dest document",
    "      method GET HEAD",
    "    }",
    "  }",
]
# The same for browsers without Sec-Fetch-* (Origin is sent on CORS, non-GET and WebSocket
# requests): an Origin other than the route's own is refused unless the browser vouches
# same-origin (a same-origin POST under Referrer-Policy: no-referrer says Origin: null).
# A WebSocket upgrade's Origin must always be the route's own.
OWN_ORIGIN = "https://{http.request.hostport}"
FOREIGN_ORIGIN = [
    "  @foreign_origin {",
    "    header Origin *",
    f"    not header Origin {OWN_ORIGIN}",
    "    not header Sec-Fetch-Site same-origin",
    "  }",
    "  @foreign_upgrade {",
    "    header Upgrade *",
    "    header Origin *",
    f"    not header Origin {OWN_ORIGIN}",
    "  }",
]
# Any spelling of the query parameter (Caddy's query matcher decodes names; apps may
# split on ';'): such a request is never forwarded, whatever token it carries.
PARAMETER_IN_QUERY = '`{http.request.uri.query}.matches("(?i)dockyard(_|%5f)token")`'
# Removes every dockyard cookie from the Cookie header and keeps the app's cookies in
# order: at the start with the separator after it, elsewhere with the one before it.
# Caddy 2.6's Caddyfile reads an empty replacement as "set the header to the pattern",
# so the replacement is "$1": Go's regexp expands the absent group 1 to nothing.
STRIP_COOKIE = (
    f'    request_header Cookie `^\\s*{COOKIE}=[^;]*(?:;\\s*|$)|;\\s*{COOKIE}=[^;]*` "$1"'
)


def caddyfile(
    found: Sequence[Route],
    tokens: dict[str, str],
    http_port: int,
    https_port: int,
    admin: str,
    wake: str | None = None,
) -> str:
    """Caddy's configuration: per route, refuse cross-origin browser requests (403), log
    in by the query parameter (cookie + redirect), proxy with the bearer header or the
    cookie (each stripped first), 401 otherwise. Tokens must match ``TOKEN``. A paused
    environment's authenticated handles first ask ``wake`` (``forward_auth``: Caddy runs
    it before the headers are stripped, and answers the endpoint's refusal itself)."""
    lines = [
        "# dockyard preview proxy (generated; do not edit)",
        "{",
        f"  admin {admin}",
        f"  http_port {http_port}",
        f"  https_port {https_port}",
        "  skip_install_trust",
        "}",
    ]
    for route in found:
        token = tokens[route.environment]
        if not TOKEN.fullmatch(token):
            raise ProxyError(f"token of {route.environment} is not a token (see --token-dir)")
        waking = []
        if route.paused and wake:
            if not CONTAINER_NAME.fullmatch(route.environment):
                raise ProxyError(f"{route.environment!r} is not a container name")
            waking = [
                f"    forward_auth {wake} {{",
                f"      uri {WAKE_PATH}{route.environment}",
                "    }",
            ]
        lines += [
            f"https://{route.host} {{",
            "  tls internal",
            *CROSS_ORIGIN_FETCH,
            *FOREIGN_ORIGIN,
            f'  @bearer header Authorization "Bearer {token}"',
            f"  @cookie header_regexp Cookie `(?:^|;)\\s*{COOKIE}={token}\\s*(?:;|$)`",
            f"  @login query {QUERY}={token}",
            f"  @token_in_query expression {PARAMETER_IN_QUERY}",
            "  handle @cross_origin_fetch {",
            '    respond "403 Forbidden: a request from another origin" 403',
            "  }",
            "  handle @foreign_origin {",
            '    respond "403 Forbidden: a request from another origin" 403',
            "  }",
            "  handle @foreign_upgrade {",
            '    respond "403 Forbidden: a WebSocket from another origin" 403',
            "  }",
            "  handle @login {",
            f'    header Set-Cookie "{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Lax"',
            "    redir {path} 302",
            "  }",
            "  handle @token_in_query {",
            '    respond "401 Unauthorized: a dockyard preview token is required" 401',
            "  }",
            "  handle @bearer {",
            *waking,
            "    request_header -Authorization",
            STRIP_COOKIE,
            f"    reverse_proxy {route.upstream}",
            "  }",
            "  handle @cookie {",
            *waking,
            STRIP_COOKIE,
            f"    reverse_proxy {route.upstream}",
            "  }",
            "  handle {",
            '    respond "401 Unauthorized: a dockyard preview token is required" 401',
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def authenticated(token: str, authorization: Sequence[str], cookies: Sequence[str]) -> bool:
    """Whether a request's headers carry ``token`` the way Caddy's matchers accept it:
    ``Authorization: Bearer <token>`` exactly, or dockyard's cookie with exactly it."""
    if not TOKEN.fullmatch(token):
        return False
    bearer = f"Bearer {token}".encode()
    if any(hmac.compare_digest(value.encode(), bearer) for value in authorization):
        return True
    for header in cookies:
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name == COOKIE and hmac.compare_digest(value.encode(), token.encode()):
                return True
    return False


def unpause(environment: str) -> None:
    """The engine's ``POST /containers/{id}/unpause``, through its CLI like every read here."""
    run(["docker", "unpause", environment])


def is_paused(environment: str) -> bool:
    out = run(["docker", "inspect", "--format", "{{.State.Paused}}", environment])
    return out.strip() == "true"


def session_key(labels: Mapping[str, str]) -> str | None:
    """The sessions layer's name of an environment's session, ``<stack>.<sessionId>``
    (its ``Record.stack_name``: the stack label is the tenant, or ``sessions``), which
    names its freeze lock and its E2B record; None when the labels do not give one."""
    stack, session = labels.get(LABEL_STACK, ""), labels.get(LABEL_SESSION, "")
    key = f"{stack}.{session}"
    if not DNS_LABEL.fullmatch(session) or not CONTAINER_NAME.fullmatch(key):
        return None
    return key


def e2b_sandbox(state_dir: str | None, labels: Mapping[str, str]) -> bool:
    """Whether the session is an E2B sandbox (``<state>/e2b/<stack>.<sessionId>.json``,
    dockyard.sessions.e2b_records): E2B decides when one wakes (connect, or a routed call
    with autoResume, which also restarts its deadline), never a preview request."""
    key = session_key(labels)
    return bool(state_dir and key and (Path(state_dir) / "e2b" / f"{key}.json").exists())


@contextlib.contextmanager
def freeze_lock(state_dir: str | None, labels: Mapping[str, str]) -> Iterator[bool]:
    """The sessions layer's freeze lock of the environment's session
    (``<state>/locks/<stack>.<sessionId>.freeze``, dockyard.sessions.pause.frozen_state):
    True while this holds it, False when a snapshot or backup holds it (never waited
    for). Only an existing lock file is opened (read-only: this root process never creates
    files the server's user must write); without a state directory or a lock file, True."""
    key = session_key(labels)
    if not state_dir or key is None:
        yield True
        return
    try:
        lock = open(Path(state_dir) / "locks" / f"{key}.freeze")  # noqa: SIM115
    except FileNotFoundError:
        yield True
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class Waker:
    """The wake decision of the ``forward_auth`` endpoint. It knows the tokens of the
    routed environments and which were paused at the last look (:meth:`update`). A
    request for a paused one that carries its token unpauses it once: requests arriving
    together wait for the one wake (per-environment lock) and find it done; a wake that
    failed is not tried again for ``retry_after`` seconds. Anything without the token is
    refused before the engine is touched."""

    def __init__(
        self,
        *,
        unpause: Callable[[str], None] = unpause,
        is_paused: Callable[[str], bool] = is_paused,
        audit: Callable[..., None] = host.audit,
        state_dir: str | None = None,
        retry_after: float = RETRY_AFTER_S,
        wait: float = WAKE_WAIT_S,
        max_waiters: int = MAX_WAITERS,
        max_waiting: int = MAX_WAITING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._unpause, self._is_paused, self._audit = unpause, is_paused, audit
        self._state_dir, self._retry_after, self._wait, self._clock = (
            state_dir, retry_after, wait, clock,
        )  # fmt: skip
        self._tokens: dict[str, str] = {}
        self._paused: dict[str, dict[str, str]] = {}
        self._failed: dict[str, float] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._max_waiters, self._max_waiting = max_waiters, max_waiting
        self._waiting: dict[str, int] = {}

    def waiting(self, environment: str) -> int:
        """Requests of ``environment`` in :meth:`request` past the token check now."""
        with self._guard:
            return self._waiting.get(environment, 0)

    def update(self, tokens: Mapping[str, str], paused: Mapping[str, Mapping[str, str]]) -> None:
        with self._guard:
            self._tokens = dict(tokens)
            self._paused = {name: dict(labels) for name, labels in paused.items()}
            self._locks = {name: self._locks.get(name) or threading.Lock() for name in tokens}

    def request(
        self, environment: str, authorization: Sequence[str], cookies: Sequence[str]
    ) -> tuple[int, str]:
        """The endpoint's answer (status, body) for a preview request to ``environment``:
        2xx lets Caddy proxy it, anything else is what the caller gets."""
        with self._guard:
            token, lock = self._tokens.get(environment), self._locks.get(environment)
        if token is None or lock is None:
            return 404, "404 Not Found: no preview route of this environment; retry"
        if not authenticated(token, authorization, cookies):
            return 401, "401 Unauthorized: a dockyard preview token is required"
        with self._guard:
            if environment not in self._paused:
                return 204, ""  # running (or woken already): no lock, no wait
        with self._guard:  # a token holder's flood does not pile up waiting threads
            if (
                self._waiting.get(environment, 0) >= self._max_waiters
                or sum(self._waiting.values()) >= self._max_waiting
            ):
                return 503, "503 Service Unavailable: the session is being woken; retry"
            self._waiting[environment] = self._waiting.get(environment, 0) + 1
        try:
            if not lock.acquire(timeout=self._wait):
                return 503, "503 Service Unavailable: the session is being woken; retry"
            try:
                return self._wake(environment)
            finally:
                lock.release()
        finally:
            with self._guard:
                self._waiting[environment] -= 1

    def _wake(self, environment: str) -> tuple[int, str]:
        with self._guard:
            labels = self._paused.get(environment)
            failed = self._failed.get(environment)
        if labels is None:
            return 204, ""  # running (or woken by a request before this one)
        if failed is not None and self._clock() - failed < self._retry_after:
            return 503, "503 Service Unavailable: waking the session failed; retry shortly"
        if e2b_sandbox(self._state_dir, labels):
            return 409, (
                "409 Conflict: a paused E2B sandbox is not woken by a preview request; "
                "connect to it through E2B first"
            )
        with freeze_lock(self._state_dir, labels) as free:
            if not free:
                return 503, (
                    "503 Service Unavailable: a snapshot or backup of the session holds it "
                    "paused; retry in a few seconds"
                )
            started = time.monotonic()
            error = ""
            try:
                self._unpause(environment)
            except (ProxyError, OSError) as exc:
                error = str(exc)
                try:
                    still = self._is_paused(environment)
                except (ProxyError, OSError):
                    still = True
                if not still:  # resumed meanwhile by something else: nothing to record
                    error = "already running"
        took = int((time.monotonic() - started) * 1000)
        with self._guard:
            if not error or error == "already running":
                self._paused.pop(environment, None)
                self._failed.pop(environment, None)
            else:
                self._failed[environment] = self._clock()
        if error == "already running":
            return 204, ""
        self._audit(
            "resume",
            actor=AUDIT_ACTOR,
            labels=labels,
            result="error" if error else "ok",
            duration_ms=took,
            detail=f"{WOKEN_BY}: {error}" if error else WOKEN_BY,
        )
        if error:
            print(f"dockyard-preview-proxy: waking {environment} failed: {error}", file=sys.stderr)
            return 503, "503 Service Unavailable: waking the session failed; retry shortly"
        return 204, ""


class WakeHandler(BaseHTTPRequestHandler):
    """``GET /wake/<environment>`` from Caddy's ``forward_auth`` (the original request's
    headers, its body left behind)."""

    server: WakeServer

    def do_GET(self) -> None:
        # Caddy's forward_auth replaces the path and keeps the original query string
        # (``/wake/<env>?x=1``): only the path names the environment.
        path = urllib.parse.urlsplit(self.path).path
        environment = path.removeprefix(WAKE_PATH)
        if not path.startswith(WAKE_PATH) or not CONTAINER_NAME.fullmatch(environment):
            status, body = 404, "404 Not Found"
        else:
            status, body = self.server.waker.request(
                environment,
                self.headers.get_all("Authorization") or [],
                self.headers.get_all("Cookie") or [],
            )
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:  # Caddy may close at once after a 2xx's headers (nothing to write then)
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # every wake is audited; the requests themselves are Caddy's to log


class WakeServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The endpoint on its unix socket; ``dial`` is Caddy's name for it. Closing it
    removes the socket file only while it is still this server's (a next watcher may
    already have replaced it)."""

    daemon_threads = True

    def __init__(self, path: str, waker: Waker) -> None:
        self.waker = waker
        super().__init__(path, WakeHandler)
        os.chmod(path, 0o600)
        self.dial = f"unix/{path}"
        self._inode = os.lstat(path).st_ino

    def server_close(self) -> None:
        super().server_close()
        with contextlib.suppress(OSError):
            if os.lstat(self.server_address).st_ino == self._inode:
                os.unlink(self.server_address)


def serve_wakes(listen: str, waker: Waker) -> WakeServer | None:
    """The endpoint on ``unix:<path>`` in a thread, or None (a warning: no wake routes this
    run) when it cannot be ours: the socket's directory must be this user's alone (made
    0700 when missing), and a file there that is not a socket is left alone. A socket
    left by an earlier watcher is replaced."""
    if not WAKE_LISTEN.fullmatch(listen):
        raise ProxyError(
            f"--wake-listen {listen!r} is not allowed (allowed: {WAKE_LISTEN_ALLOWED})"
        )
    path = Path(listen.removeprefix("unix:"))
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        folder = os.lstat(path.parent)
        if (
            not stat.S_ISDIR(folder.st_mode)
            or folder.st_uid != os.geteuid()
            or folder.st_mode & 0o077
        ):
            raise OSError(f"{path.parent} is not a directory of this user alone (mode 0700)")
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise OSError(f"{path} exists and is not a socket")
            path.unlink()
        server = WakeServer(str(path), waker)
    except OSError as exc:
        print(f"WARNING: --wake-listen {listen}: {exc}; no wakes this run", file=sys.stderr)
        return None
    threading.Thread(target=server.serve_forever, name="wake", daemon=True).start()
    return server


def caddy_up(admin: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{admin}/config/", timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def reconcile(
    args: argparse.Namespace, waker: Waker | None = None, wake: str | None = None
) -> dict[str, object]:
    """One look: routes, tokens, Caddy. ``wake`` is the dial address of the wake endpoint
    this process serves (None when it serves none: paused environments get no route, so
    no request is ever sent to a listener that is not ours)."""
    found, skipped, paused = routes(args.domain, args.discover, args.scope_label, bool(wake))
    token_dir = Path(args.token_dir)
    tokens = {r.environment: token_for(token_dir, r.environment) for r in found}
    if waker is not None:
        # Before Caddy has the routes that ask it: a request a new route sends must find
        # its environment listed as paused (an environment listed early is harmless).
        waker.update(tokens, paused)
    config = Path(args.config)
    text = caddyfile(found, tokens, args.http_port, args.https_port, args.admin, wake)
    actions = []
    changed = not config.exists() or config.read_text() != text
    if changed:
        config.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = config.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        tmp.replace(config)
    running = caddy_up(args.admin)
    caddy = [args.caddy]
    if not running and args.service:
        # Under systemd Caddy is a service of its own: a timer's job (Type=oneshot) would
        # have every process it leaves behind killed when it exits.
        run(["systemctl", "start", args.service])
        actions.append("caddy started")
    elif not running:
        # Its log to a file: the daemon would hold a pipe open and we would wait forever.
        log = config.with_name("caddy.log")
        with open(log, "ab") as out:
            started = subprocess.run(
                [*caddy, "start", "--config", str(config), "--adapter", "caddyfile"],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        if started.returncode != 0:
            raise ProxyError(f"caddy start failed (see {log})")
        actions.append("caddy started")
    elif changed:
        run(
            [*caddy, "reload", "--config", str(config), "--adapter", "caddyfile",
             "--address", args.admin]
        )  # fmt: skip
        actions.append("caddy reloaded")
    return {
        "changed": bool(actions),
        "actions": actions,
        "routes": [
            {"host": r.host, "upstream": r.upstream, "discovered": r.discovered}
            | ({"paused": True} if r.paused else {})
            for r in found
        ],
        "skipped": skipped,
    }


def remove(args: argparse.Namespace) -> dict[str, object]:
    actions = []
    if args.service:
        active = subprocess.run(
            ["systemctl", "is-active", "--quiet", args.service], check=False
        ).returncode
        if active == 0:
            run(["systemctl", "stop", args.service])
            actions.append("caddy stopped")
    elif caddy_up(args.admin):
        run([args.caddy, "stop", "--address", args.admin])
        actions.append("caddy stopped")
    config = Path(args.config)
    if config.exists():
        config.unlink()
        actions.append("configuration removed")
    return {"changed": bool(actions), "actions": actions, "routes": [], "skipped": []}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domain", required=True, help="wildcard domain, e.g. preview.example.com")
    parser.add_argument("--config", default="/etc/dockyard/preview/Caddyfile")
    parser.add_argument("--token-dir", default="/var/lib/dockyard/preview")
    parser.add_argument("--http-port", type=int, default=80)
    parser.add_argument("--https-port", type=int, default=443)
    parser.add_argument("--admin", default="127.0.0.1:2019", help="Caddy's admin endpoint")
    parser.add_argument("--caddy", default="/usr/bin/caddy")
    parser.add_argument(
        "--service",
        help="systemd unit that runs Caddy (started when it is not up, stopped by --remove); "
        "without it, `caddy start` (hosts without systemd)",
    )
    parser.add_argument("--no-discover", dest="discover", action="store_false")
    parser.add_argument("--scope-label", help="KEY=VALUE: only environments with this label")
    parser.add_argument("--watch", type=float, help="repeat every N seconds (1-60)")
    parser.add_argument(
        "--for",
        dest="duration",
        type=float,
        help="with --watch: stop after this many seconds (a scheduler starts the next one)",
    )
    parser.add_argument(
        "--wake-listen",
        help="unix:/PATH (a socket in a directory of root's alone): keep paused environments' "
        "routes and wake them on an authenticated request (the endpoint runs while --watch "
        "runs; without it, or when it cannot listen, paused environments get no route)",
    )
    parser.add_argument(
        "--state-dir",
        help="the sessions' state directory (DOCKYARD_STATE_DIR; required by --wake-listen): "
        "a wake leaves a session alone while a snapshot or backup holds its freeze lock, "
        "and never wakes an E2B sandbox",
    )
    parser.add_argument("--remove", action="store_true")
    parser.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not DOMAIN.fullmatch(args.domain):
            raise ProxyError(f"--domain {args.domain!r} is not allowed (allowed: a DNS name)")
        for name in ("http_port", "https_port"):
            if not 1 <= getattr(args, name) <= 65535:
                raise ProxyError(f"--{name.replace('_', '-')} is not allowed (allowed: 1-65535)")
        if args.watch is not None and not 1 <= args.watch <= 60:
            raise ProxyError(f"--watch {args.watch} is not allowed (allowed: 1-60 seconds)")
        if args.wake_listen is not None and not WAKE_LISTEN.fullmatch(args.wake_listen):
            raise ProxyError(
                f"--wake-listen {args.wake_listen!r} is not allowed "
                f"(allowed: {WAKE_LISTEN_ALLOWED})"
            )
        if args.wake_listen and not args.state_dir:
            raise ProxyError(
                "--wake-listen needs --state-dir (the sessions' state directory on this host, "
                "the server's DOCKYARD_STATE_DIR): a wake must honour a snapshot's or backup's "
                "freeze lock and leave E2B sandboxes to E2B"
            )
        if args.remove:
            result = remove(args)
        else:
            waker, server = None, None
            if args.wake_listen and args.watch is not None:
                waker = Waker(state_dir=args.state_dir)
                if Path(args.state_dir).is_dir():
                    server = serve_wakes(args.wake_listen, waker)
                else:  # the server has not made it yet (or it is elsewhere): no wakes
                    print(
                        f"WARNING: --state-dir {args.state_dir} is not a directory; "
                        "no wakes this run",
                        file=sys.stderr,
                    )
            # Wake routes only to the endpoint this process holds (none if it cannot).
            wake = server.dial if server is not None else None
            try:
                result = reconcile(args, waker, wake)
                if args.watch is not None and result["changed"]:
                    print(json.dumps(result), flush=True)  # each change, the first one too
                deadline = time.monotonic() + (args.duration or float("inf"))
                while args.watch is not None and time.monotonic() + args.watch < deadline:
                    time.sleep(args.watch)
                    result = reconcile(args, waker, wake)
                    if result["changed"]:
                        print(json.dumps(result), flush=True)
            finally:
                if server is not None:
                    server.shutdown()
                    server.server_close()
    except (ProxyError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        actions = result["actions"]
        for action in (actions if isinstance(actions, list) else []) or ["nothing to do"]:
            print(f"dockyard-preview-proxy: {action}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
