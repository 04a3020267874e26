"""Value types of the stack configuration.

Each type is an ``Annotated`` pydantic type whose validator full-matches an ASCII pattern,
bounds every number and length, and normalises paths before anything compares them. A
validator refuses with :func:`refuse` (what is allowed, never Python's wording); any other
exception inside one is turned into the same kind of refusal by :func:`rule`, so a hostile
value can only ever produce a problem line, never a traceback.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

from ..contract import (
    ENV_NAME,
    LABEL_KEY,
    NETWORK_HOST,
    RESERVED_TENANTS,
    RESERVED_TENANTS_ALLOWED,
    SESSION_ID,
)

# --- Patterns: always used with .fullmatch; ASCII classes only --------------------------------

# Docker's own volume-name rule needs at least two characters.
VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{1,127}", re.ASCII)
KUBE_CONTEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,252}", re.ASCII)
KUBE_CONTEXT_ALLOWED = "a kubeconfig context name: letters, digits, '_', '.', ':', '@', '/', '-'"
# Kubernetes object names (RFC 1123 labels).
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
TENANT = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?", re.ASCII)
PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}", re.ASCII)
GPU_DEVICE = re.compile(r"[A-Za-z0-9-]{1,64}", re.ASCII)
SIZE = re.compile(r"[ ]*([0-9]{1,16}(?:\.[0-9]{1,6})?)[ ]*([kmgt]i?b?|b)?[ ]*", re.ASCII | re.I)
DURATION = re.compile(r"([0-9]{1,9})(ms|s|m|h)", re.ASCII)
NUMBER_TEXT = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?", re.ASCII)
# Names that look like they hold a credential: refused as plain env, and never echoed.
SECRET_NAME = re.compile(r"(_KEY|_TOKEN|_SECRET)$|PASSWORD|PASSWD", re.ASCII | re.I)

# distribution/reference's grammar (ASCII): [registry[:port]/]path[:tag][@digest].
_REF_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REF_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?"
IMAGE_REFERENCE = re.compile(
    rf"(?:{_REF_DOMAIN}/)?{_REF_COMPONENT}(?:/{_REF_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?",
    re.ASCII,
)
IMAGE_TAG = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,100}", re.ASCII)
DOCKER_HOST = re.compile(
    r"unix://(?P<socket>/[A-Za-z0-9._/-]{1,255})"
    r"|npipe:////\./pipe/[A-Za-z0-9._-]{1,128}"
    rf"|tcp://{NETWORK_HOST}:(?P<tcp_port>[0-9]{{1,5}})"
    rf"|ssh://(?:[A-Za-z0-9._-]{{1,64}}@)?{NETWORK_HOST}(?::(?P<ssh_port>[0-9]{{1,5}}))?",
    re.ASCII,
)

# --- Bounds (docs/stacks.md lists them) ---------------------------------------------------------

MAX_TEXT = 4096
MAX_PATH = 4096
MAX_ITEMS = 256
MIN_MEMORY_MB = 6  # the engine's own minimum
MAX_MEMORY_MB = 4 * 1024 * 1024  # 4 TiB: far below the engine's int64 bytes
CPU_PERIOD_US = 100_000
# The kernel refuses a CFS quota under 1 ms; below 0.01 CPUs the quota would round to "none".
MIN_CPUS = 0.01
MAX_CPUS = 1024.0
MAX_PIDS = 4_194_304  # the kernel's pid_max ceiling
MAX_NOFILE = 1_048_576  # the kernel's default nr_open
MAX_DURATION_MS = 24 * 3600 * 1000
MAX_RETRIES = 100

T = TypeVar("T")


def refuse(allowed: str) -> PydanticCustomError:
    """The one way a rule says no: the text is what is allowed, never why Python failed."""
    return PydanticCustomError("dockyard", "{allowed}", {"allowed": allowed})


def refuse_items(items: list[tuple[int | str, Any, str]], verb: str = "is not allowed") -> Any:
    """Several problems inside one list or mapping, each at ``key[index]`` / ``key.name``."""
    return PydanticCustomError(
        "dockyard_items", "{count} problems", {"count": len(items), "items": items, "verb": verb}
    )


def rule(allowed: str) -> Callable[[Callable[[Any], T]], Callable[[Any], T]]:
    """Decorate a value check so any exception it raises becomes a refusal naming ``allowed``
    (a 400-digit number, an unhashable list, a YAML date: never a traceback)."""

    def wrap(check: Callable[[Any], T]) -> Callable[[Any], T]:
        @functools.wraps(check)
        def guarded(value: Any) -> T:
            try:
                return check(value)
            except PydanticCustomError:
                raise
            except Exception:
                raise refuse(allowed) from None

        return guarded

    return wrap


def _strict_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise refuse("true or false")
    return value


StrictBool = Annotated[bool, BeforeValidator(_strict_bool)]
"""true or false, never a string or number that reads like one."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: int | float) -> float:
    if isinstance(value, int) and abs(value) > 2**53:
        raise OverflowError
    number = float(value)
    if not math.isfinite(number):
        raise OverflowError
    return number


