"""Warm pools on the engine (issue 29 item 1): members made ahead through the same
program as any session, claimed by the creates where dockyard chooses the session id,
refilled and re-rolled in the background.

A member is a whole sandbox made for one tenant (``pools[].tenant``) with an id of its
own (:func:`.pool.new_member_id`): its engine names, labels, network, workspace and the
access token of its in-environment daemon are the ones the session that claims it keeps,
so a claim runs no Pulumi and touches no container — it takes the member
(:meth:`.pool.PoolStore.claim`, exclusive across processes), puts its registry record
back where every face finds sessions, and the caller records what the create asked for.
While free, a member's record waits in the pool's state (not in the registry), so no
list, dashboard, E2B answer or deadline sweep shows it; the engine does, so quotas count
it like any environment.

A create that names its own session id (the reference request, ``dockyard up``) cannot
claim: the id is baked into the member's engine names and labels at creation. A create
with environment variables cannot either: they are the environment's secrets, read once
when it starts (docs/instant-sessions.md#warm-pools).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..config import from_host_settings
from ..config.pools import Pool
from . import e2b_records as records
from .pool import Member, PoolStore, new_member_id
from .settings import IMAGE_RECORD, load_settings

log = logging.getLogger(__name__)
DEFAULT_VARIANT = "core"
ABANDONED_AFTER_S = 120.0
"""A member claimed this long ago whose record never went back to the registry was
abandoned (its claiming process died): the refill removes it. A claim puts the record
back within milliseconds of taking the member, so a live claim is never mistaken."""


@dataclass
class Refilled:
    """What one refill did (member ids)."""

    made: list[str] = field(default_factory=list)
    rerolled: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    """One line per member that could not be made or removed, with the reason."""


@dataclass(frozen=True)
class Claimed:
    member: str
    token: str


def store(sessions: Any) -> PoolStore:
    return PoolStore(sessions.where.state / "pools")


def _host(sessions: Any) -> tuple[list[Pool], str, str]:
    """The host's pools, its default profile, and the fingerprint of what members are
    made from: the host settings as validated but ``pools``, and the image ``dockyard
    image build`` recorded (a change to either re-rolls the free members)."""
    config = from_host_settings(
        load_settings(sessions.where), stack="sessions", cwd=str(sessions.where.state)
    )
    if not config.pools:
        return [], config.profile, ""
    built = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        built = json.loads((sessions.where.state / IMAGE_RECORD).read_text("utf-8"))["imageRef"]
    made_from = config.model_dump(mode="json", exclude={"pools"})
    text = json.dumps({"settings": made_from, "built": built}, sort_keys=True, default=str)
    return config.pools, config.profile, hashlib.sha256(text.encode()).hexdigest()


def _request(sessions: Any, pool: Pool, member: str) -> dict[str, Any]:
    environment = {"backend": pool.backend, "variant": pool.variant, "profile": pool.profile}
    return records.request_of(
        sessions, member, pool.tenant, environment, {}, [records.TOKEN_SECRET]
    )


def taken_by(tenant: str | None) -> str:
    return f"a create of tenant {tenant}" if tenant else "a create"


def claim(
    sessions: Any, tenant: str | None, backend: str, variant: str | None, profile: str | None
) -> Claimed | None:
    """A free member of the pool for ``tenant``, ``backend``, ``variant`` and ``profile``
    (None: the host's defaults) taken for good, its record back in the registry; None
    when no pool matches or none of its members is free (the caller creates cold)."""
    pools, default_profile, fingerprint = _host(sessions)
    wanted = (tenant or "", backend, variant or DEFAULT_VARIANT, profile or default_profile)
    pool = next((p for p in pools if p.key == wanted), None)
    if pool is None:
        return None
    members = store(sessions)
    while (taken := members.claim(pool, fingerprint, taken_by(tenant), tenant)) is not None:
        member = taken.member.member
        token = members.token(member)
        try:
            if token is None:
                raise OSError("its access token is missing")
            sessions.registry.put_back(members.held(member))
        except (OSError, ValueError, TypeError) as error:
            # Taken but unusable: the refill removes it once abandoned; try the next one.
            log.warning("pool member %s skipped: %s", member, error)
            continue
        members.forget(member)
        return Claimed(member, token)
    return None


@contextlib.contextmanager
def _alone(members: PoolStore) -> Iterator[bool]:
    """One refill at a time on a host (several servers may run): True when this one may."""
    members.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(members.root / "refill.lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def refill(sessions: Any, progress: Callable[[str], None] = lambda _: None) -> Refilled:
    """Remove free members made from other settings or image (and any member taken but
    never handed out), then make one member for each pool under its ``min`` (within its
    ``max``), and again, reading the settings anew each round, until every pool is at its
    floor: a settings change or a claim meanwhile is seen within one member's making.
    Members are made through :meth:`Sessions.create`; one that fails is reported, leaves
    nothing (the create's own guarantee) and ends the refill (the next one tries again)."""
    done = Refilled()
    members = store(sessions)
    with _alone(members) as mine:
        while mine:
            pools, _, fingerprint = _host(sessions)
            if not pools and not members.members():
                break
            plan = members.plan(pools, fingerprint)
            for member in [*plan.reroll, *_abandoned(members)]:
                _remove(sessions, members, member, done)
            if not plan.create or done.failed:
                break
            for pool in pools:
                if pool.label in plan.create:
                    _make(sessions, members, pool, fingerprint, done, progress)
    return done


def _abandoned(members: PoolStore) -> list[Member]:
    """Members claimed whose record never went back (the claiming process died, or the
    member was unusable): nobody holds them, so they are removed."""
    return [
        m
        for m in members.members()
        if (members.claimed_for(m.member) or 0.0) > ABANDONED_AFTER_S
        and members.held(m.member).exists()
    ]


def _make(
    sessions: Any,
    members: PoolStore,
    pool: Pool,
    fingerprint: str,
    done: Refilled,
    progress: Callable[[str], None],
) -> None:
    member = new_member_id()
    token = secrets.token_urlsafe(24)
    progress(f"pool {pool.label}: making member {member}")
    with members.creating(pool, member):
        try:
            sessions.create(_request(sessions, pool, member), {records.TOKEN_SECRET: token})
        except Exception as error:
            done.failed.append(f"{pool.label}: {member}: {error}")
            log.warning("pool %s: member %s not made: %s", pool.label, member, error)
            return
        try:
            record = sessions.registry.find(member, pool.tenant)
            sessions.registry.take_out(record.stack_name, members.held(member))
            members.add(pool, member, fingerprint, token)
        except Exception as error:
            done.failed.append(f"{pool.label}: {member}: not recorded ({error})")
            with contextlib.suppress(Exception):
                if members.held(member).exists():
                    sessions.registry.put_back(members.held(member))
                sessions.destroy(member, pool.tenant, final_backup=False)
            members.forget(member)
            return
    done.made.append(member)


def _remove(sessions: Any, members: PoolStore, member: Member, done: Refilled) -> None:
    """Take ``member`` (so no claim gets it meanwhile), then destroy it."""
    if not members.claimed(member.member) and not members.take(member.member, "re-roll"):
        return  # claimed meanwhile: it is a session now
    held = members.held(member.member)
    try:
        record = sessions.registry.put_back(held) if held.exists() else None
        if record is not None:
            sessions.destroy(member.member, record.tenant, final_backup=False)
    except Exception as error:
        # Its record is in the registry now (when the put back went through): the session
        # is listed to its tenant and an admin, who can destroy it; nothing is lost.
        done.failed.append(f"{member.pool}: {member.member}: not removed ({error})")
        log.warning("pool member %s not removed: %s", member.member, error)
        members.forget(member.member)
        return
    members.forget(member.member)
    done.rerolled.append(member.member)


def status(sessions: Any) -> list[dict[str, Any]]:
    """Each pool's free members and members being made, for ``dockyard pools``."""
    pools, _, fingerprint = _host(sessions)
    members = store(sessions)
    return [
        {
            "pool": pool.label,
            "min": pool.min,
            "max": pool.ceiling,
            "free": len(members.free(pool, fingerprint)),
            "making": members.being_made(pool),
        }
        for pool in pools
    ]
