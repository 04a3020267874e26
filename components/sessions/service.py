"""What the service layer's verb modules need of :class:`dockyard.sessions.Sessions`
(which calls them): one Protocol, so pause, snapshots and backups type the same object
the same way without importing the class that imports them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from .registry import Registry
from .request import SessionPlan
from .settings import Paths


class SessionsLike(Protocol):
    """The settings' paths, the registry and validation of a request."""

    where: Paths

    @property
    def registry(self) -> Registry: ...

    def plan(
        self,
        request: Mapping[str, Any],
        secrets: Mapping[str, str] | None = None,
        naming: str = ...,
    ) -> tuple[SessionPlan, dict[str, str]]: ...
