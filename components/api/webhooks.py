"""Webhooks per tenant over HTTP: ``POST/GET/DELETE /api/webhooks`` and their delivery
log. Each delivery is a signed POST, retried (:mod:`.webhook_delivery`, which also holds
the rules of where a webhook may point); webhooks and deliveries live in the API store
(:mod:`.webhook_store`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field

from ..errors import InvalidInput
from .events import EVENT_TYPES
from .events_settings import EventSettings
from .principal import Caller, Ctx
from .store.models import Webhook, WebhookDelivery
from .webhook_delivery import (
    ANSWER_MAX,
    DELIVERY_HEADER,
    EVENT_HEADER,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    URL_MAX,
    Dispatcher,
    answer_kept,
    check_url,
    excerpt,
    running,
    signature,
    start,
)
from .webhook_store import Only, WebhookStore

ID_MAX = 2**31 - 1
"""The largest id a query or path takes (the store's INTEGER columns; more would fail
in the database, not as 422)."""
State = Literal["pending", "delivered", "failed"]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


router = APIRouter(tags=["webhooks"])


class NewWebhook(BaseModel):
    url: str = Field(max_length=URL_MAX, description="Where events are POSTed.")
    events: list[str] = Field(
        default_factory=list, max_length=len(EVENT_TYPES), description="Event types; [] = all."
    )
    tenant: str | None = Field(
        default=None,
        max_length=64,
        description="Admin keys: whose events (none: every tenant's). A tenant's key: its own.",
    )


class WebhookOut(BaseModel):
    id: str
    tenant: str | None
    url: str
    events: list[str]
    createdAt: datetime

    @classmethod
    def of(cls, row: Webhook) -> WebhookOut:
        return cls(
            id=row.id,
            tenant=row.tenant,
            url=row.url,
            events=json.loads(row.events),
            createdAt=_aware(row.created_at),
        )


class CreatedWebhook(WebhookOut):
    secret: str = Field(description="The signing secret: shown this once.")


class Delivery(BaseModel):
    """One event for one webhook: what happened to it at the endpoint."""

    id: int = Field(description="The Dockyard-Delivery header's value (the same on retries).")
    eventId: int = Field(description="The Dockyard-Event-Id header's value.")
    eventType: str
    state: str = Field(
        description="pending (more attempts to come), delivered (a 2xx answer) or failed "
        "(attemptsAllowed attempts made, none answered 2xx)"
    )
    attempts: int = Field(description="Attempts made so far.")
    attemptsAllowed: int = Field(description="The server's bound on attempts per delivery.")
    lastStatus: int | None = Field(description="The last attempt's HTTP status (none: no answer).")
    lastError: str | None = Field(description="Why the last attempt did not deliver.")
    lastResponse: str | None = Field(
        description=f"The start of the last answer's body (at most {ANSWER_MAX} bytes, "
        "non-printable characters replaced). None when empty, and always when the "
        "receiver's address is not public (inside a network only the admin's allowance "
        "admits): such an answer's body is never read."
    )
    lastAttemptAt: datetime | None
    nextAttemptAt: datetime | None = Field(description="When the next attempt is due (pending).")
    createdAt: datetime
    updatedAt: datetime


def _stores(request: Request) -> WebhookStore:
    return request.app.state.webhooks  # type: ignore[no-any-return]


@router.post("/api/webhooks", status_code=201, summary="Create a webhook")
async def create_webhook(
    new: NewWebhook, request: Request, caller: Caller, ctx: Ctx
) -> CreatedWebhook:
    settings: EventSettings = request.app.state.events.settings
    unknown = [e for e in new.events if e not in EVENT_TYPES]
    if unknown:
        raise InvalidInput(
            "webhook",
            [
                f"request.events: {e!r} is not an event type (allowed: {', '.join(EVENT_TYPES)})"
                for e in unknown
            ],
        )
    await to_thread.run_sync(check_url, new.url, settings.webhook_allow_networks)
    row = await ctx.call(
        _stores(request).create,
        caller.scope(new.tenant),
        new.url,
        sorted(set(new.events)),
        caller.key_id,
        settings.webhooks_per_tenant,
    )
    return CreatedWebhook(**WebhookOut.of(row).model_dump(), secret=row.secret)


@router.get("/api/webhooks", summary="List webhooks (never their secrets)")
async def list_webhooks(
    request: Request,
    caller: Caller,
    ctx: Ctx,
    tenant: Annotated[
        str | None, Query(max_length=64, description="Admin keys: one tenant's.")
    ] = None,
) -> list[WebhookOut]:
    rows = await ctx.call(_stores(request).listed, caller.scope(tenant), caller.admin)
    return [WebhookOut.of(row) for row in rows]


@router.get("/api/webhooks/{webhook_id}", summary="One webhook")
async def get_webhook(webhook_id: str, request: Request, caller: Caller, ctx: Ctx) -> WebhookOut:
    row = await ctx.call(_stores(request).find, webhook_id, caller.scope(), caller.admin)
    return WebhookOut.of(row)


@router.delete("/api/webhooks/{webhook_id}", status_code=204, summary="Delete a webhook")
async def delete_webhook(webhook_id: str, request: Request, caller: Caller, ctx: Ctx) -> Response:
    await ctx.call(_stores(request).delete, webhook_id, caller.scope(), caller.admin)
    return Response(status_code=204)


@router.get("/api/webhooks/{webhook_id}/deliveries", summary="A webhook's delivery log")
async def list_deliveries(
    webhook_id: str,
    request: Request,
    caller: Caller,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    event: Annotated[
        int | None, Query(ge=1, le=ID_MAX, description="Only the delivery of this event id.")
    ] = None,
    state: Annotated[State | None, Query(description="Only the deliveries in this state.")] = None,
    before: Annotated[
        int | None,
        Query(ge=1, le=ID_MAX, description="Only deliveries with a smaller id (next page)."),
    ] = None,
) -> list[Delivery]:
    """Newest first: each event sent to the webhook, its state, attempts and last answer
    (one row per event)."""
    store = _stores(request)
    await ctx.call(store.find, webhook_id, caller.scope(), caller.admin)
    found = await ctx.call(
        store.deliveries, webhook_id, limit, Only(event_id=event, state=state, before=before)
    )
    allowed = _allowed(request)
    return [_delivery(row, kind, allowed) for row, kind in found]


@router.get(
    "/api/webhooks/{webhook_id}/deliveries/{delivery_id}", summary="One delivery of a webhook"
)
async def get_delivery(
    webhook_id: str,
    delivery_id: Annotated[int, Path(ge=1, le=ID_MAX)],
    request: Request,
    caller: Caller,
    ctx: Ctx,
) -> Delivery:
    """What happened to one event at the webhook's endpoint (the ``Dockyard-Delivery``
    header's id)."""
    store = _stores(request)
    await ctx.call(store.find, webhook_id, caller.scope(), caller.admin)
    row, kind = await ctx.call(store.delivery, webhook_id, delivery_id)
    return _delivery(row, kind, _allowed(request))


def _allowed(request: Request) -> int:
    return int(request.app.state.events.settings.webhook_attempts)


def _delivery(row: WebhookDelivery, kind: str, allowed: int) -> Delivery:
    pending = row.state == "pending"
    return Delivery(
        id=row.id,
        eventId=row.event_id,
        eventType=kind,
        state=row.state,
        attempts=row.attempts,
        attemptsAllowed=allowed,
        lastStatus=row.last_status,
        lastError=row.last_error,
        lastResponse=row.last_response,
        lastAttemptAt=_aware(row.last_attempt_at) if row.last_attempt_at else None,
        nextAttemptAt=_aware(row.next_at) if pending else None,
        createdAt=_aware(row.created_at),
        updatedAt=_aware(row.updated_at),
    )


__all__: list[Any] = [
    "ANSWER_MAX",
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Dispatcher",
    "WebhookStore",
    "answer_kept",
    "check_url",
    "excerpt",
    "router",
    "running",
    "signature",
    "start",
]
