"""Warm pool bookkeeping (issue 29 item 1): which members exist, which are free, who
claimed which, and what a refill has to create or re-roll (:mod:`.warm` acts on it).

State lives under ``<state>/pools`` so every process of a host (the CLI, ``dockyard
serve``, an application's library calls) sees the same pool:

* ``members/<member>.json`` — a ready member: its pool, the digest of the settings and
  image it was made with, when. Written whole (temporary file, then rename).
* ``tokens/<member>`` — the member's access token for its in-environment daemon (0600),
  made with the member and handed to the session that claims it.
* ``held/<member>.json`` — the member's registry record while it is free: out of the
  registry, so no list, dashboard, E2B answer or deadline sweep sees a member before a
  claim puts the record back.
* ``claims/<member>`` — the claim, made with ``O_CREAT | O_EXCL``: of any number of
  processes claiming at once exactly one creates the file, so no member is handed out
  twice. A claim is never removed: a member serves one session ever.
* ``creating/<member>`` — a member being made (a refill counts it against ``max``).

Member ids are sandbox ids (``s`` and 20 random hex digits, :func:`new_member_id`): the
id a claimed member's session keeps, indistinguishable from a cold create's, and no
tenant can guess one to take its name first.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config.pools import Pool
from ..files import write_atomic
from . import processes

MEMBER_ID = re.compile(r"s[0-9a-f]{20}", re.ASCII)
MEMBER_ALLOWED = "s and 20 lower-case hex digits"


def new_member_id() -> str:
    """A new sandbox id (also what a cold E2B create names its session)."""
    return "s" + secrets.token_hex(10)


def digest(pool: Pool, image_ref: str) -> str:
    """What a member was made from: its pool entry and the image; a change re-rolls it."""
    text = json.dumps({"pool": pool.model_dump(mode="json"), "image": image_ref}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Member:
    member: str
    pool: str
    """The pool's label, ``[tenant/]backend-variant-profile``."""
    digest: str
    created_at: str


@dataclass(frozen=True)
class Claim:
    member: Member
    session: str
    tenant: str | None


