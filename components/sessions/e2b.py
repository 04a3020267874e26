"""Sandboxes as the public ``e2b`` SDKs see them (issue 30): the verbs behind the
E2B-compatible face (:mod:`dockyard.api.e2b`) and its routing (:mod:`dockyard.api.e2b_routing`),
over the sessions service.

A sandbox IS a dockyard session: created with :meth:`Sessions.create` from a request this
module builds (its template mapped to a backend, variant and profile by
:mod:`.e2b_templates`), destroyed with :meth:`Sessions.destroy`, paused and resumed with the
pause module. What E2B knows and dockyard does not — the template id, the metadata as
given, the deadline and the sandbox's access token — is one record per sandbox
(:mod:`.e2b_records`); the deadlines are enforced by :mod:`.e2b_deadlines`.

* Metadata: every pair is kept as given (for answers and list filters); a key that is also
  a valid label key becomes a label of the session (``docker inspect`` shows labels, so a
  value that looks like a credential is refused by the request's own rules).
* Environment variables: delivered as the session's SECRETS (files readable by the agent
  user, exported by the entrypoint; written into a claimed warm-pool member by one exec
  as the agent, read by the daemon at each process start), never as plain container environment:
  E2B users pass API keys there, and plain environment is visible in ``docker inspect``.
* Warm pools: a create takes a free member of the tenant's matching pool when there is
  one (:mod:`.warm`), else it creates cold.
* Timeout: the sandbox is destroyed at ``endAt`` by :func:`.e2b_deadlines.expire` (the
  server runs it in a loop; ``dockyard serve`` is what serves the SDKs), or paused there
  when it was created with ``autoPause`` (E2B's ``onTimeout: "pause"``). A paused sandbox
  has no deadline; connecting (which resumes) sets a new one, and so does the first sweep
  that finds it running again after any other wake (its timeout from then).
* Auto-resume (E2B's ``lifecycle.autoResume``, off by default as in E2B): a call routed
  to a sandbox created with it and paused through E2B wakes it once — the same audited
  wake on use as dockyard's exec and file calls (a ``resume`` whose detail says ``woken
  by e2b routed call …``) — and its clock starts again from then (:func:`reach`). Any
  other paused sandbox answers 409 until connect.
* The access token (``envdAccessToken``) lets the SDK reach the sandbox's ports through the
  server's routing without an API key (:func:`by_token`); the sandbox's daemon gets it as
  the secret ``DOCKYARD_ENVD_ACCESS_TOKEN`` and checks it on every call too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import json
import logging
import re
import secrets
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..capacity import connect
from ..config.names import MAX_SECRET_NAMES, RESERVED_LABEL_PREFIX
from ..config.values import ENV_NAME, ENV_NAME_ALLOWED, LABEL_KEY
from ..errors import Conflict, Failed, InvalidInput, shown
from . import e2b_records as records
from . import hibernate, warm
from .e2b_deadlines import clock_again
from .e2b_records import ENVD_VERSION as ENVD_VERSION  # what the daemon's tests read
from .e2b_records import TOKEN_SECRET as TOKEN_SECRET  # the face's and tests' name
from .e2b_records import Sandbox
from .e2b_records import forget as forget  # what Sessions.destroy calls
from .e2b_templates import template
from .pool import new_member_id
from .registry import Record, SessionNotFound
from .service import SessionsLike

log = logging.getLogger(__name__)

ENVD_PORT = 49983
"""The in-sandbox daemon's port the SDKs address (their ConnectionConfig.envd_port)."""
DEFAULT_TIMEOUT_S = 300
MAX_TIMEOUT_S = 24 * 3600
MAX_METADATA = 64
MAX_TEXT = 1024
MAX_METRICS_IDS = 100
"""The most sandbox ids one ``GET /sandboxes/metrics`` may name."""
METRICS_AT_ONCE = 8
"""Stats reads one ``GET /sandboxes/metrics`` makes at once."""
SANDBOX_ID = re.compile(r"[a-z0-9]{1,63}", re.ASCII)
"""A sandbox id this face makes: one DNS label (``<port>-<id>.<domain>`` host names)."""
TEMPLATE_LABEL = "e2b.template"


def timeout_seconds(value: Any, key: str = "timeout") -> int:
    if value is None:
        return DEFAULT_TIMEOUT_S
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_TIMEOUT_S:
        raise InvalidInput(
            key, [f"{key}: {value!r} is not allowed (allowed: whole seconds, 1-{MAX_TIMEOUT_S})"]
        )
    return value


