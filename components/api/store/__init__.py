"""The API's key store: SQLite by default (one file in the sessions state directory, no
setup), PostgreSQL by URL (``postgresql+psycopg://…``) for several server replicas.

A key is ``dk_<id>_<secret>``: ``id`` is public (12 hex digits; it is the audit trail's
actor and what ``dockyard keys list`` shows), ``secret`` is 256 random bits. Only the
SHA-256 of the secret is stored, compared in constant time; the key is printed once, at
creation, and can never be read back. The schema is made by the Alembic migrations
shipped in the package (:func:`migrate`, run whenever a store is opened).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config
from pydantic import BaseModel, ConfigDict, field_validator
from sqlalchemy import Engine, create_engine, make_url, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ...contract import RESERVED_TENANTS, RESERVED_TENANTS_ALLOWED
from ...errors import Failed, InvalidInput, NotFound
from ..settings import default_url
from .models import ApiKey

__all__ = ["KEY_PREFIX", "IssuedKey", "KeyInfo", "KeyStore", "default_url", "migrate"]

KEY_PREFIX = "dk_"
KEY_PATTERN = re.compile(r"^dk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
TENANT_ALLOWED = "lowercase letters, digits and '-', at most 63, " + RESERVED_TENANTS_ALLOWED
MIGRATIONS = Path(__file__).with_name("migrations")
# A dummy digest compared when no key matches, so a wrong id costs what a wrong secret does.
_NO_KEY = hashlib.sha256(b"no such key").hexdigest()
LAST_USED_STEP = timedelta(seconds=60)
"""A key's last use is written at most this often: a write on every request serialised all
requests on the store's write lock (7-10 ms each on SQLite; issue 27's list benchmark)."""
LIVE_READ_IDS = 500
"""Key ids per read of :meth:`KeyStore.live_among` (well inside every database's limit on
bound parameters)."""
log = logging.getLogger(__name__)


class StoreError(Failed):
    """The key store cannot be opened or written (its URL is never echoed: it may hold a
    password)."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite hands timezone-aware columns back naive; they were written in UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class KeyInfo(BaseModel):
    """What may be shown of a key: never the key or its digest. The API's ``Key`` is this,
    its fields in camelCase."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: str
    tenant: str | None
    admin: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @field_validator("last_used_at", "revoked_at", mode="before")
    @classmethod
    def _utc(cls, moment: datetime | None) -> datetime | None:
        return _aware(moment)

    @field_validator("created_at", mode="before")
    @classmethod
    def _utc_or_now(cls, moment: datetime | None) -> datetime:
        return _aware(moment) or _now()

    @classmethod
    def of(cls, row: ApiKey) -> KeyInfo:
        return cls.model_validate(row)


@dataclass(frozen=True)
class IssuedKey:
    info: KeyInfo
    key: str
    """The whole key: shown once, stored nowhere."""


def migrate(engine: Engine) -> None:
    """Bring the store's schema to the newest migration shipped in the package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class KeyStore:
    """Keys behind one interface, whatever the database."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True, mode=0o700
            )
        try:
            # A ping before each use finds a dropped server connection; a SQLite file has
            # none to drop (the ping would be a second statement on every key check).
            server = make_url(url).get_backend_name() != "sqlite"
            self.engine = create_engine(url, pool_pre_ping=server)
            migrate(self.engine)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StoreError(
                f"the key store cannot be opened ({type(exc).__name__}); "
                "allowed: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
            ) from None
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).chmod(0o600)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()

    def create(self, tenant: str | None, admin: bool = False) -> IssuedKey:
        if admin == (tenant is not None):
            raise InvalidInput(
                "key",
                [
                    "key: give a tenant or admin, not both nor neither (allowed: --tenant NAME | --admin)"
                ],
            )
        if tenant is not None and (not TENANT_PATTERN.match(tenant) or tenant in RESERVED_TENANTS):
            raise InvalidInput(
                "key", [f"tenant: {tenant!r} is not allowed (allowed: {TENANT_ALLOWED})"]
            )
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        row = ApiKey(
            id=key_id,
            tenant=tenant,
            admin=admin,
            secret_sha256=_digest(secret),
            created_at=_now(),
            last_used_at=None,
            revoked_at=None,
        )
        with self._session() as session:
            session.add(row)
        return IssuedKey(KeyInfo.of(row), f"{KEY_PREFIX}{key_id}_{secret}")

    def list(self, tenant: str | None = None) -> list[KeyInfo]:
        query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if tenant is not None:
            query = query.where(ApiKey.tenant == tenant)
        with self._session() as session:
            return [KeyInfo.of(row) for row in session.scalars(query)]

    def revoke(self, key_id: str, tenant: str | None = None) -> KeyInfo:
        """Revoke a key (``tenant``: only one of that tenant's)."""
        with self._session() as session:
            row = session.get(ApiKey, key_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                raise NotFound(f"no key {key_id!r}")
            if row.revoked_at is None:
                row.revoked_at = _now()
            return KeyInfo.of(row)

    def live_among(self, key_ids: Iterable[str]) -> set[str]:
        """Which of ``key_ids`` are live keys now (present and not revoked): one read per
        500 ids, whatever took the others away (a revocation by any process or replica, a
        row deleted by hand) (:func:`dockyard.api.principal.watch_revocations`)."""
        wanted = sorted(set(key_ids))
        live: set[str] = set()
        with self.engine.connect() as connection:
            for first in range(0, len(wanted), LIVE_READ_IDS):
                chunk = wanted[first : first + LIVE_READ_IDS]
                query = select(ApiKey.id).where(ApiKey.id.in_(chunk), ApiKey.revoked_at.is_(None))
                live.update(connection.scalars(query))
        return live

    def authenticate(self, presented: str) -> KeyInfo | None:
        """The key's info if ``presented`` is a live key, else None. The secret's digest is
        compared in constant time. Its last use is recorded when due (at most every
        :data:`LAST_USED_STEP`) in a transaction of its own after the read
        (:meth:`record_use`), which never fails the check."""
        key_id, secret = _parsed(presented)
        row = None
        if key_id:
            # A plain read, not an ORM unit of work: a key check is the store read on a
            # request's way (when the key cache misses).
            with self.engine.connect() as connection:
                query = select(ApiKey.__table__).where(ApiKey.id == key_id)
                row = connection.execute(query).first()
        stored = row.secret_sha256 if row is not None else _NO_KEY
        same = hmac.compare_digest(stored, _digest(secret))
        if row is None or not same or row.revoked_at is not None:
            return None
        info = KeyInfo.model_validate(row)
        now, last = _now(), info.last_used_at
        if last is not None and timedelta(0) <= now - last < LAST_USED_STEP:
            return info
        self.record_use(key_id, now)
        return info.model_copy(update={"last_used_at": now})

    def record_use(self, key_id: str, now: datetime) -> None:
        """Record ``now`` as the key's last use. The last use is bookkeeping: when it
        cannot be written (SQLite's ``database is locked`` under a burst of first uses, a
        replica holding the row) it is logged, never a caller's error, and written at the
        key's next check."""
        try:
            with self._session() as session:
                session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            log.warning(
                "the last use of API key %s is not recorded this time: %s: %s",
                key_id,
                type(cause).__name__,
                str(cause)[:200],
            )


def _parsed(presented: str) -> tuple[str, str]:
    """A presented key's ``(id, secret)``; ``("", "")`` when it is not a key's shape."""
    match = KEY_PATTERN.match(presented)
    return (match.group(1), match.group(2)) if match else ("", "")