def has_control(text: str, allow_tab: bool = False) -> bool:
    return any((ord(c) < 32 and not (allow_tab and c == "\t")) or 127 <= ord(c) < 160 for c in text)


# --- Numbers ------------------------------------------------------------------------------------

PORT_ALLOWED = "an integer container port 1-65535"


@rule(PORT_ALLOWED)
def port(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise refuse(PORT_ALLOWED)
    return value


MEMORY_ALLOWED = (
    f"a size from {MIN_MEMORY_MB} MB to 4 TiB: MB as a number (8192) or with a unit (512m, 8g)"
)


_UNIT_MB = {"b": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024**2}


def sized(low: int, high: int, allowed: str) -> Callable[[Any], int]:
    """A size check in MB from ``low`` to ``high``: an integer (MB) or a size with a unit
    (``512m``, ``8g``, ``8GiB``); anything else, or out of range, is refused as ``allowed``."""

    @rule(allowed)
    def size_mb(value: Any) -> int:
        if _is_number(value):
            megabytes = _finite(value)
        elif isinstance(value, str) and (match := SIZE.fullmatch(value)):
            number, unit = float(match.group(1)), (match.group(2) or "m").lower()[:1]
            megabytes = number * _UNIT_MB[unit]
        else:
            raise refuse(allowed)
        if not low <= megabytes <= high:
            raise refuse(allowed)
        return int(megabytes)

    return size_mb


memory_mb = sized(MIN_MEMORY_MB, MAX_MEMORY_MB, MEMORY_ALLOWED)
"""Memory in MB."""

STORAGE_ALLOWED = "a size from 64 MB to 64 TiB: MB as a number (10240) or with a unit (10g, 1t)"
storage_mb = sized(64, 64 * 1024**2, STORAGE_ALLOWED)
"""A volume size in MB (Kubernetes PersistentVolumeClaims)."""


CPUS_ALLOWED = f"a number of CPUs from {MIN_CPUS} to {MAX_CPUS:g}, e.g. 4 or 0.5"


@rule(CPUS_ALLOWED)
def cpus(value: Any) -> float:
    if _is_number(value):
        number = _finite(value)
    elif isinstance(value, str) and NUMBER_TEXT.fullmatch(value):
        number = float(value)
    else:
        raise refuse(CPUS_ALLOWED)
    if not MIN_CPUS <= number <= MAX_CPUS:
        raise refuse(CPUS_ALLOWED)
    return number


def bounded_int(low: int, high: int) -> Callable[[Any], int]:
    allowed = f"an integer {low}-{high}"

    @rule(allowed)
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise refuse(allowed)
        return value

    return check


DURATION_ALLOWED = "a duration from 1ms to 24h such as 500ms, 10s, 1m"


@rule(DURATION_ALLOWED)
def duration(value: Any) -> str:
    if not isinstance(value, str) or not (match := DURATION.fullmatch(value)):
        raise refuse(DURATION_ALLOWED)
    scale = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}[match.group(2)]
    if not 1 <= int(match.group(1)) * scale <= MAX_DURATION_MS:
        raise refuse(DURATION_ALLOWED)
    return value


def duration_ms(text: str) -> int:
    """Milliseconds of a validated :data:`Duration`."""
    match = DURATION.fullmatch(text)
    assert match is not None
    return int(match.group(1)) * {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}[match.group(2)]


# --- Text and names -----------------------------------------------------------------------------

TEXT_ALLOWED = (
    f"a one-line string or number of at most {MAX_TEXT} characters, no control characters"
)


