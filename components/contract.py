"""The facts every layer of dockyard and every host script agree on (standard library only).

Labels on engine objects, the configuration namespace, who the agent is inside an
environment, where things are mounted, the stop budget, and the grammar of names that
cross into engine objects, manifests and host files. The host library
(:mod:`dockyard.host`) reads this module too, so a root host script and the package can
never disagree about which containers are dockyard's.

Nothing here imports anything outside the standard library: this is the bottom layer.
"""

from __future__ import annotations

import re

# --- Configuration ------------------------------------------------------------------------
NAMESPACE = "dockyard"
"""The Pulumi configuration namespace (``dockyard:<key>``); only dockyard.config spells it."""

# --- Labels on containers, networks and volumes -------------------------------------------
LABEL_MANAGED = "dockyard.managed"
MANAGED_VALUE = "true"
MANAGED_SELECTOR = f"{LABEL_MANAGED}={MANAGED_VALUE}"
LABEL_ENVIRONMENT = "dockyard.environment"
LABEL_SESSION = "dockyard.session"
LABEL_BACKEND = "dockyard.backend"
LABEL_STACK = "dockyard.stack"
LABEL_TENANT = "dockyard.tenant"
LABEL_VOLUME = "dockyard.volume"
LABEL_EGRESS = "dockyard.egress"
LABEL_EGRESS_ALLOW = "dockyard.egress.allow"
LABEL_HOST = "dockyard.host"
LABEL_LIMITS_CPUS = "dockyard.limits.cpus"
LABEL_LIMITS_MEMORY = "dockyard.limits.memory"
LABEL_BROKER = "dockyard.broker"
LABEL_CREDENTIALS = "dockyard.credentials"
"""On an environment's container: its ``credentials`` mode, ``files`` or ``brokered`` (host
tools that deliver secrets, e.g. the git_credentials role, refuse a brokered one)."""
LABEL_SNAPSHOT = "dockyard.snapshot"
"""On a snapshot's image (dockyard.sessions.snapshots): its name; the keys below say whose
it is, of which session, what kind, which volumes were copied and when."""
LABEL_SNAPSHOT_NAMESPACE = "dockyard.snapshot.namespace"
LABEL_SNAPSHOT_SESSION = "dockyard.snapshot.session"
LABEL_SNAPSHOT_KIND = "dockyard.snapshot.kind"
LABEL_SNAPSHOT_VOLUMES = "dockyard.snapshot.volumes"
LABEL_SNAPSHOT_CREATED = "dockyard.snapshot.created"
LABEL_DISKS = "dockyard.disks"
"""On the disks keeper, the one helper container per engine (dockyard.storage_scripts)."""
SNAPSHOT_LABELS = frozenset(
    {
        LABEL_SNAPSHOT,
        LABEL_SNAPSHOT_NAMESPACE,
        LABEL_SNAPSHOT_SESSION,
        LABEL_SNAPSHOT_KIND,
        LABEL_SNAPSHOT_VOLUMES,
        LABEL_SNAPSHOT_CREATED,
    }
)
LABELS = SNAPSHOT_LABELS | frozenset(
    {
        LABEL_MANAGED,
        LABEL_ENVIRONMENT,
        LABEL_SESSION,
        LABEL_BACKEND,
        LABEL_STACK,
        LABEL_TENANT,
        LABEL_VOLUME,
        LABEL_EGRESS,
        LABEL_EGRESS_ALLOW,
        LABEL_HOST,
        LABEL_LIMITS_CPUS,
        LABEL_LIMITS_MEMORY,
        LABEL_BROKER,
        LABEL_CREDENTIALS,
        LABEL_DISKS,
    }
)
"""Every label key dockyard writes; anything else under ``dockyard.`` is a user's."""
IDENTITY_LABELS = (LABEL_ENVIRONMENT, LABEL_SESSION, LABEL_STACK)
WORKSPACE_VOLUME = "workspace"
WORKSPACE_SELECTOR = f"{LABEL_VOLUME}={WORKSPACE_VOLUME}"

