"""The stack's typed configuration: read once, validated completely, handed down.

Every key lives in the ``dockyard:`` namespace of ``stacks/Pulumi.<stack>.yaml``.
:func:`parse` turns the raw mapping into a :class:`StackConfig` or raises
:class:`ConfigError` listing *every* problem of the stack at once, each naming the key
path, the bad value (unless it could hold a secret) and what is allowed (R-STK-2).
Nothing here touches a resource, so a bad configuration fails before anything is
registered.

The package is split by job: ``values`` (value types and patterns), ``model`` (the typed
model: the only place a rule lives), ``scope`` (what an environment's rules know of the
rest of the stack), ``messages`` (problem lines, redaction) and ``sources`` (Pulumi's
config and stack files). Secret values never enter the model: it holds secret *names*.
"""

from .errors import ConfigError
from .model import (
    BROKER_ENV,
    BROKERED_SECRETS,
    BUILTIN_PROFILES,
    DEFAULT_MANIFEST_DIR,
    FORBIDDEN_BIND_SOURCES,
    NAMESPACE,
    RESERVED_LABEL_PREFIX,
    RESERVED_MOUNTS,
    TOP_LEVEL_KEYS,
    BrokerSettings,
    Environment,
    Healthcheck,
    ImageSource,
    Limits,
    Profile,
    QuotaCaps,
    Quotas,
    ResolvedLimits,
    StackConfig,
    Volume,
    parse_volume,
    resolve_limits,
)
from .sources import decode, from_pulumi, from_stack_file, parse
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
    "IMAGE_REFERENCE",
    "LABEL_KEY",
    "NAMESPACE",
    "RESERVED_LABEL_PREFIX",
    "RESERVED_MOUNTS",
    "SECRET_NAME",
    "SECRET_NAME_PATTERN",
    "SESSION_ID",
    "TOP_LEVEL_KEYS",
    "VOLUME_NAME",
    "BrokerSettings",
    "ConfigError",
    "Environment",
    "Healthcheck",
    "ImageSource",
    "Limits",
    "Profile",
    "QuotaCaps",
    "Quotas",
    "ResolvedLimits",
    "StackConfig",
    "Volume",
    "decode",
    "from_pulumi",
    "from_stack_file",
    "parse",
    "parse_volume",
    "resolve_limits",
]