def _strings(value: Any, key: str) -> dict[str, str]:
    """A mapping of strings (the values are never shown: they may be secrets)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidInput(key, [f"{key}: not a mapping of strings to strings"])
    if len(value) > MAX_METADATA or any(
        len(k) > MAX_TEXT or len(v) > MAX_TEXT for k, v in value.items()
    ):
        raise InvalidInput(
            key,
            [f"{key}: at most {MAX_METADATA} pairs of at most {MAX_TEXT} characters each"],
        )
    return dict(value)


def _env_problems(env: Mapping[str, str]) -> list[str]:
    """envVars become the session's secrets: names by the secrets' own rule (the cold
    path's request model, and a warm claim's secret files, need the same), at most 63
    (64 secrets with the access token), values valid text; values are never shown."""
    problems = []
    if len(env) > MAX_SECRET_NAMES - 1:
        problems.append(
            f"envVars: at most {MAX_SECRET_NAMES - 1} variables (allowed: {MAX_SECRET_NAMES} secrets "
            "with the sandbox's access token)"
        )
    for name, value in env.items():
        if name == TOKEN_SECRET:
            problems.append(f"envVars.{TOKEN_SECRET}: set by dockyard (allowed: any other name)")
        elif not ENV_NAME.fullmatch(name):
            problems.append(f"envVars: {shown(name)} is not allowed (allowed: {ENV_NAME_ALLOWED})")
        else:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problems.append(f"envVars.{name}: its value is not valid text (allowed: UTF-8)")
    return problems


# --- the verbs -------------------------------------------------------------------------------


def _lifecycle(body: Mapping[str, Any], problems: list[str]) -> tuple[bool, bool]:
    """(autoPause, autoResume) from the create body as the SDKs send E2B's ``lifecycle``
    (``autoPause``: a bool; ``autoResume``: ``{"enabled": bool}``); auto-resume only with
    ``onTimeout: "pause"``, as E2B allows it."""
    pause = body.get("autoPause")
    if pause is not None and not isinstance(pause, bool):
        problems.append(f"autoPause: {shown(pause)} is not a boolean (allowed: true, false)")
        pause = False
    resume = body.get("autoResume")
    if isinstance(resume, Mapping):
        resume = resume.get("enabled")
    if resume is not None and not isinstance(resume, bool):
        problems.append(
            f'autoResume: {shown(resume)} is not allowed (allowed: {{"enabled": true|false}})'
        )
        resume = False
    if resume and not pause:
        problems.append(
            'autoResume: enabled only with onTimeout "pause" (autoPause: true), as E2B allows it'
        )
    return bool(pause), bool(resume)


def create(sessions: Any, body: Mapping[str, Any], tenant: str | None) -> Sandbox:
    """A new sandbox for ``tenant`` from the SDK's create body (``templateID``, ``timeout``,
    ``metadata``, ``envVars``); ``sessions``: :class:`dockyard.sessions.Sessions`."""
    chosen = template(body.get("templateID"))
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, check in (
        ("timeout", timeout_seconds),
        ("metadata", _strings),
        ("envVars", _strings),
    ):
        try:
            values[key] = check(body.get(key), key)
        except InvalidInput as error:
            problems.extend(error.problems)
    lifecycle = _lifecycle(body, problems)
    problems.extend(_env_problems(values.get("envVars") or {}))
    if problems:
        raise InvalidInput("sandbox", problems)
    metadata: dict[str, str] = values["metadata"]
    labels = {
        k: v
        for k, v in metadata.items()
        if LABEL_KEY.fullmatch(k) and not k.startswith(RESERVED_LABEL_PREFIX)
    }
    labels[TEMPLATE_LABEL] = str(body["templateID"]).split(":", 1)[0]
    started = records.utc_now()
    claimed = warm.claim(sessions, tenant, chosen.backend, chosen.variant, chosen.profile)
    record: Record | None = None
    if claimed is not None:
        try:
            record = _bound(sessions, claimed.member, tenant, labels, values["envVars"])
            sandbox_id, token = claimed.member, claimed.token
        except Exception as error:  # the member is destroyed: this create goes on cold
            log.warning("warm pool member %s not usable, creating cold: %s", claimed.member, error)
    if record is None:
        sandbox_id = new_member_id()
        token = secrets.token_urlsafe(24)
        env: dict[str, str] = {**values["envVars"], TOKEN_SECRET: token}
        environment = {
            "backend": chosen.backend,
            "variant": chosen.variant,
            "profile": chosen.profile,
        }
        sessions.create(
            records.request_of(sessions, sandbox_id, tenant, environment, labels, list(env)), env
        )
        record = sessions.registry.find(sandbox_id, tenant)
    sandbox = Sandbox(
        sandboxId=sandbox_id,
        tenant=record.tenant,
        templateID=str(body["templateID"]),
        startedAt=records.iso(started),
        endAt=records.iso(started + dt.timedelta(seconds=values["timeout"])),
        timeout=values["timeout"],
        metadata=metadata,
        envdAccessToken=token,
        autoPause=lifecycle[0],
        autoResume=lifecycle[1],
    )
    try:
        records.save(sessions, record.stack_name, sandbox)
    except BaseException:
        with contextlib.suppress(Exception):
            sessions.destroy(sandbox_id, tenant, final_backup=False)
        raise
    return sandbox


def _bound(
    sessions: Any,
    sandbox_id: str,
    tenant: str | None,
    labels: Mapping[str, str],
    env: Mapping[str, str],
) -> Record:
    """A claimed member's record with the create's labels (the metadata that are labels
    and the template: what lists and filters read; the container keeps the labels it was
    made with, a refresh re-creates it with these) and its environment variables, which
    are delivered as secret files into the running member (the daemon reads them at each
    process start, as the entrypoint exported its first ones). Any failure destroys the
    member (nothing half-bound is handed out) and raises."""
    try:
        record = sessions.registry.find(sandbox_id, tenant)
        request = {
            **record.request,
            "labels": {**record.request.get("labels", {}), **labels},
            "secrets": sorted({*record.request.get("secrets", []), *env}),
        }
        if env:
            warm.deliver_secrets(sessions, record, env)
        sessions.registry.save(replace(record, request=request))
    except BaseException:
        with contextlib.suppress(Exception):
            sessions.destroy(sandbox_id, tenant, final_backup=False)
        raise
    return sessions.registry.find(sandbox_id, tenant)


def get(sessions: SessionsLike, sandbox_id: str, tenant: str | None) -> Sandbox:
    return records.found(sessions, sandbox_id, tenant)[1]


def detail(
    sessions: SessionsLike, sandbox_id: str, tenant: str | None, domain: str | None
) -> dict[str, Any]:
    record, sandbox = records.found(sessions, sandbox_id, tenant)
    return sandbox.detail(
        records.state_of(record, sessions), domain, records.limits_of(sessions, record)
    )


def page(
    sessions: SessionsLike,
    tenant: str | None,
    domain: str | None,
    metadata: Mapping[str, str] | None = None,
    states: Iterable[str] | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """The tenant's sandboxes (``tenant`` None: an admin's, every tenant's), those whose
    metadata holds every pair of ``metadata`` and whose state is one of ``states``, oldest
    first: rows ``offset`` to ``offset + limit`` (``limit`` None: all) and whether more
    follow. Filtered by tenant and metadata and sorted from the E2B records (files) first; the
    engine (state) and the settings (limits) are asked for the page's rows only — and,
    with a state filter, for the rows up to the page's end."""
    wanted = set(states or ("running", "paused"))
    filtered = wanted != {"running", "paused"}
    candidates = []
    for record in sessions.registry.all(tenant):
        sandbox = records.load(sessions, record)
        if sandbox is None or sandbox.tenant != record.tenant:
            continue
        if any(sandbox.metadata.get(k) != v for k, v in (metadata or {}).items()):
            continue
        candidates.append((record, sandbox))
    candidates.sort(key=lambda pair: (pair[1].startedAt, pair[1].sandboxId))
    rows: list[dict[str, Any]] = []
    skipped = 0
    for record, sandbox in candidates:
        state = records.state_of(record, sessions) if filtered else None
        if state is not None and state not in wanted:
            continue
        if skipped < offset:
            skipped += 1
            continue
        if limit is not None and len(rows) >= limit:
            return rows, True
        state = state or records.state_of(record, sessions)
        rows.append(sandbox.detail(state, domain, records.limits_of(sessions, record)))
    return rows, False