# --- Inside an environment ------------------------------------------------------------------
AGENT_UID = 1000
"""The agent user's uid (and gid) in every image: images/core/Dockerfile creates it."""
AGENT_USER = "agent"
WORKSPACE_MOUNT = "/workspace"
SECRETS_DIR = "/run/secrets"
READY_FILE = "/tmp/ready"  # noqa: S108 - the marker inside the environment, not a host file
HEALTHCHECK_PATH = "/usr/local/bin/dockyard-healthcheck"
STOP_TIMEOUT_S = 10
"""Seconds between SIGTERM and SIGKILL: the entrypoint's checkpoint is budgeted inside it."""

# --- Names --------------------------------------------------------------------------------------
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", re.ASCII)
"""A session id: a valid container name, at most 63 characters (full match)."""
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}", re.ASCII)
"""An environment variable name (full match)."""
LABEL_KEY = re.compile(r"[a-z0-9](?:[a-z0-9._/-]{0,126}[a-z0-9])?", re.ASCII)
"""A label key dockyard accepts in configuration and selectors (full match)."""
SELECTOR_VALUE = re.compile(r"[A-Za-z0-9._/:-]{0,255}", re.ASCII)
"""A label value in a host selector (full match)."""

# --- Session namespaces and engine names (issue 25 item 10) ---------------------------------
UNTENANTED_STACK = "sessions"
"""The stack of sessions without a tenant: their Pulumi stacks ``sessions.<sessionId>``, their
engine names ``dockyard-sessions-<sessionId>``, SSH CA and backup repositories ``sessions/``."""
RESERVED_TENANTS = {
    UNTENANTED_STACK: "the namespace of sessions without a tenant",
}
"""Names no tenant may take, and why: each is a namespace a tenant's session would share."""
RESERVED_TENANTS_ALLOWED = "other than " + ", ".join(
    f"{name!r} (reserved: {why})" for name, why in RESERVED_TENANTS.items()
)
TENANT_NAMES = "t."
"""Engine names of a tenant's session start ``dockyard-t.<tenant>.``: a tenant name has no
'.', so the first '.' after the tenant ends it, and no ``dockyard-<stack>-`` name (a stack
file's, an untenanted session's or a tenant's session created before this scheme) has a '.'
right after one letter ``t``: the map (tenant, session) -> name is one-to-one across both."""
SHARED_VOLUME_MARK = "._"
"""A shared named volume is ``<namespace>._<name>``: a session id starts with a letter or a
digit, so no session's own names can start that way."""
OWNED_VOLUME_INFIX = "-vol-"
"""A session's own named volume is ``<environment id>-vol-<name>`` (no fixed volume role
starts with ``vol-``)."""
NAMING_LEGACY = "v1"
NAMING_CURRENT = "v2"
NAMINGS = (NAMING_LEGACY, NAMING_CURRENT)
"""v1: ``dockyard-<stack>-<session>`` for every session and named volumes by their bare name
(sessions created before issue 25; they keep their engine objects). v2: a tenant's
session is ``dockyard-t.<tenant>.<session>``, named volumes belong to their session unless
the stack lists them in ``sharedVolumes``."""


SESSION_ID_RESERVED_ENDINGS = ("-broker", "-broker-uplink", ".host")
SESSION_ID_RESERVED_PARTS = (OWNED_VOLUME_INFIX,)
SESSION_ID_V2_ALLOWED = (
    "a session id that does not end in "
    + ", ".join(repr(e) for e in SESSION_ID_RESERVED_ENDINGS)
    + " nor contain "
    + ", ".join(repr(p) for p in SESSION_ID_RESERVED_PARTS)
    + " (another session's broker networks, its own volumes and its host file are named so)"
)


