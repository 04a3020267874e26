"""Sessions from an application: one Pulumi stack per session.

``create(request)`` validates a request (the reference app's shape plus dockyard's own
keys) on top of the host settings, checks the host's quotas, and applies the same
program as ``__main__.py`` to a stack of its own, so sessions created at once never wait
on one stack's lock. Every lifecycle action is written to the audit trail.

    from dockyard import sessions
    manifest = sessions.create({"sessionId": "s1", "cwd": "/srv/app", "backend": "claude",
                                "container": {"ports": [3000]}, "secrets": ["ANTHROPIC_API_KEY"]})

Secret values never travel in the request: ``create(request, secrets={...})`` or the
caller's environment supplies them (``NAME``; for a tenant's session only
``DOCKYARD_TENANT_<TENANT>__NAME``, so one tenant never gets another's keys).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import manifest as manifest_contract
from ..capacity import connect
from ..config import ConfigError, from_host_settings
from ..contract import NAMING_CURRENT
from . import (
    audit,
    backups,
    dataplane,
    driver,
    e2b,
    listing,
    located,
    ownership,
    quotas,
    registry,
    warm,
)
from . import hibernate as hibernating
from . import pause as pausing
from . import snapshots as snapshotting
from .request import SessionPlan, plan
from .settings import IMAGE_RECORD, Paths, load_settings, paths, usable_state

__all__ = [
    "ConfigError",
    "Sessions",
    "create",
    "destroy",
    "get",
    "list",
    "refresh",
]

SessionNotFound = registry.SessionNotFound
QuotaError = quotas.QuotaError
DriverError = driver.DriverError
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


TENANT_SECRET_PREFIX = "DOCKYARD_TENANT_"  # noqa: S105 - a variable name prefix, not a value


def secret_variable(name: str, tenant: str | None) -> str:
    """The environment variable a secret is read from when not passed explicitly: ``NAME``
    for an untenanted session, ``DOCKYARD_TENANT_<TENANT>__NAME`` for a tenant's
    (``acme-co`` -> ``DOCKYARD_TENANT_ACME_CO__GITHUB_TOKEN``). One-to-one over (tenant,
    name): a tenant has no '_' and no '--', so the first '__' ends it; and a tenant can
    never name a variable outside its own prefix (tenant ``aws`` asking for
    ``SECRET_ACCESS_KEY`` does not read the server's ``AWS_SECRET_ACCESS_KEY``)."""
    if not tenant:
        return name
    return f"{TENANT_SECRET_PREFIX}{tenant.upper().replace('-', '_')}__{name}"


@dataclass
class Sessions:
    """The API bound to one machine's paths and driver (module functions use a default)."""

    where: Paths
    engine: driver.Driver

    @classmethod
    def default(cls) -> Sessions:
        where = usable_state(paths())
        return cls(where, driver.load(where))

    # --- helpers -------------------------------------------------------------------------

    @property
    def registry(self) -> registry.Registry:
        return registry.Registry(self.where.index)

    def _secrets(
        self, request: Mapping[str, Any], given: Mapping[str, str] | None
    ) -> dict[str, str]:
        names = request.get("secrets") if isinstance(request, Mapping) else None
        tenant = request.get("tenant") if isinstance(request, Mapping) else None
        values: dict[str, str] = {}
        for name in names if isinstance(names, builtins.list) else []:
            if not isinstance(name, str):
                continue
            if given is not None and name in given:
                values[name] = given[name]
                continue
            variable = secret_variable(name, tenant if isinstance(tenant, str) else None)
            if os.environ.get(variable):
                values[name] = os.environ[variable]
        return values

    def _with_image(self, request: Mapping[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
        """Settings with the host's built image when neither side names one."""
        container = request.get("container") if isinstance(request, Mapping) else None
        asked = isinstance(container, Mapping) and container.get("image")
        image = settings.get("image")
        if asked or (isinstance(image, Mapping) and image.get("ref")):
            return settings
        record = self.where.state / IMAGE_RECORD
        if not record.is_file():
            raise ConfigError(
                str(request.get("sessionId", "request")),
                [
                    "request.container.image: missing (allowed: an image reference; or set "
                    "image.ref in the host settings; or build the core image once on this "
                    "host with `dockyard image build`)"
                ],
            )
        built = json.loads(record.read_text(encoding="utf-8"))
        return {**settings, "image": {**(image or {}), "ref": built["imageRef"]}}

    def plan(
        self,
        request: Mapping[str, Any],
        secrets: Mapping[str, str] | None = None,
        naming: str = NAMING_CURRENT,
    ) -> tuple[SessionPlan, dict[str, str]]:
        """Validate without creating anything (what ``dockyard validate`` runs); ``naming``:
        the engine names, v2 for a new session, its record's for an existing one."""
        settings = load_settings(self.where)
        values = self._secrets(request, secrets)
        try:
            settings = self._with_image(request, settings)
            first: list[str] = []
        except ConfigError as error:  # listed with the request's other problems
            first = error.problems
        tenant = request.get("tenant") if isinstance(request, Mapping) else None
        hint = functools.partial(_session_secret_hint, tenant=tenant)
        planned = plan(
            request,
            settings,
            secret_names=set(values),
            secret_hint=hint,
            naming=naming,
            problems=first,
            settings_name=(
                f"host settings {self.where.config_file}"
                if self.where.config_file
                else "host settings"
            ),
        )
        return planned, values

    def _record(self, session: str, tenant: str | None) -> registry.Record:
        return self.registry.find(session, tenant)

    def _audit(self, action: str, **fields: Any) -> Any:
        return audit.recorded(self.where.audit_log, action, **fields)

    @contextlib.contextmanager
    def _audited(self, action: str, session: str, tenant: str | None) -> Iterator[registry.Record]:
        """``action`` on an existing session, in the audit trail with its record's tenant,
        host and stack; yields the record."""
        record = self._record(session, tenant)
        with self._audit(
            action,
            session=session,
            tenant=record.tenant,
            host=record.host,
            stack=record.stack_name,
        ):
            yield record

    # --- lifecycle -----------------------------------------------------------------------

    def create(
        self,
        request: Mapping[str, Any],
        secrets: Mapping[str, str] | None = None,
        progress: Progress = _quiet,
        *,
        pool_member: bool = False,
    ) -> manifest_contract.Manifest:
        """Create the session, or converge it if it exists (no duplicate container).
        A failed first create leaves nothing behind and raises with the reason.
        ``pool_member``: a warm pool's refill making a member (:mod:`.warm`): audited as
        ``pool-make`` (no session event: the member is nobody's session until claimed)."""
        fields = {
            "session": request.get("sessionId") if isinstance(request, Mapping) else None,
            "tenant": request.get("tenant") if isinstance(request, Mapping) else None,
        }
        audited = (
            self._audit("pool-make", **fields) if pool_member else self._audit("create", **fields)
        )
        with audited as entry:
            # Converging an existing session keeps the engine names it was created with.
            existing = [
                r
                for r in self.registry.all()
                if (r.session_id, r.tenant) == (fields["session"], fields["tenant"] or None)
            ]
            existed = bool(existing)
            try:
                session_plan, values = self.plan(
                    request, secrets, naming=existing[0].naming if existed else NAMING_CURRENT
                )
            except ConfigError as error:
                entry["detail"] = "invalid request"
                raise error from None
            host = session_plan.config.docker_host or "local"
            entry.update(host=host, stack=session_plan.stack_name)
            if not existed and not pool_member and warm.store(self).knows(session_plan.session_id):
                # A member's id (free, being made or claimed): taking it would converge the
                # member's stack with this request behind the pool's back.
                entry["detail"] = "a warm pool member's id"
                raise registry.NamesTaken(
                    f"session id {session_plan.session_id!r} is taken by this host's warm pool "
                    "(allowed: another session id)"
                )
            if not existed:
                try:
                    self.registry.check_names_free(
                        session_plan.stack_name, session_plan.environment_id
                    )
                except registry.NamesTaken as error:
                    entry["detail"] = str(error)
                    raise
            with self._reserved(session_plan, host, entry):
                if not existed:
                    try:
                        self._check_engine_names(session_plan)
                    except registry.NamesTaken as error:
                        entry["detail"] = str(error)
                        raise
                try:
                    with driver.reported("create", session_plan.stack_name):
                        result = self.engine.up(session_plan, values, progress)
                except BaseException:
                    if not existed:
                        with contextlib.suppress(Exception):
                            self.engine.destroy(session_plan, progress)
                    raise
            manifest_contract.validate(result, f"session {session_plan.session_id}")
            self.registry.save(
                registry.Record(
                    session_id=session_plan.session_id,
                    tenant=session_plan.tenant,
                    stack_name=session_plan.stack_name,
                    cwd=session_plan.config.cwd,
                    manifest_path=session_plan.manifest_path,
                    host=host,
                    request=json.loads(json.dumps(request, default=str)),
                    created_at=str(result["createdAt"]),
                    naming=session_plan.config.naming,
                )
            )
            return result  # type: ignore[return-value]

    def _check_engine_names(self, session_plan: SessionPlan) -> None:
        """Refuse a first create whose engine names hold another's objects (ownership)."""
        if session_plan.config.backend != "docker":
            return
        import docker  # the SDK only when a create runs (start-up of `dockyard ls`)

        try:
            client = connect(session_plan.config.docker_host or None)
        except docker.errors.DockerException:
            return  # no engine to ask: the driver's create reports it
        try:
            ownership.check(session_plan, client)
        finally:
            client.close()

    @contextlib.contextmanager
    def _reserved(self, session_plan: SessionPlan, host: str, entry: dict[str, Any]) -> Any:
        caps = session_plan.config.quotas
        if (
            all(getattr(caps, n) is None for n in ("environments", "cpus", "memory"))
            and not caps.tenants
        ):
            yield
            return
        import docker

        where = session_plan.config.docker_host or os.environ.get("DOCKER_HOST") or "local"
        unreachable = (
            f"the Docker engine ({where}) cannot be reached to count quota use; start it, "
            "or set dockerHost in the host settings (or DOCKER_HOST) to a running engine"
        )
        try:
            client = connect(session_plan.config.docker_host or None)
        except docker.errors.DockerException:
            raise driver.DriverError(unreachable) from None
        try:
            limits = session_plan.config.limits_of(session_plan.environment)
            request = quotas.Request(
                host=host,
                stack=session_plan.config.stack,
                session=session_plan.session_id,
                tenant=session_plan.tenant,
                cpus=limits.cpus,
                memory=limits.memory,
            )
            try:
                reservation = quotas.Reservations(self.where.reservations).reserve(
                    caps, client, request, session_plan.stack_name
                )
                reservation.__enter__()
            except quotas.QuotaError as error:
                entry["detail"] = str(error)
                raise
            except docker.errors.DockerException:
                raise driver.DriverError(unreachable) from None
            try:
                yield
            finally:
                reservation.__exit__(None, None, None)
        finally:
            client.close()

    def get(self, session: str, tenant: str | None = None) -> manifest_contract.Manifest:
        record = self._record(session, tenant)
        try:
            return manifest_contract.load(record.manifest_path)  # type: ignore[return-value]
        except (OSError, manifest_contract.ManifestError) as exc:
            raise SessionNotFound(
                f"session {session!r}: its manifest cannot be read ({exc})"
            ) from None

    def locate(
        self, session: str, tenant: str | None = None
    ) -> tuple[registry.Record, manifest_contract.Manifest]:
        """The session's record and manifest, the manifest checked against its engine:
        what attach, ssh and logs act on (:mod:`.located`)."""
        import docker  # the SDK only for verbs that reach an engine (start-up of `ls`)

        record = self._record(session, tenant)
        manifest = self.get(session, tenant)
        try:
            client = connect(None if record.host == "local" else record.host)
            with contextlib.closing(client):
                located.verify(record, manifest, client)
        except docker.errors.DockerException as exc:
            raise DriverError(
                f"session {session!r}: its engine ({record.host}) cannot be reached: {exc}"
            ) from None
        return record, manifest

    def workspace(
        self, session: str, tenant: str | None = None, limits: dataplane.Limits | None = None
    ) -> dataplane.Workspace:
        """The session's data plane (exec, signals, files, stats, logs, ports) on its
        container, located and checked like the host tools' (:mod:`.dataplane`)."""
        record = self._record(session, tenant)
        backend = load_settings(self.where).get("backend")
        workspace = dataplane.Workspace.open(
            record, self.get(session, tenant), limits, backend=backend
        )
        # Wake on use: an exec or file call resumes a paused or hibernated session.
        workspace.wake = functools.partial(
            hibernating.wake, self, session, tenant, "exec or file call"
        )
        return workspace

    def list(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every session (of ``tenant``); manifests read through :mod:`.listing`'s cache
        (:func:`.listing.page` filters by label and pages)."""
        rows = []
        for record in self.registry.all(tenant):
            row = listing.row(record)
            del row["labels"]
            rows.append(row)
        return rows

    def refresh(
        self,
        session: str,
        tenant: str | None = None,
        secrets: Mapping[str, str] | None = None,
        progress: Progress = _quiet,
    ) -> manifest_contract.Manifest:
        """Recreate the session's container, keeping its workspace and other volumes."""
        with self._audited("refresh", session, tenant) as record:
            session_plan, values = self.plan(record.request, secrets, naming=record.naming)
            backups.before_refresh(self, session_plan, progress)
            if session_plan.config.backend == "docker":
                pausing.resume_for(record)  # a paused container stops the normal way
            with driver.reported("refresh", session_plan.stack_name):
                result = self.engine.recreate(session_plan, values, progress)
            manifest_contract.validate(result, f"session {session}")
            return result  # type: ignore[return-value]

    def destroy(
        self,
        session: str,
        tenant: str | None = None,
        progress: Progress = _quiet,
        final_backup: bool = True,
        *,
        pool_member: bool = False,
    ) -> None:
        """Remove the session; first its final backup when ``backup.onDestroy`` (a failed
        one stops the destroy; ``final_backup=False`` skips it). ``pool_member``: a warm
        pool removing a member nobody claimed (audited as ``pool-remove``, no event)."""
        audited = (
            self._audited("pool-remove", session, tenant)
            if pool_member
            else self._audited("destroy", session, tenant)
        )
        with audited as record:
            session_plan, _ = self.plan(
                record.request, dict.fromkeys(_names(record.request), ""), naming=record.naming
            )
            if final_backup:
                backups.before_destroy(self, session_plan, progress)
            if session_plan.config.backend == "docker":
                pausing.resume_for(record)  # a paused container stops the normal way
            with driver.reported("destroy", session_plan.stack_name):
                self.engine.destroy(session_plan, progress)
            self.registry.remove(record.stack_name)
            Path(record.manifest_path).unlink(missing_ok=True)
            e2b.forget(self.where.state, record.stack_name)

    def build_image(self, progress: Progress = _quiet) -> str:
        """Build the host's core image once (``dockyard image build``); sessions without
        an image of their own use it from then on. Returns the image reference."""
        settings = load_settings(self.where)
        with self._audit("image-build") as entry:
            config = from_host_settings(
                settings, stack="images", cwd=str(self.where.state), check_secrets=True
            )
            entry["host"] = config.docker_host or "local"
            with driver.reported("image build", "images"):
                reference = self.engine.build_image(config, progress)
            self.where.state.mkdir(parents=True, exist_ok=True, mode=0o700)
            (self.where.state / IMAGE_RECORD).write_text(json.dumps({"imageRef": reference}))
            return reference

    # --- instant sessions (issue 29): pause.py, snapshots.py ---------------------------

    def pause(self, session: str, tenant: str | None = None) -> pausing.State:
        """Freeze the session's processes, memory kept (:mod:`.pause`)."""
        return pausing.pause(self, session, tenant)

    def resume(self, session: str, tenant: str | None = None) -> pausing.State:
        """Thaw a paused session, or restore a hibernated one (:mod:`.hibernate`)."""
        return hibernating.resume(self, session, tenant)

    def hibernate(self, session: str, tenant: str | None = None) -> pausing.State:
        """Checkpoint the session's processes and memory to disk and stop it, where the
        host can (:mod:`.hibernate`)."""
        return hibernating.hibernate(self, session, tenant)

    def snapshot(self, session: str, name: str, tenant: str | None = None) -> snapshotting.Snapshot:
        """The session's container layer and volumes as ``name`` (:mod:`.snapshots`)."""
        return snapshotting.take(self, session, name, tenant)

    def snapshots(self, tenant: str | None = None) -> builtins.list[snapshotting.Snapshot]:
        return snapshotting.listing(self, tenant)

    def remove_snapshot(self, name: str, tenant: str | None = None) -> snapshotting.Snapshot:
        return snapshotting.remove(self, name, tenant)

    def fork(
        self,
        session: str,
        as_: str,
        tenant: str | None = None,
        snapshot: str | None = None,
        secrets: Mapping[str, str] | None = None,
        progress: Progress = _quiet,
    ) -> manifest_contract.Manifest:
        """A new session ``as_`` with ``session``'s files and installed packages and an
        identity of its own (:mod:`.snapshots`)."""
        return snapshotting.fork(  # type: ignore[return-value]
            self, session, as_, tenant, snapshot, secrets, progress
        )

    def pools(self) -> builtins.list[dict[str, Any]]:
        """Each warm pool of the host settings and its members (:mod:`.warm`)."""
        return warm.status(self)

    def refill_pools(self, progress: Progress = _quiet) -> warm.Refilled:
        """One refill of the warm pools now (``dockyard serve`` runs it every few seconds)."""
        return warm.refill(self, progress)

    def audit_attach(self, session: str, tenant: str | None = None) -> registry.Record:
        """Record an attach (the CLI runs ``docker exec`` itself)."""
        with self._audited("attach", session, tenant) as record:
            return record


def _names(request: Mapping[str, Any]) -> list[str]:
    names = request.get("secrets")
    return [n for n in names if isinstance(n, str)] if isinstance(names, builtins.list) else []


def _session_secret_hint(name: str, tenant: Any) -> str:
    """How a session's caller supplies the secret ``name`` (the config's secret hint)."""
    variable = secret_variable(name, tenant if isinstance(tenant, str) else None)
    return (
        f"a secret the caller supplies: `dockyard up --secret {name}` with the value in the "
        f"environment variable {variable}, or create(request, secrets={{...}})"
    )


def _default() -> Sessions:
    return Sessions.default()


def create(
    request: Mapping[str, Any],
    secrets: Mapping[str, str] | None = None,
    progress: Progress = _quiet,
) -> manifest_contract.Manifest:
    return _default().create(request, secrets, progress)


def get(session: str, tenant: str | None = None) -> manifest_contract.Manifest:
    return _default().get(session, tenant)


def list(tenant: str | None = None) -> list[dict[str, Any]]:
    return _default().list(tenant)


def refresh(session: str, tenant: str | None = None) -> manifest_contract.Manifest:
    return _default().refresh(session, tenant)


def destroy(session: str, tenant: str | None = None) -> None:
    _default().destroy(session, tenant)
