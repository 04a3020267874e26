"""Names over (tenant, session) are one-to-one (issue 25 items 10 and 6).

Stack names, registry keys, SSH CA directories and backup repositories come from the
session's stack (``<tenant or 'sessions'>``) and id; engine names from
:func:`dockyard.contract.session_environment_id`. No tenant may take a reserved name, no
separator may be ambiguous, and sessions created before the change keep their names.
"""

from __future__ import annotations

import itertools
import json
import random
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from dockyard import contract
from dockyard.backup.model import Repo, Settings
from dockyard.config import ConfigError
from dockyard.config.values import TENANT
from dockyard.contract import (
    NAMING_CURRENT,
    NAMING_LEGACY,
    SESSION_ID,
    environment_id,
    session_environment_id,
    volume_engine_name,
)
from dockyard.sessions import Sessions, registry
from dockyard.sessions import backups as session_backups
from dockyard.sessions.request import plan
from dockyard.sessions.settings import paths

CWD = "/srv/app"
ROLES = ("workspace", "config", "checkpoints", "home")
DERIVED = ("", "-broker", "-broker-uplink")
"""Suffixes of the environment id for its container and networks (the broker's)."""

# The issue's examples and the shapes that would alias under a careless separator.
TENANTS = ["acme", "acme-x", "x", "t", "sessions-acme", "a-b-c", "a-b", "0", "z" * 32, "t-acme"]
SESSIONS = [
    "web", "x-web", "x.web", "acme.web", "t.acme.web", "acme-x.web", "x-web-broker", "web-broker",
    "a", "0.9_z", "w" * 63, "b-c-web", "c-web", "sessions-web", "x._web", "web-vol-npm-cache",
]  # fmt: skip


def _random_pairs(count: int, seed: int = 25) -> list[tuple[str | None, str]]:
    chooser = random.Random(seed)  # noqa: S311 - test data, not a secret
    tenant_chars = string.ascii_lowercase[:4] + "0-"
    session_chars = "abt0.-_"
    pairs: list[tuple[str | None, str]] = []
    while len(pairs) < count:
        tenant = "".join(chooser.choice(tenant_chars) for _ in range(chooser.randint(1, 6)))
        session = "".join(chooser.choice(session_chars) for _ in range(chooser.randint(1, 8)))
        # A tenant has no '--' (its secret variables stay one-to-one: test_sessions).
        if (
            SESSION_ID.fullmatch(session)
            and (tenant_ok := TENANT.fullmatch(tenant))
            and "--" not in tenant
        ):
            pairs.append((tenant if tenant_ok and chooser.random() < 0.8 else None, session))
    return pairs


def _pairs() -> list[tuple[str | None, str]]:
    fixed = [(t, s) for t in [*TENANTS, None] for s in SESSIONS]
    # Every way of cutting dashed words into tenant + session (the issue's acme-x / x-web).
    for word in ("acme-x-web", "a-b-c-d", "sessions-x-web", "t-a-b"):
        parts = word.split("-")
        fixed += [("-".join(parts[:i]), "-".join(parts[i:])) for i in range(1, len(parts))]
    # A reserved tenant cannot be created (test_a_reserved_tenant_is_refused_...).
    pairs = {p for p in fixed + _random_pairs(3000) if p[0] not in contract.RESERVED_TENANTS}
    return sorted(pairs, key=str)


PAIRS = _pairs()
SETTINGS_STUB = Settings(repository="s3:storage.example/bucket/dockyard")


def _engine_names(tenant: str | None, session: str, naming: str) -> dict[str, set[str]]:
    """Every engine name a session of this pair uses, by kind of engine object."""
    prefix = session_environment_id(tenant, session, naming)
    volumes = {f"{prefix}-{role}" for role in ROLES}
    for name in ("npm-cache", "vol-cache", "workspace", "cache"):
        volumes.add(volume_engine_name(tenant, prefix, name, False, naming))
    return {
        "container": {prefix + suffix for suffix in DERIVED[:2]},
        "network": {prefix + suffix for suffix in DERIVED},
        "volume": volumes,
    }


def test_the_issues_examples_no_longer_alias() -> None:
    first = session_environment_id("acme-x", "web", NAMING_CURRENT)
    second = session_environment_id("acme", "x-web", NAMING_CURRENT)
    assert (first, second) == ("dockyard-t.acme-x.web", "dockyard-t.acme.x-web")
    # The untenanted namespace keeps its names, so an existing session `web` keeps its own.
    assert session_environment_id(None, "web", NAMING_CURRENT) == "dockyard-sessions-web"
    assert session_environment_id(None, "web", NAMING_LEGACY) == "dockyard-sessions-web"
    # v1, what tenants' sessions had before: the aliasing the issue measured.
    assert session_environment_id("acme-x", "web", NAMING_LEGACY) == session_environment_id(
        "acme", "x-web", NAMING_LEGACY
    )


