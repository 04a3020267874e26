"""Warm pools on the engine (issue 29 item 1): members made ahead through the same
program as any session, claimed by the creates where dockyard chooses the session id,
refilled and re-rolled in the background.

A member is a whole sandbox made for one tenant (``pools[].tenant``) with an id of its
own (:func:`.pool.new_member_id`): its engine names, labels, network, workspace and the
access token of its in-environment daemon are the ones the session that claims it keeps,
so a claim runs no Pulumi — it takes the member
(:meth:`.pool.PoolStore.claim`, exclusive across processes), puts its registry record
back where every face finds sessions, and the caller records what the create asked for.
While free, a member's record waits in the pool's state (not in the registry), so no
list, dashboard, E2B answer or deadline sweep shows it; the engine does, so quotas count
it like any environment.

A create that names its own session id (the reference request, ``dockyard up``) cannot
claim: the id is baked into the member's engine names and labels at creation
(docs/instant-sessions.md#warm-pools). An E2B create's environment variables reach a
claimed member as secret files (:func:`deliver_secrets`), which its daemon reads at each
process start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import StackConfig, from_host_settings
from ..config.pools import Pool
from . import audit, registry
from . import e2b_records as records
from .pool import Member, PoolStore, RefillPlan, new_member_id
from .settings import IMAGE_RECORD, load_settings
from .status import engine_states

log = logging.getLogger(__name__)
DEFAULT_VARIANT = "core"
CLAIMS_KEPT_S = 3600.0
"""A claim file outlives its member's record this long (then it only takes room)."""
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


def _host(sessions: Any) -> tuple[list[Pool], StackConfig, str]:
    """The host's pools, its settings, and the fingerprint of what members are made from:
    the host settings as validated but ``pools``, and the image ``dockyard image build``
    recorded (a change to either re-rolls the free members)."""
    config = from_host_settings(
        load_settings(sessions.where), stack="sessions", cwd=str(sessions.where.state)
    )
    if not config.pools:
        return [], config, ""
    built = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        built = json.loads((sessions.where.state / IMAGE_RECORD).read_text("utf-8"))["imageRef"]
    made_from = config.model_dump(mode="json", exclude={"pools"})
    text = json.dumps({"settings": made_from, "built": built}, sort_keys=True, default=str)
    return config.pools, config, hashlib.sha256(text.encode()).hexdigest()


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
    pools, config, fingerprint = _host(sessions)
    if not pools:
        return None
    profile = profile or config.profile
    known = config.all_profiles().get(profile)
    # What a cold create of the same request gets: the profile's variant, else core.
    variant = variant or (known.variant if known is not None else None) or DEFAULT_VARIANT
    pool = next((p for p in pools if p.key == (tenant or "", backend, variant, profile)), None)
    if pool is None:
        return None
    members = store(sessions)
    while (taken := members.claim(pool, fingerprint, taken_by(tenant), tenant)) is not None:
        member = taken.member.member
        token = members.token(member)
        try:
            if token is None:
                raise OSError("its access token is missing")
            record = sessions.registry.put_back(members.held(member))
        except (OSError, ValueError, TypeError) as error:
            # Taken but unusable: the refill removes it once abandoned; try the next one.
            log.warning("pool member %s skipped: %s", member, error)
            continue
        members.forget(member)
        # The session's own line (and its session.created event): it begins now.
        with audit.recorded(
            sessions.where.audit_log,
            "create",
            session=member,
            tenant=record.tenant,
            host=record.host,
            stack=record.stack_name,
        ) as entry:
            entry["detail"] = f"claimed from warm pool {pool.label}"
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


class Backoff:
    """Per pool: after a member could not be made, the pool is left alone for 5 s, then
    10, 20… up to 5 min; a member made resets it. A refusing quota or a broken engine
    then costs one attempt (one audit line) per wait, not one every round."""

    FIRST_S = 5.0
    MOST_S = 300.0

    def __init__(self) -> None:
        self._until: dict[str, tuple[int, float]] = {}

    def ready(self, label: str) -> bool:
        return self._until.get(label, (0, 0.0))[1] <= time.monotonic()

    def failed(self, label: str) -> None:
        times = self._until.get(label, (0, 0.0))[0] + 1
        wait = min(self.FIRST_S * 2 ** min(times - 1, 16), self.MOST_S)
        self._until[label] = (times, time.monotonic() + wait)

    def made(self, label: str) -> None:
        self._until.pop(label, None)


def refill(
    sessions: Any,
    progress: Callable[[str], None] = lambda _: None,
    *,
    stop: threading.Event | None = None,
    backoff: Backoff | None = None,
) -> Refilled:
    """Remove free members made from other settings or image, stopped ones, and what a
    dead process left (a member taken but never handed out, one half made), then make one
    member for each pool under its ``min`` (within its ``max``), and again, reading the
    settings anew each round, until every pool is at its floor: a settings change or a
    claim meanwhile is seen within one member's making. Members are made through
    :meth:`Sessions.create`; one that fails is reported and leaves nothing (the create's
    own guarantee); its pool is then skipped for this refill and, with ``backoff`` (the
    server's), for a growing wait. ``stop`` set: returns before the next member."""
    done = Refilled()
    members = store(sessions)
    backoff = backoff or Backoff()
    halted = stop.is_set if stop is not None else (lambda: False)
    failed: set[str] = set()
    with _alone(members) as mine:
        first = True
        while mine and not halted():
            pools, _, fingerprint = _host(sessions)
            if not pools and not members.members():
                break
            _clear_leftovers(sessions, members, done)
            plan = members.plan(pools, fingerprint)
            # The engine is asked once a refill (members made in it are running).
            stopped = _stopped(members, plan) if first else []
            first = False
            stale = [*plan.reroll, *_abandoned(members), *stopped]
            for member in stale:
                if halted():
                    return done
                _remove(sessions, members, member, done)
            if stale:
                plan = members.plan(pools, fingerprint)
            due = [
                p
                for p in pools
                if p.label in plan.create and p.label not in failed and backoff.ready(p.label)
            ]
            if not due:
                break
            for pool in due:
                if halted():
                    return done
                if _make(sessions, members, pool, fingerprint, done, progress):
                    backoff.made(pool.label)
                else:
                    backoff.failed(pool.label)
                    failed.add(pool.label)
    return done


