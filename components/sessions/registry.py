"""The sessions this machine created: one small JSON file per session stack.

A record holds what ``get``, ``refresh`` and ``destroy`` need to find the session again
(its request, tenant, stack and manifest path). Requests hold names, never secret values
(plain ``env`` cannot carry secret-looking names; secrets travel separately).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..contract import NAMING_LEGACY, session_environment_id
from ..errors import Conflict, NotFound
from ..files import write_json_atomic
from . import registry_index


class SessionNotFound(NotFound, LookupError):
    """No session of that id (and tenant) on this machine."""


class NamesTaken(Conflict):
    """The engine names a new session would get belong to another session here."""


@dataclass(frozen=True)
class Record:
    session_id: str
    tenant: str | None
    stack_name: str
    cwd: str
    manifest_path: str
    host: str
    request: dict[str, Any]
    created_at: str
    naming: str = NAMING_LEGACY
    """The engine names it was created with (dockyard.contract.NAMINGS). A record written
    before issue 25 has no such field: it reads as v1, the names its objects have."""

    @property
    def environment_id(self) -> str:
        """The engine name of its container and network (prefix of its volumes)."""
        return session_environment_id(self.tenant, self.session_id, self.naming)


class Registry:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, stack_name: str) -> Path:
        return self.directory / f"{stack_name}.json"

    def save(self, record: Record) -> None:
        write_json_atomic(
            self._path(record.stack_name), asdict(record), 0o600, sort_keys=True, dir_mode=0o700
        )

    def remove(self, stack_name: str) -> None:
        self._path(stack_name).unlink(missing_ok=True)

    def take_out(self, stack_name: str, to: Path) -> None:
        """Move a record out of the registry (a warm pool's free member waits there)."""
        to.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(self._path(stack_name), to)

    def put_back(self, held: Path) -> Record:
        """Move a record :meth:`take_out` moved back in; the record."""
        record = read(held)
        os.replace(held, self._path(record.stack_name))
        return record

    def all(self, tenant: str | None = None) -> list[Record]:
        """The records (of ``tenant``), in stack name order; files that are not records
        are left out. Read through :mod:`.registry_index`: a file is parsed again only
        when it changed, so the records are shared with other callers in this process —
        read them, never change them (:meth:`find` gives a record of one's own)."""
        records = registry_index.load(self.directory, ".json", "record", _parse)
        return [r for r in records if tenant is None or r.tenant == tenant]

    def find(self, session_id: str, tenant: str | None = None) -> Record:
        """The session's record, its ``request`` a copy the caller may change."""
        matches = [r for r in self.all(tenant) if r.session_id == session_id]
        if tenant is None and any(r.tenant is None for r in matches):
            # No tenant named: the untenanted session of that id, never a tenant's alias.
            matches = [r for r in matches if r.tenant is None]
        if not matches:
            scope = f" of tenant {tenant}" if tenant else ""
            raise SessionNotFound(f"no session {session_id!r}{scope} on this machine")
        if len(matches) > 1:
            tenants = ", ".join(sorted(str(r.tenant) for r in matches))
            raise SessionNotFound(
                f"session {session_id!r} exists for several tenants ({tenants}): name the tenant"
            )
        return replace(matches[0], request=copy.deepcopy(matches[0].request))

    def check_names_free(self, stack_name: str, environment_id: str) -> None:
        """Refuse a new session whose engine names a registered session of another
        (tenant, session) holds: sessions created before issue 25 (v1) alias (a tenant
        ``sessions-acme``'s ``web`` is ``dockyard-sessions-acme-web``, an untenanted
        ``acme-web``'s name too); a create must never adopt or orphan their objects."""
        for record in self.all():
            if record.stack_name != stack_name and record.environment_id == environment_id:
                scope = f" of tenant {record.tenant}" if record.tenant else " (no tenant)"
                raise NamesTaken(
                    f"engine names {environment_id!r} belong to session "
                    f"{record.session_id!r}{scope}, created before they became one-to-one: "
                    "choose another session id (or destroy that session first)"
                )


def read(path: Path) -> Record:
    """The record in ``path`` (one :meth:`Registry.take_out` moved there, say)."""
    return _parse(path.read_bytes())


def _parse(data: bytes) -> Record:
    loaded = json.loads(data)
    if not isinstance(loaded, dict):
        raise TypeError("a record is a JSON object")
    return Record(**loaded)
