"""``dockyard serve`` and ``dockyard keys create|list|revoke`` (mounted by dockyard.cli;
errors print through dockyard.terminal, as the CLI's own verbs' do).

The key store is ``--key-store URL``, else ``$DOCKYARD_API_KEY_STORE``, else SQLite in the
sessions state directory. ``serve`` listens on loopback unless given TLS (``--tls-cert``
and ``--tls-key``) and a key store holding a live key: a non-loopback address without
them is refused before anything listens.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import InvalidInput
from ..sessions import Sessions
from ..sessions.settings import paths, usable_state
from ..terminal import JsonFlag, errors
from .settings import STORE_VARIABLE, Limits, default_url
from .workers import MAX_WORKERS, available, listening, supervise

if TYPE_CHECKING:
    from .store import KeyStore

keys_app = typer.Typer(
    help="API keys of `dockyard serve` (shown once, stored as a digest).", no_args_is_help=True
)

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--key-store",
        help=f"Key store URL (sqlite:///PATH, postgresql+psycopg://…; default ${STORE_VARIABLE}, "
        "else SQLite in the state directory).",
    ),
]


def store_url(given: str | None) -> str:
    """The key store: ``--key-store``, else $DOCKYARD_API_KEY_STORE, else SQLite in the
    state directory (which must be usable: :class:`StateUnusable` says how to fix it)."""
    return given or os.environ.get(STORE_VARIABLE) or default_url(usable_state(paths()).state)


def open_store(given: str | None) -> KeyStore:
    # Late for start-up speed: SQLAlchemy and Alembic load only when a keys or serve
    # command runs, never for `dockyard --help` or the other commands.
    from .store import KeyStore

    return KeyStore(store_url(given))


@contextlib.contextmanager
def stored(given: str | None) -> Iterator[KeyStore]:
    """The key store for one command, closed when it ends."""
    store = open_store(given)
    try:
        yield store
    finally:
        store.close()


def _info(info: Any) -> dict[str, Any]:
    return {
        "id": info.id,
        "tenant": info.tenant,
        "admin": info.admin,
        "createdAt": info.created_at.isoformat(),
        "lastUsedAt": info.last_used_at.isoformat() if info.last_used_at else None,
        "revokedAt": info.revoked_at.isoformat() if info.revoked_at else None,
    }


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str | None, typer.Option(help="The tenant the key acts as.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="An admin key (every tenant).")] = False,
    key_store: StoreOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a key and print it once (only its digest is kept)."""
    with errors(as_json):
        with stored(key_store) as store:
            issued = store.create(tenant, admin)
        if as_json:
            print(json.dumps({**_info(issued.info), "key": issued.key}))
        else:
            print(issued.key)
            print(
                f"key id {issued.info.id} ({'admin' if admin else f'tenant {tenant}'}): "
                "keep the key now, it cannot be shown again",
                file=sys.stderr,
            )


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    key_store: StoreOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List keys: ids, tenant, created, last used, revoked — never the keys."""
    with errors(as_json):
        with stored(key_store) as store:
            rows = [_info(info) for info in store.list(tenant)]
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        for row in rows:
            who = "admin" if row["admin"] else f"tenant {row['tenant']}"
            print(
                f"{row['id']}  {who}  created {row['createdAt']}  last used "
                f"{row['lastUsedAt'] or '-'}{'  REVOKED ' + row['revokedAt'] if row['revokedAt'] else ''}"
            )


WEBSOCKET_MESSAGE_BYTES = 4 * 1024 * 1024
"""The largest WebSocket message a client may send (exec's interactive socket, routed
E2B sockets; a larger one closes the socket, 1009). With :data:`WEBSOCKET_QUEUE` and no
compression it bounds what one client's socket holds in the server's memory while the
other end does not read (review5 R9); the sandbox -> client direction has its own bound
(e2b_websocket_proxy.WEBSOCKET_MESSAGE_BYTES)."""
WEBSOCKET_QUEUE = 4
"""Client messages held per socket before reading from it pauses."""


def server_config(app: Any, body_timeout: float, tls: tuple[Path, Path] | None) -> Any:
    """The ``uvicorn.Config`` ``serve`` runs ``app`` with (uvicorn loads late: start-up)."""
    import uvicorn

    from .header_timeout import header_timeout_protocol

    return uvicorn.Config(
        app,
        log_level="warning",
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        server_header=False,
        # The C parser and event loop (uvicorn[standard]'s httptools and uvloop): a
        # request costs a fraction of h11 on asyncio (docs/performance.md, api).
        http=header_timeout_protocol(body_timeout),
        loop="uvloop",
        # permessage-deflate off: no SDK needs it, and it lets a few KB of a client's
        # become megabytes held in the server.
        ws_max_size=WEBSOCKET_MESSAGE_BYTES,
        ws_max_queue=WEBSOCKET_QUEUE,
        ws_per_message_deflate=False,
    )


@keys_app.command("revoke")
def keys_revoke(key_id: str, key_store: StoreOption = None, as_json: JsonFlag = False) -> None:
    """Revoke a key: it answers 401 from then on."""
    with errors(as_json):
        with stored(key_store) as store:
            info = store.revoke(key_id)
        print(json.dumps(_info(info)) if as_json else f"revoked {info.id}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(
    host: str, tls_cert: Path | None, tls_key: Path | None, key_store: str | None, store: KeyStore
) -> None:
    """Refuse a non-loopback address without TLS and a key store (every problem at once)."""
    if is_loopback(host):
        return
    problems = []
    for flag, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is None or not path.is_file():
            problems.append(
                f"{flag}: {'missing' if path is None else f'{str(path)!r} is not a file'} "
                f"(allowed: a PEM file; --host {host} is not loopback, so TLS is required)"
            )
    if not (key_store or os.environ.get(STORE_VARIABLE)):
        problems.append(
            f"--key-store: missing (allowed: a key store URL or ${STORE_VARIABLE}; --host {host} "
            "is not loopback)"
        )
    elif not any(info.revoked_at is None for info in store.list()):
        problems.append(
            "--key-store: holds no live key (allowed: create one with `dockyard keys create`)"
        )
    if problems:
        raise InvalidInput("serve", problems)


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: a free one, printed).")] = 8080,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="PEM certificate.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key.")] = None,
    key_store: StoreOption = None,
    body_limit: Annotated[
        int, typer.Option(help="Largest request body in bytes.")
    ] = Limits.body_bytes,
    rate: Annotated[
        float, typer.Option(help="Requests per second per key (one replica).")
    ] = Limits.rate,
    burst: Annotated[int, typer.Option(help="Requests per key at once.")] = Limits.burst,
    upload_limit: Annotated[
        int, typer.Option(help="Largest file upload (PUT …/files) in bytes.")
    ] = Limits.upload_bytes,
    body_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for a request's headers (then the connection is closed) "
            "and for the next part of a body (then 408)."
        ),
    ] = Limits.body_timeout_s,
    workers: Annotated[
        int,
        typer.Option(
            help="Server processes sharing the address, each a replica on the key store "
            "(rates and caches per process; docs/api.md): about one per core."
        ),
    ] = 1,
) -> None:
    """Serve the HTTP API (docs/api.md) until interrupted."""
    with errors(False):
        if not 1 <= workers <= (MAX_WORKERS if available() else 1):
            allowed = f"1 to {MAX_WORKERS}" if available() else f"1 on {sys.platform}: Linux only"
            raise InvalidInput(
                "serve", [f"--workers: {workers} is not allowed (allowed: {allowed})"]
            )
        store = open_store(key_store)
        try:
            check_exposure(host, tls_cert, tls_key, key_store, store)
            limits = Limits(
                body_limit, rate, burst, upload_bytes=upload_limit, body_timeout_s=body_timeout
            )
            tls = (tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
            # Whatever can fail at start (the state directory, the key store, the TLS
            # files) fails here, before anything listens: the same error and exit code
            # with one process or several.
            app = _app(store, limits, tls)
            try:
                sock = listening(host, port)
            except OSError as exc:
                raise InvalidInput(
                    "serve", [f"--host {host} --port {port}: cannot listen ({exc.strerror})"]
                ) from None
        except BaseException:
            store.close()
            raise
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        print(f"dockyard: listening on {'https' if tls else 'http'}://{shown}:{bound}", flush=True)
        if workers == 1:
            _run(app, sock, store)
        else:
            # Each process builds its own app and store (no connection or thread crosses a
            # fork); this one's was the check above.
            store.close()
            code = supervise(sock, workers, lambda: _worker(sock, key_store, limits, tls))
            if code:
                raise typer.Exit(code)
    raise typer.Exit(0)


def _app(store: KeyStore, limits: Limits, tls: tuple[Path, Path] | None) -> Any:
    """The uvicorn config of the app over this host's sessions and ``store``."""
    # Late for start-up speed: FastAPI and uvicorn load only when serve runs.
    from .app import create_app

    config = server_config(
        create_app(Sessions.default(), store, limits), limits.body_timeout_s, tls
    )
    try:
        config.load()  # the TLS files are read here, before anything listens
    except OSError as exc:  # ssl.SSLError too
        raise InvalidInput(
            "serve",
            [
                f"--tls-cert/--tls-key: cannot be loaded ({exc}; allowed: a PEM certificate and its key)"
            ],
        ) from None
    return config


def _run(config: Any, sock: socket.socket, store: KeyStore) -> None:
    """Serve ``config`` on ``sock`` until stopped; closes ``store`` then."""
    import uvicorn

    try:
        # What exists now (modules, the app, its routes) lives as long as the process:
        # frozen out of the collector's generations, a full collection no longer walks it
        # (one took ~145 ms here, every request waiting on it: docs/performance.md, api).
        gc.collect()
        gc.freeze()
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        store.close()


def _worker(
    sock: socket.socket, key_store: str | None, limits: Limits, tls: tuple[Path, Path] | None
) -> None:
    """One of ``--workers`` processes: its own store and app; a failure is one ``ERROR:``
    line and its exit code, as with one process."""
    with errors(False):
        store = open_store(key_store)
        try:
            config = _app(store, limits, tls)
        except BaseException:
            store.close()
            raise
        _run(config, sock, store)


__all__ = ["keys_app", "serve"]