def test_environment_ids_are_one_to_one_over_tenant_and_session() -> None:
    seen: dict[str, tuple[str | None, str]] = {}
    clashes = []
    for pair in PAIRS:
        name = session_environment_id(*pair, NAMING_CURRENT)
        if seen.setdefault(name, pair) != pair:
            clashes.append((seen[name], pair, name))
    assert len(PAIRS) > 2500
    assert clashes == []


def test_engine_names_of_two_namespaces_never_meet() -> None:
    """Containers, networks and volumes (fixed roles, a session's own named volumes, the
    broker's) of sessions in different namespaces never share a name, in v2 and against
    every v1 name of another pair (sessions created before the change keep those)."""
    owner: dict[tuple[str, str], tuple[str | None, str, str]] = {}
    clashes = []
    for tenant, session in PAIRS:
        for naming in (NAMING_CURRENT, NAMING_LEGACY):
            for kind, names in _engine_names(tenant, session, naming).items():
                for name in names:
                    first = owner.setdefault((kind, name), (tenant, session, naming))
                    if first[0] != tenant and not (
                        first[2] == naming == NAMING_LEGACY  # v1 among v1: the old aliasing
                        or _untenanted_against_old_sessions_tenant(first, (tenant, naming))
                    ):
                        clashes.append((kind, name, first, (tenant, session, naming)))
    assert clashes == []


def test_every_engine_name_of_a_new_session_belongs_to_one_session() -> None:
    """v2, session ids as create allows them (not ending in -broker, -broker-uplink, .host,
    not holding -vol-): no name of any kind is two sessions', in one namespace or two."""
    allowed = [p for p in PAIRS if not contract.session_id_reserved(p[1])]
    assert len(allowed) > 2000
    owner: dict[tuple[str, str], tuple[str | None, str]] = {}
    clashes = []
    for pair in allowed:
        for kind, names in _engine_names(*pair, NAMING_CURRENT).items():
            for name in names:
                if owner.setdefault((kind, name), pair) != pair:
                    clashes.append((kind, name, owner[(kind, name)], pair))
    assert clashes == []
    # The ids create refuses are the ones that would meet another session's names.
    assert "dockyard-sessions-web-broker" in _engine_names(None, "web", NAMING_CURRENT)["network"]
    assert (
        "dockyard-sessions-web-broker"
        in _engine_names(None, "web-broker", NAMING_CURRENT)["network"]
    )
    for refused in ("web-broker", "web-broker-uplink", "web.host", "web-vol-a"):
        with pytest.raises(ConfigError) as info:
            plan(_request("acme", refused), {})
        (problem,) = info.value.problems
        assert problem.startswith(f"request.sessionId: {refused!r} is not allowed (allowed: a")
        assert "'-broker', '-broker-uplink', '.host' nor contain '-vol-'" in problem
        # A session created before keeps working: v1 plans do not apply the rule.
        assert plan(_request("acme", refused), {}, naming=NAMING_LEGACY).session_id == refused


def _untenanted_against_old_sessions_tenant(
    first: tuple[str | None, str, str], second: tuple[str | None, str]
) -> bool:
    """Untenanted sessions keep their names (``dockyard-sessions-<id>``, in v1 and v2), so
    a tenant called ``sessions-…`` whose sessions were created before the change (v1) can
    hold a name a new untenanted session would take: create refuses that one from the
    registry (test_a_new_session_never_takes_an_old_sessions_engine_names)."""
    ends = [(first[0], first[2]), second]
    old = [t for t, naming in ends if naming == NAMING_LEGACY and (t or "").startswith("sessions-")]
    return bool(old) and None in (first[0], second[0])


def test_shared_volumes_stay_inside_their_namespace() -> None:
    shared = {
        (tenant, volume_engine_name(tenant, "-", "npm-cache", True, NAMING_CURRENT))
        for tenant in [*TENANTS, None]
    }
    names = [name for _, name in shared]
    assert len(set(names)) == len(names)
    session_names = {
        name
        for tenant, session in PAIRS
        for naming in (NAMING_CURRENT, NAMING_LEGACY)
        for name in _engine_names(tenant, session, naming)["volume"]
    }
    assert session_names.isdisjoint(names)
    assert volume_engine_name("acme", "x", "npm-cache", True, NAMING_CURRENT) == (
        "dockyard-t.acme._npm-cache"
    )
    assert volume_engine_name(None, "x", "npm-cache", True, NAMING_CURRENT) == (
        "dockyard-sessions._npm-cache"
    )