def metrics(
    sessions: Any, sandbox_id: str, tenant: str | None, start: int | None, end: int | None
) -> list[dict[str, Any]]:
    """The SDKs' ``SandboxMetric`` list for ``[start, end]`` (unix seconds, either open):
    dockyard keeps no history, so one sample taken now — from the session's stats, the
    same figures as ``GET /api/sessions/{id}/stats`` — when now lies in the interval, else
    none. A paused sandbox is not woken for it: its sample has no use, its memory total
    is its memory limit (the engine gives no stats of a frozen container) and its disk
    figures are 0."""
    record, _ = records.found(sessions, sandbox_id, tenant)
    moment = records.utc_now()
    if (start is not None and moment.timestamp() < start) or (
        end is not None and moment.timestamp() >= end + 1
    ):
        return []
    return [_sample(sessions, record, moment)]


def metrics_of_many(
    sessions: Any, sandbox_ids: Iterable[str], tenant: str | None
) -> dict[str, dict[str, Any]]:
    """``GET /sandboxes/metrics``: one sample taken now of each RUNNING sandbox of the caller
    named in ``sandbox_ids``, by id. An id that names no sandbox of the caller (another
    tenant's, a plain session, a killed one) or a paused one is left out, as E2B answers
    only running sandboxes: which ids exist elsewhere is never told."""
    ids = list(dict.fromkeys(part.strip() for part in sandbox_ids if part.strip()))
    allowed = f"1 to {MAX_METRICS_IDS} sandbox ids, comma-separated"
    if not ids:
        raise InvalidInput("sandbox metrics", [f"sandbox_ids: empty (allowed: {allowed})"])
    if len(ids) > MAX_METRICS_IDS:
        raise InvalidInput("sandbox metrics", [f"sandbox_ids: {len(ids)} ids (allowed: {allowed})"])
    wanted = set(ids)
    candidates: dict[str, list[Record]] = {}
    for record in sessions.registry.all(tenant):
        if record.session_id in wanted:
            candidates.setdefault(record.session_id, []).append(record)
    moment = records.utc_now()

    def running_sample(sandbox_id: str) -> dict[str, Any] | None:
        for record in candidates.get(sandbox_id, []):
            sandbox = records.load(sessions, record)
            if sandbox is None or sandbox.tenant != record.tenant:
                continue  # a plain session that happens to share the id
            if records.state_of(record, sessions) != "running":
                return None
            with contextlib.suppress(Conflict):  # removed since: not running
                return _sample(sessions, record, moment)
            return None
        return None

    # The engine takes a second or two for one stats read: a few at once.
    with ThreadPoolExecutor(max_workers=METRICS_AT_ONCE) as pool:
        samples = list(pool.map(running_sample, ids))
    return {i: sample for i, sample in zip(ids, samples, strict=True) if sample is not None}