@rule(TEXT_ALLOWED)
def text(value: Any) -> str:
    """A free value (env, label, build arg): a scalar, rendered as text, one line."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise refuse(TEXT_ALLOWED)
    if isinstance(value, float):
        _finite(value)
    rendered = str(value)
    if len(rendered) > MAX_TEXT or has_control(rendered, allow_tab=True):
        raise refuse(TEXT_ALLOWED)
    return rendered


def named(pattern: re.Pattern[str], allowed: str) -> Callable[[Any], str]:
    @rule(allowed)
    def check(value: Any) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise refuse(allowed)
        return value

    return check


SESSION_ALLOWED = (
    "a container name: letters, digits, '_', '.', '-', starting with a letter or digit, "
    "at most 63 characters"
)
ENV_NAME_ALLOWED = (
    "an environment variable name: letters, digits, '_', not starting with a digit, "
    "at most 255 characters"
)
LABEL_KEY_ALLOWED = (
    "a label key of lower-case letters, digits, '.', '_', '/', '-', at most 128 characters"
)
PROFILE_ALLOWED = "a profile name of lower-case letters, digits, '_', '-'"
IMAGE_ALLOWED = (
    "an image reference such as ghcr.io/acme/dockyard-core:1.2 (lower-case repository path, "
    "optional :tag and @sha256:digest)"
)

session_id = named(SESSION_ID, SESSION_ALLOWED)
env_name = named(ENV_NAME, ENV_NAME_ALLOWED)
label_key = named(LABEL_KEY, LABEL_KEY_ALLOWED)
profile_name = named(PROFILE_NAME, PROFILE_ALLOWED)
DNS_LABEL_ALLOWED = (
    "a Kubernetes name: 1-63 lower-case letters, digits, '-', alphanumeric at both ends"
)
dns_label = named(DNS_LABEL, DNS_LABEL_ALLOWED)
TENANT_ALLOWED = (
    "a tenant name: 1-32 lower-case letters, digits, '-' (never two in a row), "
    "alphanumeric at both ends"
)


@rule(TENANT_ALLOWED)
def tenant(value: Any) -> str:
    # No '--': a tenant's secret variables (dockyard.sessions.secret_variable) spell '-'
    # as '_' and end the tenant with '__', which must stay one-to-one.
    if not isinstance(value, str) or not TENANT.fullmatch(value) or "--" in value:
        raise refuse(TENANT_ALLOWED)
    if value in RESERVED_TENANTS:
        # A reserved name is a namespace the tenant's sessions would share (issue 25.10).
        raise refuse(f"{TENANT_ALLOWED}, {RESERVED_TENANTS_ALLOWED}")
    return value


@rule(IMAGE_ALLOWED)
def image_reference(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 512 or not IMAGE_REFERENCE.fullmatch(value):
        raise refuse(IMAGE_ALLOWED)
    return value


TAG_ALLOWED = "a tag prefix of lower-case letters, digits, '_', '.', '-' (at most 101)"
image_tag = named(IMAGE_TAG, TAG_ALLOWED)

DOCKER_HOST_ALLOWED = (
    "a Docker host URL: unix:///path, tcp://host:port or ssh://user@host[:port], ports 1-65535"
)


@rule(DOCKER_HOST_ALLOWED)
def docker_host(value: Any) -> str:
    if not isinstance(value, str) or not (match := DOCKER_HOST.fullmatch(value)):
        raise refuse(DOCKER_HOST_ALLOWED)
    for group in ("tcp_port", "ssh_port"):
        port_text = match.group(group)
        if port_text is not None and not 1 <= int(port_text) <= 65535:
            raise refuse(DOCKER_HOST_ALLOWED)
    socket = match.group("socket")
    if socket is not None:
        normalise_absolute(socket)  # no traversal in the socket path either
    return value


UPSTREAM_ALLOWED = (
    "an https:// URL of a host name or IPv4 address with an optional :port (1-65535), "
    "no user, path, query or fragment, e.g. https://api.anthropic.com"
)
_UPSTREAM = re.compile(
    r"https://(?P<host>[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}"
    r"[a-z0-9])?){0,126})(?::(?P<port>[0-9]{1,5}))?/?",
    re.ASCII,
)


@rule(UPSTREAM_ALLOWED)
def upstream(value: Any) -> str:
    """An API the credential broker forwards to: TLS only (the key travels in a header),
    and no path, which Caddy's reverse proxy cannot take in an upstream address."""
    if not isinstance(value, str) or len(value) > 262 or not (match := _UPSTREAM.fullmatch(value)):
        raise refuse(UPSTREAM_ALLOWED)
    port_text = match.group("port")
    if port_text is not None and not 1 <= int(port_text) <= 65535:
        raise refuse(UPSTREAM_ALLOWED)
    return value.rstrip("/")