@dataclass(frozen=True)
class RefillPlan:
    create: dict[str, int] = field(default_factory=dict)
    """Pool label -> members to make."""
    reroll: list[Member] = field(default_factory=list)
    """Unclaimed members of a changed setting or image, or of a pool no longer listed."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _alive(maker: dict[str, Any]) -> bool:
    """Whether the process a marker names still runs (on this boot of the machine)."""
    return maker.get("boot") == processes.boot_id() and processes.alive(maker.get("pid"))


def _valid_member(name: str) -> bool:
    return bool(MEMBER_ID.fullmatch(name))


class PoolStore:
    """The pool state of one host's state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.members_dir = root / "members"
        self.claims_dir = root / "claims"
        self.creating_dir = root / "creating"
        self.tokens_dir = root / "tokens"
        self.held_dir = root / "held"

    def _dirs(self) -> None:
        for where in (
            self.members_dir,
            self.claims_dir,
            self.creating_dir,
            self.tokens_dir,
            self.held_dir,
        ):
            where.mkdir(parents=True, exist_ok=True, mode=0o700)

    # --- members ------------------------------------------------------------------------

    @contextlib.contextmanager
    def creating(self, pool: Pool, member: str) -> Iterator[None]:
        """Mark ``member`` as being made while the block runs (counted against ``max``)."""
        if not _valid_member(member):
            raise ValueError(f"member {member!r} (allowed: {MEMBER_ALLOWED})")
        self._dirs()
        marker = self.creating_dir / member
        maker = {"pool": pool.label, "pid": os.getpid(), "boot": processes.boot_id()}
        write_atomic(marker, json.dumps(maker), 0o600)
        try:
            yield
        finally:
            marker.unlink(missing_ok=True)

    def _markers(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if not self.creating_dir.is_dir():
            return
        for marker in self.creating_dir.iterdir():
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(marker.read_text(encoding="utf-8"))
                if isinstance(data, dict) and _valid_member(marker.name):
                    yield marker.name, data

    def abandoned_markers(self) -> list[str]:
        """Members whose maker died while making them (killed mid-create, the machine
        rebooted): their marker would count against ``max`` forever."""
        return [m for m, data in self._markers() if not _alive(data)]

    def drop_marker(self, member: str) -> None:
        (self.creating_dir / member).unlink(missing_ok=True)

    def knows(self, session: str) -> bool:
        """Whether ``session`` is a pool member's id (made, being made, free or claimed):
        such an id is never a new session's but the pool's own."""
        if not _valid_member(session):
            return False
        return any(
            path.exists()
            for path in (
                self.members_dir / f"{session}.json",
                self.held_dir / f"{session}.json",
                self.claims_dir / session,
                self.creating_dir / session,
            )
        )

    def prune_claims(self, older_than_s: float) -> int:
        """Remove claim files of members no longer recorded, older than ``older_than_s``
        (a member's id is random and never made again; the files would only grow)."""
        removed = 0
        for claim in self.claims_dir.iterdir() if self.claims_dir.is_dir() else []:
            if (self.members_dir / f"{claim.name}.json").exists():
                continue
            with contextlib.suppress(OSError):
                if time.time() - claim.stat().st_mtime > older_than_s:
                    claim.unlink()
                    removed += 1
        return removed

    def add(self, pool: Pool, member: str, image_ref: str, token: str | None = None) -> Member:
        """Record a member made and ready for ``pool`` built from ``image_ref`` (and the
        access token it was made with)."""
        if not _valid_member(member):
            raise ValueError(f"member {member!r} (allowed: {MEMBER_ALLOWED})")
        self._dirs()
        if (self.claims_dir / member).exists():
            raise ValueError(f"member {member!r} was claimed once: a member serves one session")
        record = Member(member, pool.label, digest(pool, image_ref), _now())
        if token is not None:
            write_atomic(self.tokens_dir / member, token, 0o600, dir_mode=0o700)
        write_atomic(self.members_dir / f"{member}.json", json.dumps(asdict(record)))
        return record

    def members(self) -> list[Member]:
        """Every recorded member, claimed or not, oldest first (unreadable records skipped)."""
        found = []
        for path in self.members_dir.glob("*.json") if self.members_dir.is_dir() else []:
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                data = json.loads(path.read_text(encoding="utf-8"))
                record = Member(
                    str(data["member"]),
                    str(data["pool"]),
                    str(data["digest"]),
                    str(data["created_at"]),
                )
                if record.member == path.stem and _valid_member(record.member):
                    found.append(record)
        return sorted(found, key=lambda m: (m.created_at, m.member))

    def recorded(self, member: str) -> bool:
        """Whether ``member`` was recorded as made (free or claimed since)."""
        return (self.members_dir / f"{member}.json").exists()

    def claimed(self, member: str) -> bool:
        return (self.claims_dir / member).exists()

    def free(self, pool: Pool, image_ref: str) -> list[Member]:
        """Unclaimed members of ``pool`` made from the current settings and image."""
        wanted = digest(pool, image_ref)
        return [
            m
            for m in self.members()
            if m.pool == pool.label and m.digest == wanted and not self.claimed(m.member)
        ]

    def token(self, member: str) -> str | None:
        try:
            return (self.tokens_dir / member).read_text(encoding="utf-8")
        except OSError:
            return None

    def held(self, member: str) -> Path:
        """Where ``member``'s registry record waits while the member is free."""
        if not _valid_member(member):
            raise ValueError(f"member {member!r} (allowed: {MEMBER_ALLOWED})")
        return self.held_dir / f"{member}.json"

    def forget(self, member: str) -> None:
        """Drop a member's record and token (it was destroyed, or became its session);
        a claim stays."""
        (self.members_dir / f"{member}.json").unlink(missing_ok=True)
        (self.tokens_dir / member).unlink(missing_ok=True)

    # --- claims -------------------------------------------------------------------------

    def claim(self, pool: Pool, image_ref: str, session: str, tenant: str | None) -> Claim | None:
        """Take a free member of ``pool`` for ``session``, or None when none is free.
        Atomic across processes: the claim file is created exclusively, so a member two
        processes race for goes to exactly one; the loser tries the next."""
        for member in self.free(pool, image_ref):
            if self.take(member.member, session, tenant):
                return Claim(member, session, tenant)
        return None

    def take(self, member: str, session: str, tenant: str | None = None) -> bool:
        """Claim ``member`` itself (for ``session``, or a re-roll); False when another
        process has."""
        if not _valid_member(member):
            raise ValueError(f"member {member!r} (allowed: {MEMBER_ALLOWED})")
        self._dirs()
        try:
            descriptor = os.open(
                self.claims_dir / member, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600
            )
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump({"session": session, "tenant": tenant, "claimedAt": _now()}, handle)
        return True

    def claimed_for(self, member: str) -> float | None:
        """Seconds since ``member`` was claimed; None: it is not."""
        try:
            return max(time.time() - (self.claims_dir / member).stat().st_mtime, 0.0)
        except OSError:
            return None

    def claim_of(self, member: str) -> dict[str, Any] | None:
        path = self.claims_dir / member
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # --- refill -------------------------------------------------------------------------

    def being_made(self, pool: Pool) -> int:
        """Members of ``pool`` a live process is making."""
        return sum(
            1 for _, data in self._markers() if data.get("pool") == pool.label and _alive(data)
        )

    def plan(self, pools: Iterable[Pool], image_ref: str) -> RefillPlan:
        """What a refill does: re-roll unclaimed members of a changed pool or image (or of
        a pool no longer listed), then make each pool's ready members up to ``min``,
        never holding more than ``max`` (ready plus being made)."""
        listed = {pool.label: pool for pool in pools}
        reroll = [
            m
            for m in self.members()
            if not self.claimed(m.member)
            and (m.pool not in listed or m.digest != digest(listed[m.pool], image_ref))
        ]
        create = {}
        for label, pool in listed.items():
            ready = len(self.free(pool, image_ref))
            held = ready + self.being_made(pool)
            wanted = min(max(pool.min - ready, 0), max(pool.ceiling - held, 0))
            if wanted:
                create[label] = wanted
        return RefillPlan(create=create, reroll=reroll)
