"""The app factory: routers, the error handler, the request middleware."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..sessions import Sessions, audit
from . import (
    backups,
    dashboard,
    dataplane,
    e2b,
    errors,
    events,
    instant,
    keys,
    plan,
    sessions,
    webhooks,
)
from .context import Context, Limits
from .events_settings import EventSettings
from .middleware import RequestMiddleware
from .principal import KeyCache, TokenBuckets, watch_revocations
from .store import KeyStore

log = logging.getLogger(__package__)
TITLE = "dockyard"
API_VERSION = "1"


def create_app(
    sessions_api: Sessions,
    store: KeyStore,
    limits: Limits | None = None,
    event_settings: EventSettings | None = None,
) -> FastAPI:
    """The HTTP face over ``sessions_api`` with keys from ``store``; events from the audit
    trails ``event_settings`` name (default: from the environment)."""
    context = Context(sessions_api, store, limits or Limits())
    hub, dispatcher = webhooks.start(store.engine, sessions_api, event_settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with webhooks.running(hub, dispatcher):
            watching = asyncio.create_task(watch_revocations(app, context))
            try:
                yield
            finally:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
                context.close()
                # Lines still queued (of requests whose client went away) are written, for
                # a bounded time: a hung disk cannot hold the server's exit.
                if not await asyncio.to_thread(audit.flush_all, audit.EXIT_FLUSH_S):
                    log.warning(
                        "audit lines still queued after %g s at shutdown", audit.EXIT_FLUSH_S
                    )

    app = FastAPI(
        lifespan=lifespan,
        title=TITLE,
        version=API_VERSION,
        summary="Sessions for AI coding agents over HTTP (the service layer "
        "dockyard.sessions, with API keys per tenant).",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = context
    app.state.buckets = TokenBuckets(context.limits.rate, context.limits.burst)
    app.state.keys = KeyCache()
    app.state.events, app.state.webhooks = hub, dispatcher.store
    errors.install(app)
    app.include_router(sessions.router)
    app.include_router(plan.router)
    app.include_router(keys.router)
    app.include_router(instant.router)  # pause, resume, snapshots, fork (issue 29)
    app.include_router(events.router)
    app.include_router(webhooks.router)
    app.include_router(dataplane.router)  # exec, files, stats, logs, ports
    app.include_router(backups.router)  # backups, restore, the audit trail (issue 27)
    dashboard.install(app)  # the dashboard at / (issue 28)
    # Extension points (issue 27): exec, files, stats, logs, events routers go here.
    app.add_middleware(RequestMiddleware, context=context)
    e2b.install(app)  # the E2B-compatible routes and sandbox routing, outermost (issue 30)
    return app
