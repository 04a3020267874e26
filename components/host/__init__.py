"""dockyard's host library: what the host scripts (health report, idle monitor, egress
guard, workspace backups) share, so that each fact is written once on the host side too.
Standard library only: roles/host_common installs it with the package's other host modules
as the tree ``<library>/dockyard/`` beside the scripts, which ``from dockyard import host``
(their directory is ``sys.path[0]``); in a checkout the scripts import the virtualenv's
``dockyard``, the same files.

- Labels and their grammar: :mod:`dockyard.contract`'s, the strings the Pulumi components
  put on every environment (re-exported here as the scripts read them).
- Engine access (:mod:`.engine`): the Engine API over the unix socket (:class:`Engine`);
  commands (:mod:`.commands`): the docker CLI or any other (:func:`run`).
- Bounded reads: an environment's agent is hostile, so everything a (root) host script
  reads from it or through the engine is bounded in bytes and in total time, never per
  read: :func:`run`, :meth:`Engine.request` and :meth:`Engine.exec_bounded` stop at their
  cap or deadline, kill what they started (an exec's processes in the container too) and
  say which bound was hit (:class:`Overrun`).
- Config loading (:mod:`.config`): a JSON object over the script's defaults; unknown keys
  and values of the wrong type are refused, naming the key, the value and what is allowed.
- Atomic writes: :mod:`dockyard.files`, the package's one writer.
- The manifest rewrite (:mod:`.manifests`): validated against the shipped contract v1
  schema before it replaces the file.
- The audit trail (:mod:`.audit_trail`): the one writer the sessions layer uses too.
"""

from __future__ import annotations

from ..contract import (
    LABEL_BACKEND,
    LABEL_BROKER,
    LABEL_CREDENTIALS,
    LABEL_EGRESS,
    LABEL_EGRESS_ALLOW,
    LABEL_ENVIRONMENT,
    LABEL_HOST,
    LABEL_KEY,
    LABEL_LIMITS_CPUS,
    LABEL_LIMITS_MEMORY,
    LABEL_MANAGED,
    LABEL_SESSION,
    LABEL_STACK,
    LABEL_TENANT,
    LABEL_VOLUME,
    LABELS,
    MANAGED_SELECTOR,
    MANAGED_VALUE,
    SELECTOR_VALUE,
)
from ..files import (
    write_atomic,
    write_json_atomic,
)
from .audit_trail import FIELDS as AUDIT_FIELDS
from .audit_trail import HOST_LOG as AUDIT_LOG
from .audit_trail import KEEP as AUDIT_KEEP
from .audit_trail import MAX_BYTES as AUDIT_MAX_BYTES
from .audit_trail import audit
from .commands import (
    BACKUP_TIMEOUT_S,
    RUN_MAX_BYTES,
    Runner,
    backup_first,
    run,
)
from .config import (
    SELECTOR_ALLOWED,
    check_command,
    load_config,
    parse_selector,
)
from .engine import (
    DEFAULT_DOCKER_HOST,
    EXEC_DEADLINE_S,
    EXEC_MAX_BYTES,
    REQUEST_DEADLINE_S,
    REQUEST_MAX_BYTES,
    Engine,
    ExecResult,
    kill_process_tree,
    parse_engine_time,
)
from .errors import (
    CommandError,
    CommandOverrun,
    ConfigError,
    EngineError,
    EngineOverrun,
    HostError,
    ManifestError,
    Overrun,
    SchemaError,
)
from .manifests import (
    SCHEMA_CANDIDATES,
    SCHEMA_NAME,
    VALIDATOR,
    iso_millis,
    manifest_for_container,
    manifest_problems,
    manifest_schema,
    read_manifest,
    rewrite_manifest,
    schema_path,
    validate_manifest,
)

__all__ = [
    "AUDIT_FIELDS",
    "AUDIT_KEEP",
    "AUDIT_LOG",
    "AUDIT_MAX_BYTES",
    "BACKUP_TIMEOUT_S",
    "DEFAULT_DOCKER_HOST",
    "EXEC_DEADLINE_S",
    "EXEC_MAX_BYTES",
    "LABELS",
    "LABEL_BACKEND",
    "LABEL_BROKER",
    "LABEL_CREDENTIALS",
    "LABEL_EGRESS",
    "LABEL_EGRESS_ALLOW",
    "LABEL_ENVIRONMENT",
    "LABEL_HOST",
    "LABEL_KEY",
    "LABEL_LIMITS_CPUS",
    "LABEL_LIMITS_MEMORY",
    "LABEL_MANAGED",
    "LABEL_SESSION",
    "LABEL_STACK",
    "LABEL_TENANT",
    "LABEL_VOLUME",
    "MANAGED_SELECTOR",
    "MANAGED_VALUE",
    "REQUEST_DEADLINE_S",
    "REQUEST_MAX_BYTES",
    "RUN_MAX_BYTES",
    "SCHEMA_CANDIDATES",
    "SCHEMA_NAME",
    "SELECTOR_ALLOWED",
    "SELECTOR_VALUE",
    "VALIDATOR",
    "CommandError",
    "CommandOverrun",
    "ConfigError",
    "Engine",
    "EngineError",
    "EngineOverrun",
    "ExecResult",
    "HostError",
    "ManifestError",
    "Overrun",
    "Runner",
    "SchemaError",
    "audit",
    "backup_first",
    "check_command",
    "iso_millis",
    "kill_process_tree",
    "load_config",
    "manifest_for_container",
    "manifest_problems",
    "manifest_schema",
    "parse_engine_time",
    "parse_selector",
    "read_manifest",
    "rewrite_manifest",
    "run",
    "schema_path",
    "validate_manifest",
    "write_atomic",
    "write_json_atomic",
]
