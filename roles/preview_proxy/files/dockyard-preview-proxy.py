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

Idempotent: Caddy is reloaded only when the generated Caddyfile changed (or started
when its admin endpoint does not answer). ``--watch N`` repeats every N seconds;
``--remove`` stops Caddy and deletes the generated file (tokens stay). ``--json`` prints
what was done. stdlib only; needs the docker CLI and caddy; runs as root (reads other
processes' network tables).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


class ProxyError(RuntimeError):
    pass


@dataclass(frozen=True)
class Route:
    host: str
    upstream: str
    environment: str
    discovered: bool


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


def routes(domain: str, discover: bool, scope: str | None) -> tuple[list[Route], list[str]]:
    filters = ["--filter", f"label={MANAGED}", "--filter", "status=running"]
    if scope:
        filters += ["--filter", f"label={scope}"]
    ids = run(["docker", "ps", "-q", *filters]).split()
    if not ids:
        return [], []
    found, skipped = [], []
    for info in json.loads(run(["docker", "inspect", *ids])):
        labels = info["Config"].get("Labels") or {}
        session = labels.get(LABEL_SESSION, "")
        environment = info["Name"].lstrip("/")
        if not DNS_LABEL.fullmatch(session):
            skipped.append(f"{environment}: session id {session!r} is not a DNS label")
            continue
        published: dict[int, str] = {}
        for spec, bindings in (info["NetworkSettings"].get("Ports") or {}).items():
            port, _, proto = spec.partition("/")
            if proto == "tcp" and bindings:
                # Published on 0.0.0.0 or loopback: the proxy reaches both on loopback.
                ip = bindings[0]["HostIp"]
                host_ip = "127.0.0.1" if ip in ("", "0.0.0.0", "::") else ip  # noqa: S104
                published[int(port)] = f"{host_ip}:{bindings[0]['HostPort']}"
        for port, upstream in sorted(published.items()):
            found.append(Route(f"{port}-{session}.{domain}", upstream, environment, False))
        if discover and labels.get(LABEL_DISCOVER, "true") != "false":
            networks = info["NetworkSettings"].get("Networks") or {}
            addresses = [n["IPAddress"] for n in networks.values() if n.get("IPAddress")]
            pid = int(info["State"].get("Pid") or 0)
            if addresses and pid:
                for port in sorted(listening_ports(pid) - set(published)):
                    upstream = f"{addresses[0]}:{port}"
                    found.append(Route(f"{port}-{session}.{domain}", upstream, environment, True))
    return sorted(found, key=lambda r: r.host), skipped


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
    found: Sequence[Route], tokens: dict[str, str], http_port: int, https_port: int, admin: str
) -> str:
    """Caddy's configuration: per route, refuse cross-origin browser requests (403), log
    in by the query parameter (cookie + redirect), proxy with the bearer header or the
    cookie (each stripped first), 401 otherwise. Tokens must match ``TOKEN``."""
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
            "    request_header -Authorization",
            STRIP_COOKIE,
            f"    reverse_proxy {route.upstream}",
            "  }",
            "  handle @cookie {",
            STRIP_COOKIE,
            f"    reverse_proxy {route.upstream}",
            "  }",
            "  handle {",
            '    respond "401 Unauthorized: a dockyard preview token is required" 401',
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def caddy_up(admin: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{admin}/config/", timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def reconcile(args: argparse.Namespace) -> dict[str, object]:
    found, skipped = routes(args.domain, args.discover, args.scope_label)
    token_dir = Path(args.token_dir)
    tokens = {r.environment: token_for(token_dir, r.environment) for r in found}
    config = Path(args.config)
    text = caddyfile(found, tokens, args.http_port, args.https_port, args.admin)
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
            {"host": r.host, "upstream": r.upstream, "discovered": r.discovered} for r in found
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
        if args.remove:
            result = remove(args)
        else:
            result = reconcile(args)
            deadline = time.monotonic() + (args.duration or float("inf"))
            while args.watch is not None and time.monotonic() + args.watch < deadline:
                time.sleep(args.watch)
                result = reconcile(args)
                if result["changed"]:
                    print(json.dumps(result), flush=True)
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
