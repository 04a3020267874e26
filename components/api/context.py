"""What the server holds for its lifetime: the service layer, the key store, the limits
(:class:`~.settings.Limits`)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..sessions import Sessions
from .settings import Limits
from .store import KeyStore

T = TypeVar("T")


def own_event_loop() -> None:
    # The service layer's drivers (Pulumi's Automation API, the test harness's mocks) expect
    # an event loop in the thread that calls them, as the CLI's main thread has.
    asyncio.set_event_loop(asyncio.new_event_loop())


@dataclass
class Context:
    sessions: Sessions
    store: KeyStore
    limits: Limits = field(default_factory=Limits)
    _pool: ThreadPoolExecutor | None = None

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking service call in the bounded thread pool (``limits.workers``
        threads; further calls queue there, the event loop keeps answering others)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.limits.workers, "dockyard-api", initializer=own_event_loop
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(function, *args, **kwargs))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["Context", "Limits"]