def _request(tenant: str | None, session: str, **extra: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"sessionId": session, "cwd": CWD, "container": {"image": "x:1"}}
    return {**request, **({"tenant": tenant} if tenant else {}), **extra}


def test_stack_names_registry_keys_ssh_cas_and_backup_repositories_are_one_to_one() -> None:
    """One plan per pair: the Pulumi stack (= registry key), the SSH CA directory with the
    session's key id, and the backup repository path differ for every pair."""
    allowed = [p for p in PAIRS if not contract.session_id_reserved(p[1])]
    sample = allowed[:: len(allowed) // 600]
    stacks, cas, repositories, ids = {}, {}, {}, {}
    for tenant, session in sample:
        planned = plan(_request(tenant, session), {})
        stacks.setdefault(planned.stack_name, (tenant, session))
        cas.setdefault((planned.config.stack, session), (tenant, session))
        repo = Repo(stack=planned.config.stack, session=session)
        where = (repo.url(SETTINGS_STUB), str(repo.password_file(SETTINGS_STUB)))
        repositories.setdefault(where, (tenant, session))
        ids.setdefault(planned.environment_id, (tenant, session))
    assert len(stacks) == len(cas) == len(repositories) == len(ids) == len(sample)


@pytest.mark.parametrize(
    "where",
    [
        lambda tenant: (_request(tenant, "web"), {}),
        lambda tenant: (_request(None, "web"), {"quotas": {"tenants": {tenant: {"cpus": 1}}}}),
    ],
)
def test_a_reserved_tenant_is_refused_with_key_value_and_what_is_allowed(where: Any) -> None:
    for reserved in contract.RESERVED_TENANTS:
        request, settings = where(reserved)
        with pytest.raises(ConfigError) as info:
            plan(request, settings)
        (problem,) = info.value.problems
        key = problem.split(": ")[0]
        assert key in ("request.tenant", "quotas.tenants.sessions.[key] in host settings")
        # The value is named where it is a value (a mapping key is named by its length).
        assert f"{reserved!r} is not allowed" in problem or "[key]" in key
        assert "other than 'sessions' (reserved: the namespace of sessions without" in problem


# --- sessions created before the change (the migration) ----------------------------------------


class NamingDriver:
    """Records the engine names each call's plan carries."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, dict[str, str]]] = []

    def _note(self, verb: str, plan_: Any) -> None:
        env = plan_.environment
        volumes = {
            v.source: plan_.config.volume_name_of(env, v.source)
            for v in env.volumes
            if not v.is_bind
        }
        self.calls.append((verb, plan_.stack_name, plan_.environment_id, volumes))

    def up(self, plan_: Any, secrets: Mapping[str, str], progress: Any) -> dict[str, Any]:
        self._note("up", plan_)
        return {
            "version": 1,
            "environmentId": plan_.environment_id,
            "sessionId": plan_.session_id,
            "backend": "claude",
            "createdAt": "2026-12-06T10:00:00.000Z",
            "cwd": plan_.config.cwd,
            "image": "x:1",
            "container": {
                "id": "a" * 64,
                "name": plan_.environment_id,
                "cwd": "/workspace",
                "portMappings": [],
            },
            "requested": {"ports": [], "volumes": [], "env": []},
        }

    def recreate(self, plan_: Any, secrets: Mapping[str, str], progress: Any) -> dict[str, Any]:
        self._note("recreate", plan_)
        return self.up(plan_, secrets, progress)

    def destroy(self, plan_: Any, progress: Any) -> None:
        self._note("destroy", plan_)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("DOCKYARD_STATE_DIR", "DOCKYARD_CONFIG", "DOCKYARD_AUDIT_LOG", "DOCKYARD_DRIVER"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_a_session_created_before_the_change_keeps_its_engine_names(home: Path) -> None:
    """A registry record written before issue 25 has no ``naming``: it reads as v1, and
    refresh, a converging create and destroy use the names its objects have on the engine.
    A new session of the same tenant gets v2 names."""
    driver = NamingDriver()
    sessions = Sessions(paths(), driver)
    old_request = _request("acme", "x-web", container={"image": "x:1", "volumes": ["npm:/n"]})
    sessions.create(old_request)
    record_file = sessions.registry.directory / "acme.x-web.json"
    old = json.loads(record_file.read_text())
    assert old["naming"] == NAMING_CURRENT
    del old["naming"]  # what a record written before the change holds
    record_file.write_text(json.dumps(old))
    assert sessions.registry.find("x-web", "acme").naming == NAMING_LEGACY
    driver.calls.clear()

    sessions.refresh("x-web", "acme")
    sessions.create(old_request)  # converge: no second set of objects under new names
    sessions.destroy("x-web", "acme")
    legacy = ("acme.x-web", "dockyard-acme-x-web", {"npm": "npm"})
    assert [c[1:] for c in driver.calls] == [legacy] * 4, driver.calls
    assert [c[0] for c in driver.calls] == ["recreate", "up", "up", "destroy"]

    driver.calls.clear()
    sessions.create(_request("acme-x", "web", container={"image": "x:1", "volumes": ["npm:/n"]}))
    assert driver.calls == [
        ("up", "acme-x.web", "dockyard-t.acme-x.web", {"npm": "dockyard-t.acme-x.web-vol-npm"})
    ]
    assert sessions.registry.find("web", "acme-x").naming == NAMING_CURRENT


def test_records_without_naming_read_as_v1_and_unknown_fields_do_not_load(tmp_path: Path) -> None:
    old = {
        "session_id": "web",
        "tenant": None,
        "stack_name": "sessions.web",
        "cwd": CWD,
        "manifest_path": f"{CWD}/.companion/web.json",
        "host": "local",
        "request": _request(None, "web"),
        "created_at": "2026-11-01T00:00:00Z",
    }
    (tmp_path / "sessions.web.json").write_text(json.dumps(old))
    (record,) = registry.Registry(tmp_path).all()
    assert record.naming == NAMING_LEGACY
    assert environment_id("sessions", "web") == "dockyard-sessions-web"


def test_every_naming_is_known() -> None:
    assert set(contract.NAMINGS) == {NAMING_LEGACY, NAMING_CURRENT}
    assert list(itertools.islice(PAIRS, 1))


def test_a_new_session_never_takes_an_old_sessions_engine_names(home: Path) -> None:
    """Untenanted names did not change, so a tenant ``sessions-acme``'s session ``web``
    created before the change holds ``dockyard-sessions-acme-web``: a new untenanted
    ``acme-web`` is refused before the driver runs (nothing adopted, nothing orphaned)."""
    driver = NamingDriver()
    sessions = Sessions(paths(), driver)
    sessions.create(_request("sessions-acme", "web"))
    record_file = sessions.registry.directory / "sessions-acme.web.json"
    old = json.loads(record_file.read_text())
    del old["naming"]
    record_file.write_text(json.dumps(old))
    driver.calls.clear()
    with pytest.raises(registry.NamesTaken) as info:
        sessions.create(_request(None, "acme-web"))
    assert str(info.value).startswith(
        "engine names 'dockyard-sessions-acme-web' belong to session 'web' of tenant sessions-acme"
    )
    assert driver.calls == []
    assert [r.stack_name for r in sessions.registry.all()] == ["sessions-acme.web"]
    sessions.create(_request(None, "acme-web2"))  # another id is fine
    assert [c[2] for c in driver.calls] == ["dockyard-sessions-acme-web2"]


def test_an_untenanted_session_stays_reachable_beside_a_tenants_of_the_same_id(
    home: Path,
) -> None:
    """`dockyard down web` names the untenanted `web`, even when tenant acme has a `web`
    too (before: "exists for several tenants", and the untenanted one had no name)."""
    driver = NamingDriver()
    sessions = Sessions(paths(), driver)
    sessions.create(_request(None, "web"))
    sessions.create(_request("acme", "web"))
    assert sessions.registry.find("web").stack_name == "sessions.web"
    assert sessions.registry.find("web", "acme").stack_name == "acme.web"
    driver.calls.clear()
    sessions.destroy("web")
    assert [c[:3] for c in driver.calls] == [("destroy", "sessions.web", "dockyard-sessions-web")]
    assert [r.stack_name for r in sessions.registry.all()] == ["acme.web"]


def test_a_v1_sessions_backups_are_found_by_its_own_names(home: Path) -> None:
    """Backups of a session created before the change target its v1 objects, even when its
    id is one a new session may no longer take (e.g. it ends in -broker)."""
    sessions = Sessions(paths(), NamingDriver())
    sessions.create(_request("acme", "x-web", container={"image": "x:1"}))
    record_file = sessions.registry.directory / "acme.x-web.json"
    old = json.loads(record_file.read_text())
    del old["naming"]
    record_file.write_text(json.dumps(old))
    target = session_backups.target(sessions, "x-web", "acme")
    assert target.config.naming == NAMING_LEGACY
