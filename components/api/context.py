"""What the server holds for its lifetime: the service layer, the key store, the limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from anyio import to_thread

from ..sessions import Sessions
from .store import KeyStore

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    body_bytes: int = 1024 * 1024
    """Largest request body (a request is a few kB; secrets included)."""
    rate: float = 10.0
    """Requests per second per key (token bucket refill)."""
    burst: int = 40
    """Requests a key may send at once (bucket size)."""
    workers: int = 16
    """Service calls (creates, destroys…) running at once; further ones wait their turn
    without blocking the event loop, so reads keep being answered."""


@dataclass
class Context:
    sessions: Sessions
    store: KeyStore
    limits: Limits = field(default_factory=Limits)
    _pool: anyio.CapacityLimiter | None = None

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking service call in the bounded thread pool."""
        if self._pool is None:
            self._pool = anyio.CapacityLimiter(self.limits.workers)
        return await to_thread.run_sync(lambda: function(*args, **kwargs), limiter=self._pool)
