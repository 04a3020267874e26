"""The webhooks and their delivery log in the API store (:class:`WebhookStore`): what
the routes (:mod:`.webhooks`) create, list and delete, and what the dispatcher
(:mod:`.webhook_delivery`) queues, claims and settles — one row per (webhook, event),
retried with a doubling wait up to the server's bound on attempts.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import InvalidInput, NotFound
from .events_settings import EventSettings
from .store.models import Event, Webhook, WebhookDelivery
from .store.transactions import Transactional


@dataclass(frozen=True)
class Only:
    """Which of a webhook's deliveries :meth:`WebhookStore.deliveries` answers (None: any):
    of one event, in one state, with an id under ``before`` (the next page), or one."""

    event_id: int | None = None
    state: str | None = None
    before: int | None = None
    delivery_id: int | None = None


def _now() -> datetime:
    return datetime.now(UTC)


class WebhookStore(Transactional):
    """Webhooks and deliveries in the API store."""

    def create(
        self, tenant: str | None, url: str, events: list[str], actor: str, most: int
    ) -> Webhook:
        with self._session() as session:
            count = session.scalar(
                select(func.count()).select_from(Webhook).where(Webhook.tenant == tenant)
            )
            if tenant is not None and (count or 0) >= most:
                raise InvalidInput(
                    "webhook",
                    [f"webhooks: tenant {tenant!r} has {count} (allowed: at most {most})"],
                )
            row = Webhook(
                id=secrets.token_hex(8),
                tenant=tenant,
                url=url,
                events=json.dumps(events),
                secret=f"whsec_{secrets.token_urlsafe(32)}",
                cursor=int(session.scalar(select(func.max(Event.id))) or 0),
                created_by=actor,
                created_at=_now(),
            )
            session.add(row)
            return row

    def find(self, webhook_id: str, tenant: str | None, every_tenant: bool) -> Webhook:
        with self._session() as session:
            row = session.get(Webhook, webhook_id)
            if row is None or (not every_tenant and row.tenant != tenant):
                raise NotFound(f"no webhook {webhook_id!r}")
            return row

    def listed(self, tenant: str | None, every_tenant: bool) -> list[Webhook]:
        query = select(Webhook).order_by(Webhook.created_at, Webhook.id)
        if not every_tenant or tenant is not None:
            query = query.where(Webhook.tenant == tenant)
        with self._session() as session:
            return list(session.scalars(query))

    def delete(self, webhook_id: str, tenant: str | None, every_tenant: bool) -> None:
        self.find(webhook_id, tenant, every_tenant)
        with self._session() as session:
            session.query(WebhookDelivery).filter_by(webhook_id=webhook_id).delete()
            session.query(Webhook).filter_by(id=webhook_id).delete()

    def deliveries(
        self, webhook_id: str, limit: int, only: Only = Only()
    ) -> list[tuple[WebhookDelivery, str]]:
        """The webhook's deliveries (each with its event's type), newest first, those
        ``only`` admits (the next page: ``Only(before=…)``)."""
        query = (
            select(WebhookDelivery, Event.type)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.webhook_id == webhook_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        )
        if only.event_id is not None:
            query = query.where(WebhookDelivery.event_id == only.event_id)
        if only.state is not None:
            query = query.where(WebhookDelivery.state == only.state)
        if only.before is not None:
            query = query.where(WebhookDelivery.id < only.before)
        if only.delivery_id is not None:
            query = query.where(WebhookDelivery.id == only.delivery_id)
        with self._session() as session:
            return [(row, kind) for row, kind in session.execute(query).all()]

    def delivery(self, webhook_id: str, delivery_id: int) -> tuple[WebhookDelivery, str]:
        """One delivery of the webhook (:class:`NotFound` for one of another webhook's)."""
        found = self.deliveries(webhook_id, 1, Only(delivery_id=delivery_id))
        if not found:
            raise NotFound(f"no delivery {delivery_id} of webhook {webhook_id!r}")
        return found[0]

    # --- the dispatcher's side ---------------------------------------------------------------

    def fan_out(self) -> int:
        """Queue every new event for each webhook it matches (idempotent: a (webhook,
        event) pair is queued once, whichever replica gets there first)."""
        queued = 0
        with self._session() as session:
            newest = int(session.scalar(select(func.max(Event.id))) or 0)
            hooks = list(session.scalars(select(Webhook).where(Webhook.cursor < newest)))
            now = _now()
            for hook in hooks:
                query = select(Event.id).where(Event.id > hook.cursor, Event.id <= newest)
                if hook.tenant is not None:
                    query = query.where(Event.tenant == hook.tenant)
                wanted = json.loads(hook.events)
                if wanted:
                    query = query.where(Event.type.in_(wanted))
                ids = list(session.scalars(query.order_by(Event.id)))
                if ids:
                    insert = (
                        postgresql.insert
                        if self.engine.dialect.name == "postgresql"
                        else sqlite.insert
                    )
                    values = [
                        {
                            "webhook_id": hook.id,
                            "event_id": event_id,
                            "state": "pending",
                            "attempts": 0,
                            "next_at": now,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for event_id in ids
                    ]
                    session.execute(insert(WebhookDelivery).on_conflict_do_nothing(), values)
                    queued += len(ids)
                hook.cursor = newest
        return queued

    def claim(self, lease_s: float, most: int = 20) -> list[tuple[WebhookDelivery, Webhook, Event]]:
        """Due deliveries, each claimed for ``lease_s`` (its ``next_at`` moved on only if no
        other replica moved it first)."""
        now = _now()
        claimed = []
        with self._session() as session:
            query = (
                select(WebhookDelivery, Webhook, Event)
                .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .join(Event, Event.id == WebhookDelivery.event_id)
                .where(WebhookDelivery.state == "pending", WebhookDelivery.next_at <= now)
                .order_by(WebhookDelivery.next_at, WebhookDelivery.id)
                .limit(most)
            )
            for delivery, hook, event in session.execute(query).all():
                moved = session.execute(
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.id == delivery.id,
                        WebhookDelivery.next_at == delivery.next_at,
                    )
                    .values(next_at=now + timedelta(seconds=lease_s))
                )
                if moved.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append((delivery, hook, event))
        return claimed

    def settle(
        self,
        delivery_id: int,
        attempts: int,
        status: int | None,
        error: str | None,
        settings: EventSettings,
        answer: str | None = None,
    ) -> None:
        ok = status is not None and 200 <= status < 300
        now = _now()
        state = (
            "delivered" if ok else "failed" if attempts >= settings.webhook_attempts else "pending"
        )
        wait = min(settings.webhook_backoff_s * 2 ** (attempts - 1), 3600.0)
        with self._session() as session:
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id)
                .values(
                    state=state,
                    attempts=attempts,
                    last_status=status,
                    last_error=error,
                    last_response=answer,
                    last_attempt_at=now,
                    updated_at=now,
                    next_at=now + timedelta(seconds=wait),
                )
            )