# --- Paths: normalised before anything compares them --------------------------------------------


def normalise_absolute(path: str) -> str:
    """``path`` with repeated slashes collapsed and the trailing one dropped; refuses
    relative paths, '.' and '..' components, control characters and over-long paths.
    (posixpath.normpath keeps a leading '//', which would dodge prefix comparisons.)"""
    if len(path) > MAX_PATH or has_control(path) or not path.startswith("/"):
        raise ValueError(path)
    parts = [part for part in path.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise ValueError(path)
    return "/" + "/".join(parts)


def is_under(path: str, root: str) -> bool:
    """Both normalised: ``path`` is ``root`` or below it."""
    return root == "/" or path == root or path.startswith(root + "/")


HOST_DIR_ALLOWED = "an absolute host directory without '.' or '..' components or control characters"


@rule(HOST_DIR_ALLOWED)
def host_dir(value: Any) -> str:
    if not isinstance(value, str):
        raise refuse(HOST_DIR_ALLOWED)
    return normalise_absolute(value)


HOST_FILE_ALLOWED = "an absolute file path without '.' or '..' components or control characters"


@rule(HOST_FILE_ALLOWED)
def host_file(value: Any) -> str:
    if not isinstance(value, str) or value.endswith("/"):
        raise refuse(HOST_FILE_ALLOWED)
    return normalise_absolute(value)


MANIFEST_DIR_ALLOWED = (
    "a directory path (relative to cwd, or absolute) without '.' or '..' components "
    "or control characters"
)


@rule(MANIFEST_DIR_ALLOWED)
def manifest_dir(value: Any) -> str:
    if not isinstance(value, str) or not value.strip("/"):
        raise refuse(MANIFEST_DIR_ALLOWED)
    if value.startswith("/"):
        return normalise_absolute(value)
    return normalise_absolute("/" + value)[1:]


# --- Annotated types ----------------------------------------------------------------------------

Port = Annotated[int, BeforeValidator(port)]
MemoryMB = Annotated[int, BeforeValidator(memory_mb)]
Cpus = Annotated[float, BeforeValidator(cpus)]
Duration = Annotated[str, BeforeValidator(duration)]
Pids = Annotated[int, BeforeValidator(bounded_int(1, MAX_PIDS))]
Nofile = Annotated[int, BeforeValidator(bounded_int(1, MAX_NOFILE))]
Retries = Annotated[int, BeforeValidator(bounded_int(1, MAX_RETRIES))]
Text = Annotated[str, BeforeValidator(text)]
SessionId = Annotated[str, BeforeValidator(session_id)]
ProfileName = Annotated[str, BeforeValidator(profile_name)]
ImageReference = Annotated[str, BeforeValidator(image_reference)]
ImageTag = Annotated[str, BeforeValidator(image_tag)]
DockerHost = Annotated[str, BeforeValidator(docker_host)]
HostDir = Annotated[str, BeforeValidator(host_dir)]
HostFile = Annotated[str, BeforeValidator(host_file)]
Upstream = Annotated[str, BeforeValidator(upstream)]
ManifestDir = Annotated[str, BeforeValidator(manifest_dir)]
StorageMB = Annotated[int, BeforeValidator(storage_mb)]
DnsLabel = Annotated[str, BeforeValidator(dns_label)]
Tenant = Annotated[str, BeforeValidator(tenant)]
HOST_NAME_ALLOWED = "a host name: 1-32 lower-case letters, digits, '-', alphanumeric at both ends"
HostName = Annotated[str, BeforeValidator(named(TENANT, HOST_NAME_ALLOWED))]
Count = Annotated[int, BeforeValidator(bounded_int(0, 100_000))]


def bounded_list(limit: int = MAX_ITEMS) -> AfterValidator:
    def check(value: list[Any]) -> list[Any]:
        if len(value) > limit:
            raise refuse(f"a list of at most {limit} items")
        return value

    return AfterValidator(check)