def _sample(sessions: Any, record: Record, moment: dt.datetime) -> dict[str, Any]:
    """The SDKs' ``SandboxMetric`` of ``record`` from the session's stats now."""
    figures = sessions.workspace(record.session_id, record.tenant).stats()
    memory = figures.get("memory") or {}
    cpu = figures.get("cpu") or {}
    disk = figures.get("disk") or {}
    limits = records.limits_of(sessions, record)
    cpus = limits.get("cpus") or cpu.get("onlineCpus") or 0
    limit_mb = int(limits.get("memory") or 0)
    return {
        "timestamp": records.iso(moment),
        "timestampUnix": int(moment.timestamp()),
        "cpuCount": max(1, round(float(cpus))) if cpus else 0,
        "cpuUsedPct": float(cpu.get("percent") or 0.0),
        "memUsed": int(memory.get("used") or 0),
        "memTotal": int(memory.get("limit") or limit_mb * 1024 * 1024),
        "memCache": 0,
        "diskUsed": int(disk.get("used") or 0),
        "diskTotal": int(disk.get("total") or 0),
    }


def kill(sessions: Any, sandbox_id: str, tenant: str | None) -> None:
    record, _ = records.found(sessions, sandbox_id, tenant)
    sessions.destroy(sandbox_id, record.tenant)
    records.path_of(sessions, record).unlink(missing_ok=True)


def set_timeout(sessions: SessionsLike, sandbox_id: str, tenant: str | None, timeout: Any) -> str:
    """The sandbox now ends ``timeout`` seconds from now (earlier or later than before);
    answers the new ``endAt``."""
    seconds = timeout_seconds(timeout)
    record, sandbox = records.found(sessions, sandbox_id, tenant)
    sandbox.timeout = seconds
    sandbox.endAt = records.iso(records.utc_now() + dt.timedelta(seconds=seconds))
    records.save(sessions, record.stack_name, sandbox)
    return sandbox.endAt


def pause(sessions: Any, sandbox_id: str, tenant: str | None) -> bool:
    """Freeze the sandbox (memory kept) and stop its clock; False: it already was paused."""
    record, sandbox = records.found(sessions, sandbox_id, tenant)
    state = sessions.pause(sandbox_id, record.tenant)
    sandbox.endAt = None
    records.save(sessions, record.stack_name, sandbox)
    return bool(state.changed)


