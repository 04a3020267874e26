"""The stack's settings sections: limits and profiles, images, healthcheck, Kubernetes,
quotas, backups and the credential brokers. Each is a small frozen model; the rules that
need the rest of the stack live on :class:`~.stack.StackConfig` or
:class:`~.environment.Environment`.
"""

from __future__ import annotations

import os
import stat
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
)

from .. import contract
from . import values as v
from .base import Model
from .names import BuildArgs
from .scope import Scope, scope_of

# --- Limits and profiles --------------------------------------------------------------------

DISK_MIN_MB = 16
DISK_MAX_MB = 16 * 1024 * 1024  # ext4's largest file with 4 KiB blocks
DISK_ALLOWED = (
    f"a size from {DISK_MIN_MB} MB to 16 TiB: MB as a number (20480) or with a unit (512m, 20g)"
)


DiskMB = Annotated[int, BeforeValidator(v.sized(DISK_MIN_MB, DISK_MAX_MB, DISK_ALLOWED))]


class DiskLimits(Model):
    """Size bounds of an environment's writable paths (dockyard.storage): the ext4
    filesystems of /workspace, /config, /checkpoints, $HOME and /run/secrets, and each
    tmpfs (/tmp, /var/tmp, /run/lock). Every field optional, so a profile, the stack or an
    environment sets a part."""

    workspace: DiskMB | None = None
    config: DiskMB | None = None
    checkpoints: DiskMB | None = None
    home: DiskMB | None = None
    tmp: DiskMB | None = None
    secrets: DiskMB | None = None


class _Resolved(Model):
    """Values with nothing unset, which a partial model (same field names, None for
    "not set here") overrides a part of."""

    def under(self, part: Model | None) -> Self:
        """These values with ``part``'s set ones over them; a field that is itself
        resolved (``disk``) takes ``part``'s in turn, field by field."""
        if part is None:
            return self
        update: dict[str, Any] = {}
        for key in type(self).model_fields:
            mine, given = getattr(self, key), getattr(part, key)
            if isinstance(mine, _Resolved):
                update[key] = mine.under(given)
            elif given is not None:
                update[key] = given
        return self.model_copy(update=update)


class ResolvedDisk(_Resolved):
    """Defaults of the ``standard`` profile (MB)."""

    workspace: int = 20480
    config: int = 512
    checkpoints: int = 4096
    home: int = 4096
    tmp: int = 1024
    secrets: int = 16


class Limits(Model):
    """Resource limits; every field optional so a stack or environment overrides a part."""

    cpus: v.Cpus | None = None
    memory: v.MemoryMB | None = None
    pids: v.Pids | None = None
    nofile_soft: v.Nofile | None = None
    nofile_hard: v.Nofile | None = None
    disk: DiskLimits | None = None

    @field_validator("nofile_hard")
    @classmethod
    def _soft_not_above_hard(cls, hard: int | None, info: ValidationInfo) -> int | None:
        soft = info.data.get("nofile_soft")
        if hard is not None and soft is not None and soft > hard:
            raise v.refuse(f"at least nofileSoft ({soft}): the engine refuses soft > hard")
        return hard


class ResolvedLimits(_Resolved):
    """R-ENV-4 defaults: 4 CPUs, 8192 MB, 1000 processes, nofile 1024/2048."""

    cpus: float = 4.0
    memory: int = 8192
    pids: int = 1000
    nofile_soft: int = 1024
    nofile_hard: int = 2048
    disk: ResolvedDisk = Field(default_factory=ResolvedDisk)


Runtime = Literal["runc", "runsc"]
"""The OCI runtime of an environment: ``runsc`` is gVisor (docs/isolation.md)."""

Variant = Literal["core", "python", "node", "go"]
"""The image variant of an environment: the core image, or a language runtime's layers
on top of it (docs/core-image.md)."""


class Profile(Model):
    cpus: v.Cpus | None = None
    memory: v.MemoryMB | None = None
    gpu: v.StrictBool = False
    runtime: Runtime | None = None
    variant: Variant | None = None
    disk: DiskLimits | None = None
    """Disk bounds of the profile's environments (limits.disk overrides a part)."""