def _clear_leftovers(sessions: Any, members: PoolStore, done: Refilled) -> None:
    """What a process that died mid-way left: a member half made (its marker's process is
    gone; its session, if the create got that far, is destroyed), a claimed member whose
    record went back (a session now: only the pool's note of it goes), old claim files."""
    for member in members.abandoned_markers():
        if members.recorded(member) or members.claimed(member):
            # Made and recorded before its maker died: a member (or a session) now; only
            # the marker is left over.
            members.drop_marker(member)
            continue
        with contextlib.suppress(Exception):
            held = members.held(member)
            if held.exists():
                sessions.registry.put_back(held)
            found = [r for r in sessions.registry.all() if r.session_id == member]
            for record in found:
                sessions.destroy(member, record.tenant, final_backup=False, pool_member=True)
            members.forget(member)
            members.drop_marker(member)
            done.rerolled.append(member)
    for member in members.members():
        if members.claimed(member.member) and not members.held(member.member).exists():
            members.forget(member.member)
    members.prune_claims(CLAIMS_KEPT_S)


def deliver_secrets(sessions: Any, record: registry.Record, values: Mapping[str, str]) -> None:
    """Write ``values`` into the claimed member as its secret files, through the session's
    data plane (located and checked like every exec: :meth:`.dataplane.Workspace.
    put_secrets`). The member has run nothing of anybody's yet."""
    sessions.workspace(record.session_id, record.tenant).put_secrets(values)


def _abandoned(members: PoolStore) -> list[Member]:
    """Members claimed whose record never went back (the claiming process died, or the
    member was unusable): nobody holds them, so they are removed."""
    return [
        m
        for m in members.members()
        if (members.claimed_for(m.member) or 0.0) > ABANDONED_AFTER_S
        and members.held(m.member).exists()
    ]


def _stopped(members: PoolStore, plan: RefillPlan) -> list[Member]:
    """Free members whose container is not running (stopped by the idle monitor, say, or
    gone): a claim must hand out a running sandbox, so they are re-rolled. One list call
    per engine; an engine that cannot be asked re-rolls nothing."""
    going = {m.member for m in plan.reroll}
    free: dict[str, list[tuple[Member, str]]] = {}
    for member in members.members():
        if member.member in going or members.claimed(member.member):
            continue
        with contextlib.suppress(OSError, ValueError, TypeError):
            record = registry.read(members.held(member.member))
            free.setdefault(record.host, []).append((member, record.environment_id))
    stopped = []
    for host, held in free.items():
        states = engine_states(host)
        if states is None:
            continue
        stopped += [m for m, name in held if states.get(name, {}).get("status") != "running"]
    return stopped


def _make(
    sessions: Any,
    members: PoolStore,
    pool: Pool,
    fingerprint: str,
    done: Refilled,
    progress: Callable[[str], None],
) -> bool:
    """Make one member of ``pool``; False when it could not be (reported in ``done``)."""
    member = new_member_id()
    token = secrets.token_urlsafe(24)
    progress(f"pool {pool.label}: making member {member}")
    with members.creating(pool, member):
        try:
            sessions.create(
                _request(sessions, pool, member),
                {records.TOKEN_SECRET: token},
                pool_member=True,
            )
        except Exception as error:  # reported; the create left nothing behind
            done.failed.append(f"{pool.label}: {member}: {error}")
            log.warning("pool %s: member %s not made: %s", pool.label, member, error)
            return False
        try:
            record = sessions.registry.find(member, pool.tenant)
            sessions.registry.take_out(record.stack_name, members.held(member))
            members.add(pool, member, fingerprint, token)
        except Exception as error:
            done.failed.append(f"{pool.label}: {member}: not recorded ({error})")
            with contextlib.suppress(Exception):
                if members.held(member).exists():
                    sessions.registry.put_back(members.held(member))
                sessions.destroy(member, pool.tenant, final_backup=False, pool_member=True)
            members.forget(member)
            return False
    done.made.append(member)
    return True


def _remove(sessions: Any, members: PoolStore, member: Member, done: Refilled) -> None:
    """Take ``member`` (so no claim gets it meanwhile), then destroy it."""
    if not members.claimed(member.member) and not members.take(member.member, "re-roll"):
        return  # claimed meanwhile: it is a session now
    held = members.held(member.member)
    try:
        record = sessions.registry.put_back(held) if held.exists() else None
        if record is not None:
            sessions.destroy(member.member, record.tenant, final_backup=False, pool_member=True)
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
