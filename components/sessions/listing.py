"""One page of the sessions list, filtered by tenant and labels: what ``GET /api/sessions``
answers (and any face that pages).

The records are filtered and counted first and only the page's rows are expanded with
their manifest (container name and port mappings), so a page costs what it shows, not
what the registry holds. Records come from the registry's index and manifests through
:func:`.registry_index.cached`: a file is read again only when it changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import manifest as manifest_contract
from ..errors import InvalidInput
from . import registry_index
from .registry import Record
from .service import SessionsLike


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    """The page's rows, each like :meth:`dockyard.sessions.Sessions.list`'s plus ``labels``."""
    total: int
    """Sessions matching the filters, on every page."""
    offset: int
    limit: int

    @property
    def next(self) -> int | None:
        """The offset of the next page, if any."""
        return self.offset + self.limit if self.offset + self.limit < self.total else None


def labels(record: Record) -> dict[str, str]:
    """The labels its request gave (none if they were not a mapping)."""
    given = record.request.get("labels")
    return {str(k): str(v) for k, v in given.items()} if isinstance(given, dict) else {}


def matches(found: dict[str, str], wanted: Sequence[str]) -> bool:
    """Whether ``found`` has every ``KEY`` (any value) and ``KEY=VALUE`` of ``wanted``."""
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in found or (sep and found[key] != value):
            return False
    return True


def _container(path: str) -> tuple[str, list[dict[str, Any]]]:
    manifest = manifest_contract.load(path)
    return manifest["container"]["name"], manifest["container"]["portMappings"]


def row(record: Record) -> dict[str, Any]:
    """The session's list row; ``container`` and ``ports`` only when its manifest reads."""
    expanded: dict[str, Any] = {
        "sessionId": record.session_id,
        "tenant": record.tenant,
        "stack": record.stack_name,
        "host": record.host,
        "cwd": record.cwd,
        "createdAt": record.created_at,
        "manifest": record.manifest_path,
        "labels": labels(record),
    }
    try:
        name, ports = registry_index.cached(record.manifest_path, "manifest", _container)
    except (OSError, manifest_contract.ManifestError):
        return expanded
    expanded["container"] = name
    expanded["ports"] = [dict(mapping) for mapping in ports]
    return expanded


def page(
    sessions: SessionsLike,
    tenant: str | None = None,
    label: Sequence[str] = (),
    offset: int = 0,
    limit: int = 100,
) -> Page:
    """Sessions of ``tenant`` (every one: None) with every label of ``label`` (``KEY`` or
    ``KEY=VALUE``), in stack name order; rows ``offset`` to ``offset + limit``."""
    problems = [
        f"{name}: {value!r} is not allowed (allowed: {allowed})"
        for name, value, allowed in (
            ("offset", offset, "an integer >= 0"),
            ("limit", limit, "an integer >= 1"),
        )
        if isinstance(value, bool) or not isinstance(value, int) or value < (name == "limit")
    ]
    if problems:
        raise InvalidInput("list", problems)
    found = [r for r in sessions.registry.all(tenant) if matches(labels(r), label)]
    return Page([row(r) for r in found[offset : offset + limit]], len(found), offset, limit)