LARGE_DISK = DiskLimits(workspace=102400, checkpoints=16384, home=8192, tmp=2048)
BUILTIN_PROFILES: dict[str, Profile] = {
    "standard": Profile(cpus=4, memory=8192, disk=DiskLimits()),
    "large": Profile(cpus=4, memory=16384, disk=LARGE_DISK),
    "gpu": Profile(cpus=4, memory=16384, gpu=True, disk=LARGE_DISK),
}


def known_profiles(scope: Scope) -> dict[str, Profile]:
    """The built-in profiles and the stack's own (once the stack's are known valid)."""
    return {**BUILTIN_PROFILES, **scope.get("profiles")}


def known_profile(name: str, scope: Scope | None) -> str:
    """``name`` if it is a profile of the stack; quiet while the stack's are unknown."""
    if scope is not None and scope.known("profiles"):
        known = known_profiles(scope)
        if name not in known:
            raise v.refuse("one of " + ", ".join(sorted(known)))
    return name


def _known_in_scope(name: str, info: ValidationInfo) -> str:
    return known_profile(name, scope_of(info))


KnownProfile = Annotated[v.ProfileName, AfterValidator(_known_in_scope)]
"""A profile's name, one of the stack's (built in or its own) once those are known: the
stack's default profile and a pool's."""


def resolve_limits(profile: Profile | None, stack: Limits | None, env: Limits) -> ResolvedLimits:
    """Defaults < profile < stack limits < environment limits."""
    from_profile = None
    if profile is not None:
        from_profile = Limits(cpus=profile.cpus, memory=profile.memory, disk=profile.disk)
    return ResolvedLimits().under(from_profile).under(stack).under(env)


def _profile_names(value: dict[str, Profile]) -> dict[str, Profile]:
    bad = [(name, name, v.PROFILE_ALLOWED) for name in value if not v.PROFILE_NAME.fullmatch(name)]
    if bad:
        raise v.refuse_items(bad)
    return value


Profiles = Annotated[dict[str, Profile], AfterValidator(_profile_names), v.bounded_list(64)]


class ImageSource(Model):
    """Either a published reference (``ref``) or a build of ``images/<variant>``."""

    ref: v.ImageReference | None = None
    tag: v.ImageTag | None = None
    args: BuildArgs = Field(default_factory=dict)
    extra_ca: v.HostFile | None = None
    """A PEM file of extra CA certificates to build with (a TLS-intercepting proxy's)."""


class Healthcheck(Model):
    """R-ENV-7 timing. ``start_interval`` needs engine API >= 1.44 (Docker 25); on older
    engines leave it unset: the first probe then runs one ``interval`` after start."""

    interval: v.Duration = "60s"
    timeout: v.Duration = "10s"
    retries: v.Retries = 3
    start_period: v.Duration = "30s"
    start_interval: v.Duration | None = None


KUBERNETES_DOMAINS = (
    "IPv4 addresses or CIDRs only: a NetworkPolicy cannot name domains; set "
    "kubernetes.networkPolicy: cilium for domain rules (CiliumNetworkPolicy toFQDNs)"
)


class KubernetesStorage(Model):
    """PersistentVolumeClaim sizes of the R-ENV-8 tree."""

    workspace: v.StorageMB = 10240
    config: v.StorageMB = 1024
    checkpoints: v.StorageMB = 2048


class KubernetesSettings(Model):
    """``backend: kubernetes``: where and how environments become Kubernetes objects."""

    namespace: v.DnsLabel = "dockyard"
    context: (
        Annotated[str, BeforeValidator(v.named(v.KUBE_CONTEXT, v.KUBE_CONTEXT_ALLOWED))] | None
    ) = None
    """kubeconfig context; None: the current one."""
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    network_policy: Literal["standard", "cilium"] = "standard"
    storage_class: v.DnsLabel | None = None
    storage: KubernetesStorage = Field(default_factory=KubernetesStorage)
    runtime_classes: dict[Runtime, v.DnsLabel] = Field(default_factory=lambda: {"runsc": "gvisor"})
    """Environment runtime -> RuntimeClass name; runc means the cluster's default."""
    agent_sandbox: bool = False
    """Also emit kubernetes-sigs/agent-sandbox Sandbox resources instead of a StatefulSet."""


