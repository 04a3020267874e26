"""The stack's typed configuration: read once, validated completely, handed down.

Every key lives in the ``dockyard:`` namespace of ``stacks/Pulumi.<stack>.yaml``.
:func:`parse` turns the raw mapping into a :class:`StackConfig` or raises
:class:`ConfigError` listing *every* problem of the stack at once, each naming the key
path, the bad value (unless it could hold a secret) and what is allowed (R-STK-2).
Nothing here touches a resource, so a bad configuration fails before anything is
registered.

The package is split by subject: ``values`` (value types and patterns), the typed model
where every rule lives — ``base`` (the model base), ``sections`` (the settings sections),
``names`` and ``mounts`` (an environment's keyed mappings and mounts), ``environment``
(one session's environment) and ``stack`` (the whole stack) —, ``egress`` (allowlist
entries), ``scope`` (what an environment's rules know of the rest of the stack),
``messages`` (problem lines, redaction) and ``sources`` (one entry per source: a stack
file, Pulumi's config, host settings plus a request). Secret values never enter the
model: it holds secret *names*.
"""

from .base import NAMESPACE
from .environment import BROKER_ENV, BROKERED_SECRETS, Environment
from .errors import ConfigError
from .messages import KeyName, key_path
from .mounts import FORBIDDEN_BIND_SOURCES, RESERVED_MOUNTS, Volume, parse_volume
from .names import RESERVED_LABEL_PREFIX
from .scope import SecretHint, stack_secret_hint
from .sections import (
    BUILTIN_PROFILES,
    HELPER_IMAGE,
    BackupSettings,
    BrokerSettings,
    Healthcheck,
    ImageSource,
    KubernetesSettings,
    Limits,
    Profile,
    QuotaCaps,
    Quotas,
    ResolvedLimits,
    Runtime,
    Variant,
    resolve_limits,
)
from .sources import (
    MISSING,
    config_key,
    decode,
    from_host_settings,
    from_pulumi,
    from_request,
    from_stack_file,
    host_settings,
    parse,
    stack_file,
    stack_name,
)
from .stack import DEFAULT_MANIFEST_DIR, TOP_LEVEL_KEYS, StackConfig
from .values import (
    DOCKER_HOST,
    ENV_NAME,
    IMAGE_REFERENCE,
    LABEL_KEY,
    SECRET_NAME,
    SESSION_ID,
    VOLUME_NAME,
)

# The old name of the secret-name pattern, kept for importers.
SECRET_NAME_PATTERN = SECRET_NAME

__all__ = [
    "BROKERED_SECRETS",
    "BROKER_ENV",
    "BUILTIN_PROFILES",
    "DEFAULT_MANIFEST_DIR",
    "DOCKER_HOST",
    "ENV_NAME",
    "FORBIDDEN_BIND_SOURCES",
    "HELPER_IMAGE",
    "IMAGE_REFERENCE",
    "LABEL_KEY",
    "MISSING",
    "NAMESPACE",
    "RESERVED_LABEL_PREFIX",
    "RESERVED_MOUNTS",
    "SECRET_NAME",
    "SECRET_NAME_PATTERN",
    "SESSION_ID",
    "TOP_LEVEL_KEYS",
    "VOLUME_NAME",
    "BackupSettings",
    "BrokerSettings",
    "ConfigError",
    "Environment",
    "Healthcheck",
    "ImageSource",
    "KeyName",
    "KubernetesSettings",
    "Limits",
    "Profile",
    "QuotaCaps",
    "Quotas",
    "ResolvedLimits",
    "Runtime",
    "SecretHint",
    "StackConfig",
    "Variant",
    "Volume",
    "config_key",
    "decode",
    "from_host_settings",
    "from_pulumi",
    "from_request",
    "from_stack_file",
    "host_settings",
    "key_path",
    "parse",
    "parse_volume",
    "resolve_limits",
    "stack_file",
    "stack_name",
    "stack_secret_hint",
]