def connect_to(sessions: Any, sandbox_id: str, tenant: str | None, timeout: Any) -> Sandbox:
    """Resume the sandbox if paused; its deadline becomes ``timeout`` seconds from now when
    that is later than the one it has (connecting never shortens a sandbox's life)."""
    seconds = timeout_seconds(timeout)
    record, sandbox = records.found(sessions, sandbox_id, tenant)
    if records.state_of(record, sessions) == "paused":
        sessions.resume(sandbox_id, record.tenant)
    wanted = records.utc_now() + dt.timedelta(seconds=seconds)
    if sandbox.endAt is None or records.parse_iso(sandbox.endAt) < wanted:
        sandbox.endAt = records.iso(wanted)
        sandbox.timeout = seconds
    records.save(sessions, record.stack_name, sandbox)
    return sandbox


# --- routing ---------------------------------------------------------------------------------


def by_token(sessions: SessionsLike, sandbox_id: str, token: str) -> Record | None:
    """The sandbox whose access token is ``token`` (compared in constant time), else None."""
    for record in sessions.registry.all():
        if record.session_id != sandbox_id:
            continue
        sandbox = records.load(sessions, record)
        if (
            sandbox is not None
            and sandbox.envdAccessToken
            and hmac.compare_digest(sandbox.envdAccessToken.encode(), token.encode())
        ):
            return record
    return None


def record_of(sessions: SessionsLike, sandbox_id: str, tenant: str | None) -> Record:
    return records.found(sessions, sandbox_id, tenant)[0]


WOKEN_BY = "e2b routed call"
"""What the audit's ``resume`` line says woke a sandbox for a routed call."""


def reach(sessions: SessionsLike, record: Record, by: str = WOKEN_BY) -> str:
    """:func:`address` of a sandbox the caller may reach (``record`` comes from the
    tenant-scoped or token lookup): one engine read when it runs. E2B's auto-resume: a
    sandbox created with ``autoResume`` and paused through E2B (no deadline: its pause,
    or its timeout with ``onTimeout: "pause"``) is woken once
    (:func:`.hibernate.wake_if_suspended`, never waiting for a snapshot or backup that
    holds it: :class:`.pause.Busy`; audited as a ``resume`` woken by ``by``, which starts
    with :data:`WOKEN_BY` and names the call and its caller) and its deadline restarts
    from now. Any other paused one (no autoResume, or paused by dockyard's pause,
    hibernate or idle monitor) answers :func:`address`'s 409 (connect first); a stopped or
    gone one is never woken."""
    try:
        return address(record)
    except Conflict:
        # Paused, hibernated, stopped — or woken by a call racing this one.
        sandbox = records.load(sessions, record)
        if sandbox is None or not sandbox.autoResume or sandbox.endAt is not None:
            raise
        woken = hibernate.wake_if_suspended(sessions, record, by, wait=False)
    sandbox = records.load(sessions, record)
    if woken and sandbox is not None and sandbox.endAt is None:
        clock_again(sessions, record, sandbox, records.utc_now())
    return address(record)


def address(record: Record) -> str:
    """The container's own address on its own network: where the server forwards a
    sandbox's port. Only that container is on that network, so no port reached there is
    another session's or the host's."""
    if record.host != "local":
        raise Failed(
            f"sandbox {record.session_id!r} runs on {record.host}: routing to a sandbox's "
            "ports reaches containers of the server's own engine only (see docs/e2b.md)"
        )
    import docker  # the SDK only when a call is routed

    gone = SessionNotFound(f"sandbox {record.session_id!r} not found (it was removed)")
    try:
        manifest = json.loads(Path(record.manifest_path).read_text(encoding="utf-8"))
        container = str(manifest["container"]["id"])
    except (OSError, ValueError, KeyError, TypeError):
        raise gone from None  # destroyed while this call was on its way
    client = connect(None)
    try:
        inspected = client.api.inspect_container(container)
    except docker.errors.NotFound:
        raise gone from None
    except docker.errors.DockerException as error:
        raise Failed(f"sandbox {record.session_id!r}: its engine did not answer: {error}") from None
    finally:
        client.close()
    state = inspected.get("State") or {}
    if state.get("Paused"):
        raise Conflict(f"sandbox {record.session_id!r} is paused: connect to it (resume) first")
    if not state.get("Running"):
        raise Conflict(f"sandbox {record.session_id!r} is not running ({state.get('Status')})")
    networks = (inspected.get("NetworkSettings") or {}).get("Networks") or {}
    own = networks.get(record.environment_id) or {}
    ip = own.get("IPAddress")
    if not ip:
        raise Failed(
            f"sandbox {record.session_id!r} has no address on its own network "
            f"{record.environment_id!r}: its ports cannot be routed to"
        )
    return str(ip)