class QuotaCaps(Model):
    """Caps on what environments on one Docker host reserve; None: no cap."""

    environments: v.Count | None = None
    cpus: v.Cpus | None = None
    memory: v.MemoryMB | None = None
    """Total memory limit of the environments, in MB (sizes with units allowed)."""


class Quotas(QuotaCaps):
    """Per Docker host caps, counted from the engine (every stack and process counts),
    and per-tenant caps inside them."""

    tenants: dict[v.Tenant, QuotaCaps] = Field(default_factory=dict)
    hosts: dict[v.HostName, QuotaCaps] = Field(default_factory=dict)
    """Caps of one named host instead of the ones above (``dockerHosts``)."""

    def for_host(self, name: str | None) -> QuotaCaps:
        return self.hosts.get(name or "", self)


# --- Host-side helpers -----------------------------------------------------------------------

HELPER_IMAGE = "debian:bookworm-slim"
"""Default ``helperImage``: the base image every dockyard image is built FROM
(images/versions.env ``BASE_IMAGE``: ``make base-image``, the docker_host role's bootstrap),
so it is on every engine that builds them; Debian's required packages give the helpers' sh,
coreutils, e2fsprogs (mkfs.ext4, e2fsck, debugfs, chattr) and mount (losetup, mountpoint)."""


# --- Backups ----------------------------------------------------------------------------------


@v.rule(contract.BACKUP_REPOSITORY_ALLOWED)
def _backup_repository(value: Any) -> str:
    if not contract.backup_repository_ok(value):
        raise v.refuse(contract.BACKUP_REPOSITORY_ALLOWED)
    return str(value)


class BackupSettings(Model):
    """Encrypted workspace backups with restic (docs/backup.md): one repository per session
    under ``repository``, each with its own password; passwords and storage keys stay in
    ``credentialsDir`` on the Docker host, never in the environment."""

    repository: Annotated[str, BeforeValidator(_backup_repository)]
    region: (
        Annotated[
            str, BeforeValidator(v.named(contract.BACKUP_REGION, contract.BACKUP_REGION_ALLOWED))
        ]
        | None
    ) = None
    credentials_dir: v.HostDir = contract.BACKUP_CREDENTIALS_DIR
    cache_dir: v.HostDir = contract.BACKUP_CACHE_DIR
    image: v.ImageReference = contract.BACKUP_IMAGE
    """The helper image restic runs in (the host's restic binary is mounted into it)."""
    restic: v.HostDir = contract.BACKUP_RESTIC
    """The restic binary on the Docker host."""
    on_destroy: v.StrictBool = True
    """Take a final backup before a session is destroyed."""


# --- The credential broker ----------------------------------------------------------------------


CA_FILE_MAX = 4 << 20  # a full system bundle is about 200 KiB


class BrokerSettings(Model):
    """Where the brokers of ``credentials: brokered`` environments forward to, and whom
    they trust there (docs/isolation.md). Defaults: the public APIs, the system CAs."""

    anthropic: v.Upstream = "https://api.anthropic.com"
    openai: v.Upstream = "https://api.openai.com"
    git: v.Upstream = "https://github.com"
    ca_file: v.HostFile | None = None
    """A PEM file of the CAs the brokers trust upstream instead of the system's, read on
    the machine that runs the program (e.g. a TLS-intercepting proxy's bundle)."""

    @field_validator("ca_file")
    @classmethod
    def _pem_file(cls, path: str | None) -> str | None:
        if path is None:
            return path
        allowed = f"an existing, readable PEM file of CA certificates (a regular file, at most {CA_FILE_MAX // 1024} KiB)"
        try:
            # A regular file of bounded size: never a FIFO or device a read would block on.
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_size > CA_FILE_MAX:
                raise v.refuse(allowed)
            with open(path, "rb") as handle:
                head = handle.read(CA_FILE_MAX)
        except OSError:
            raise v.refuse(allowed) from None
        if b"-----BEGIN CERTIFICATE-----" not in head:
            raise v.refuse("a PEM file of CA certificates (no BEGIN CERTIFICATE block found)")
        return path
