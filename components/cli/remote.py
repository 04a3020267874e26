"""``--server URL``: the lifecycle verbs (``up``, ``ls``, ``show``, ``refresh``, ``down``)
through a ``dockyard serve`` elsewhere (:mod:`dockyard.client`) instead of this machine's
service layer, with the same output and exit codes.

The server is ``--server``, else ``$DOCKYARD_SERVER``; the key only ``$DOCKYARD_API_KEY``
(a key on the command line would be in the shell's history and in ``ps``). The server
answers for its own machine: ``--cwd`` names a directory there, and ``--secret NAME``
sends the value this shell holds (the variable ``dockyard up`` reads locally); a name
without a value here is left to the server's environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import typer

from ..sessions import Sessions, secret_variable

if TYPE_CHECKING:
    from ..client import Client

SERVER_VARIABLE = "DOCKYARD_SERVER"
"""dockyard.client.SERVER_VARIABLE, spelled here so that `dockyard --help` does not load
httpx (tests/api/test_client_cli.py keeps the two equal)."""

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar=SERVER_VARIABLE,
        help="Act through this `dockyard serve` (https://…) with the key in $DOCKYARD_API_KEY.",
    ),
]


class Lifecycle(Protocol):
    """What the lifecycle verbs call: :class:`dockyard.sessions.Sessions` or a server."""

    def create(
        self,
        request: Mapping[str, Any],
        secrets: Mapping[str, str] | None = None,
        progress: Callable[[str], None] = ...,
    ) -> Any: ...

    def list(self, tenant: str | None = None) -> list[dict[str, Any]]: ...

    def get(self, session: str, tenant: str | None = None) -> Any: ...

    def refresh(
        self,
        session: str,
        tenant: str | None = None,
        secrets: Mapping[str, str] | None = None,
        progress: Callable[[str], None] = ...,
    ) -> Any: ...

    def destroy(
        self,
        session: str,
        tenant: str | None = None,
        progress: Callable[[str], None] = ...,
        final_backup: bool = True,
    ) -> None: ...


def _quiet(_: str) -> None:
    return None


class ServerSessions:
    """The lifecycle verbs' calls, answered by a server (no engine output comes back)."""

    def __init__(self, server: str) -> None:
        # Late for start-up speed: httpx loads only when a verb is given --server.
        from ..client import Client

        self.client: Client = Client(server)

    def create(
        self,
        request: Mapping[str, Any],
        secrets: Mapping[str, str] | None = None,
        progress: Callable[[str], None] = _quiet,
    ) -> Any:
        names = request.get("secrets")
        tenant = request.get("tenant")
        values = dict(secrets or {})
        for name in names if isinstance(names, list) else []:
            variable = secret_variable(str(name), tenant if isinstance(tenant, str) else None)
            if name not in values and os.environ.get(variable):
                values[str(name)] = os.environ[variable]
        return self.client.create(request, values or None)

    def list(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return [dict(row) for row in self.client.list(tenant)]

    def get(self, session: str, tenant: str | None = None) -> Any:
        return self.client.get(session, tenant)["manifest"]

    def refresh(
        self,
        session: str,
        tenant: str | None = None,
        secrets: Mapping[str, str] | None = None,
        progress: Callable[[str], None] = _quiet,
    ) -> Any:
        return self.client.refresh(session, tenant, secrets)

    def destroy(
        self,
        session: str,
        tenant: str | None = None,
        progress: Callable[[str], None] = _quiet,
        final_backup: bool = True,
    ) -> None:
        self.client.destroy(session, tenant, final_backup=final_backup)


def sessions(server: str | None) -> Lifecycle:
    """The server's sessions with ``--server``/``$DOCKYARD_SERVER``, else this machine's."""
    return ServerSessions(server) if server else Sessions.default()


__all__ = ["SERVER_VARIABLE", "Lifecycle", "ServerOption", "ServerSessions", "sessions"]