def session_id_reserved(session_id: str) -> bool:
    """A new (v2) session id that would name another session's objects in its namespace:
    ``<id>-broker`` / ``-broker-uplink`` (a brokered session's container and networks),
    ``<id>-vol-<name>`` (its own volumes), ``<id>.host.json`` (its host file). With none
    of these, every engine name of a namespace parses back to one session."""
    return session_id.endswith(SESSION_ID_RESERVED_ENDINGS) or any(
        part in session_id for part in SESSION_ID_RESERVED_PARTS
    )


def environment_id(stack: str, session_id: str) -> str:
    """The v1 engine name of an environment (stack files, untenanted sessions, and tenants'
    sessions created before v2): ``dockyard-<stack>-<session>``."""
    safe_stack = "".join(c if c.isalnum() or c in "_.-" else "-" for c in stack)
    return f"dockyard-{safe_stack}-{session_id}"


def session_environment_id(tenant: str | None, session_id: str, naming: str) -> str:
    """The engine name of a session's container and network (prefix of its volumes)."""
    if tenant and naming != NAMING_LEGACY:
        return f"dockyard-{TENANT_NAMES}{tenant}.{session_id}"
    return environment_id(tenant or UNTENANTED_STACK, session_id)


def session_namespace(tenant: str | None) -> str:
    """The engine-name root of a namespace's shared objects (v2)."""
    return f"dockyard-{TENANT_NAMES}{tenant}" if tenant else f"dockyard-{UNTENANTED_STACK}"


def volume_engine_name(
    tenant: str | None, environment_id: str, name: str, shared: bool, naming: str
) -> str:
    """The engine name of a declared named volume ``name``: v1 the bare name; v2 the
    session's own (``<environment id>-vol-<name>``) unless ``shared``, then the
    namespace's (``<namespace>._<name>``: shared within one tenant, never across)."""
    if naming == NAMING_LEGACY:
        return name
    if shared:
        return f"{session_namespace(tenant)}{SHARED_VOLUME_MARK}{name}"
    return f"{environment_id}{OWNED_VOLUME_INFIX}{name}"


# --- Backups (the restic engine, the host backup command and the configuration agree) ---------
NETWORK_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:]{2,39}\])"
"""A host name, IPv4 address or bracketed IPv6 address, as regex text to build patterns with."""
BACKUP_REPOSITORY = re.compile(
    rf"s3:(?:(?P<scheme>https?)://)?(?P<host>{NETWORK_HOST})(?::(?P<port>[0-9]{{1,5}}))?"
    r"/(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?P<prefix>(?:/[A-Za-z0-9_.-]{1,128}){0,16})/?",
    re.ASCII,
)
"""A backup repository location (full match; see :func:`backup_repository_ok` for the rest)."""
BACKUP_REPOSITORY_ALLOWED = (
    "an S3-compatible restic location s3:[http[s]://]host[:port]/bucket[/prefix] (bucket "
    "3-63 of a-z 0-9 . -; no user name or key in it: keys go in the credentials directory)"
)
BACKUP_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,31}", re.ASCII)
"""A storage region (full match)."""
BACKUP_REGION_ALLOWED = "a region name of lower-case letters, digits and '-' (e.g. us-east-1, auto)"
BACKUP_CREDENTIALS_DIR = "/etc/dockyard/backup"
"""Default: the host directory of repository passwords and storage keys (0700)."""
BACKUP_CACHE_DIR = "/var/cache/dockyard/backup"
BACKUP_IMAGE = "debian:bookworm-slim"
"""Default: the helper image restic runs in."""
BACKUP_RESTIC = "/usr/bin/restic"
"""Default: the restic binary on the Docker host."""


def backup_repository_ok(value: object) -> bool:
    """``value`` is an allowed backup repository location (BACKUP_REPOSITORY_ALLOWED)."""
    if not isinstance(value, str) or len(value) > 512:
        return False
    match = BACKUP_REPOSITORY.fullmatch(value)
    if match is None:
        return False
    port = match.group("port")
    segments = match.group("prefix").split("/")
    return (port is None or 1 <= int(port) <= 65535) and not any(
        part in (".", "..") for part in segments
    )
