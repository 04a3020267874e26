"""dockyard's components for every Pulumi language: the component provider.

``pulumi package add <dockyard checkout>`` reads ``PulumiPlugin.yaml`` at the repository
root and runs ``provider/__main__.py``, which calls :func:`main`. Pulumi's analyzer
(``pulumi.provider.experimental``) infers the package schema from the classes below, and
the consumer's language gets a generated SDK with ``dockyard:index:AgentEnvironment`` and
``dockyard:index:AgentImage``.

Why a layer of its own: the Python components take frozen dataclasses of already
validated values (``ResolvedLimits``, parsed ``Volume`` objects, ``gpu: str | list``). A
package schema needs one type per input, no unions, typed maps. So the classes here take
flat ``TypedDict`` inputs spelled like a stack file's environment entry (``sessionId``,
``limits.nofileSoft``, ``egressAllow``...), validate them with the stack configuration's
own rules (:func:`dockyard.config.parse`: same checks, same messages), map them with
the stack program's own mapping (:func:`dockyard.program.environment_args`) and build
the very same components: an environment from TypeScript is the environment a stack file
declares.

No ``from __future__ import annotations`` here on purpose: the analyzer reads the
annotations at run time (``inspect.get_annotations``) and cannot resolve strings.
"""

import os
import re
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, NotRequired, TypedDict

import pulumi
import pulumi_docker as docker

from . import environment, image
from .assets import version
from .component import PACKAGE
from .config import ConfigError, StackConfig, from_host_settings, from_request, key_path
from .errors import InvalidInput
from .manifest import Manifest
from .program import environment_args


class InputError(InvalidInput, ValueError):
    """A component's inputs are invalid; one line per problem, each naming the input."""


# --- Enumerations ----------------------------------------------------------------------------


class Backend(Enum):
    """The agent CLI an environment is set up for."""

    CLAUDE = "claude"
    """Claude Code."""
    CODEX = "codex"
    """Codex CLI."""


class EgressMode(Enum):
    """What an environment may reach on the network."""

    OPEN = "open"
    """Everything its host reaches."""
    ALLOWLIST = "allowlist"
    """Only egressAllow, enforced on the host by the egress_guard role."""


class Runtime(Enum):
    """The OCI runtime of the agent container."""

    RUNC = "runc"
    """The engine's default."""
    RUNSC = "runsc"
    """gVisor; must be registered with the engine (docs/isolation.md)."""


class Credentials(Enum):
    """Where the API keys and the git token are kept (docs/isolation.md)."""

    FILES = "files"
    """Files in the environment (/run/secrets), exported to its CLIs."""
    BROKERED = "brokered"
    """With a broker outside the environment; the environment holds only its token."""


class Restore(Enum):
    """What a new environment's empty workspace starts with."""

    NONE = "none"
    """Nothing."""
    LATEST = "latest"
    """The session's latest backup (needs backup)."""


class ImageVariant(Enum):
    """An image build context dockyard ships (images/<variant>)."""

    CORE = "core"
    """Claude Code and Codex CLI on Debian 12."""
    GPU = "gpu"
    """The core image on a CUDA base."""
    PYTHON = "python"
    """A base image (core or gpu) with a Python toolchain."""
    NODE = "node"
    """A base image (core or gpu) with a Node.js toolchain."""
    GO = "go"
    """A base image (core or gpu) with a Go toolchain."""


# --- Input types -------------------------------------------------------------------------------


class DiskLimits(TypedDict, total=False):
    """Size bounds in MB of the writable paths; each one left out takes the profile's."""

    workspace: int
    """/workspace (default 20480)."""
    config: int
    """/config (default 512)."""
    checkpoints: int
    """/checkpoints (default 4096)."""
    home: int
    """$HOME, /home/agent (default 4096)."""
    tmp: int
    """Each of /tmp, /var/tmp, /run/lock, a tmpfs (default 1024)."""
    secrets: int
    """/run/secrets (default 16)."""


class Limits(TypedDict, total=False):
    """Resource limits; each one left out takes the profile's or dockyard's default."""

    cpus: float
    """CPUs, as a CFS quota (default 4; above the host's cores it does not bind)."""
    memory: int
    """Memory limit in MB (default 8192); no swap is added on top."""
    pids: int
    """Most processes and threads at once (default 1000), applied as the cgroup pids limit."""
    nofile_soft: int
    """Open files, soft limit (default 1024)."""
    nofile_hard: int
    """Open files, hard limit (default 2048)."""
    disk: DiskLimits
    """Size bounds of every writable path (docs/stacks.md, disk bounds)."""


class Healthcheck(TypedDict, total=False):
    """Health probe timing, as durations such as 500ms, 10s, 1m."""

    interval: str
    """Between probes (default 60s)."""
    timeout: str
    """Per probe (default 10s)."""
    retries: int
    """Failed probes before unhealthy (default 3)."""
    start_period: str
    """Grace period after start (default 30s)."""
    start_interval: str
    """Between probes during the start period; needs engine API 1.44 (Docker 25)."""


class Backup(TypedDict, total=False):
    """Encrypted workspace backups with restic (docs/backup.md)."""

    repository: str
    """s3:[http[s]://]host[:port]/bucket[/prefix]; each session gets <repository>/<stack>/<session>."""
    region: str
    """The storage's region, if it needs one."""
    credentials_dir: str
    """The Docker host's private directory of passwords and storage keys (default /etc/dockyard/backup)."""
    cache_dir: str
    """restic's cache and the host's locks (default /var/cache/dockyard/backup)."""
    image: str
    """The helper image restic runs in (default debian:bookworm-slim)."""
    restic: str
    """The restic binary on the Docker host (default /usr/bin/restic)."""
    on_destroy: bool
    """A final backup before a session is destroyed (default true)."""


class Broker(TypedDict, total=False):
    """Where credential brokers forward to (credentials brokered)."""

    anthropic: str
    """https URL without a path (default https://api.anthropic.com)."""
    openai: str
    """https URL without a path (default https://api.openai.com)."""
    git: str
    """https URL of the git host (default https://github.com)."""
    ca_file: str
    """PEM file of the CAs trusted upstream instead of the system's."""


class AgentEnvironmentInputs(TypedDict):
    """An environment as a stack file's environment entry declares it, plus the stack-wide settings it needs."""

    session_id: str
    """Session id: names the container, network and volumes (letters, digits, '_', '.', '-'; at most 63)."""
    image_id: pulumi.Input[str]
    """The image the container runs, e.g. an AgentImage's imageId."""
    image_ref: NotRequired[pulumi.Input[str]]
    """What the manifest reports as the image (default: imageId)."""
    backend: NotRequired[Backend]
    """Agent CLI (default claude)."""
    ports: NotRequired[list[int]]
    """Container ports published on host ports the engine picks (in the manifest)."""
    volumes: NotRequired[list[str]]
    """Extra mounts, 'host-path:container-path[:ro]' or 'volume:container-path[:ro]'; host paths under cwd or bindRoots."""
    env: NotRequired[dict[str, str]]
    """Environment variables (no secrets: use secrets)."""
    secrets: NotRequired[dict[str, pulumi.Input[str]]]
    """Secret name -> value, delivered only as a file under /run/secrets."""
    limits: NotRequired[Limits]
    """Resource limits over the profile's."""
    profile: NotRequired[str]
    """Resource profile: standard, large or gpu (default standard)."""
    gpu: NotRequired[list[str]]
    """GPUs: ['all'], or device ids; needs the gpu profile."""
    labels: NotRequired[dict[str, str]]
    """Extra labels on the container, network and volumes (keys outside dockyard.*)."""
    workspace_host_path: NotRequired[str]
    """Host directory the workspace volume keeps its data in (default: engine storage)."""
    egress: NotRequired[EgressMode]
    """Network reach (default open)."""
    egress_allow: NotRequired[list[str]]
    """With egress allowlist: presets, domains, IPv4 CIDRs, each with an optional :port."""
    runtime: NotRequired[Runtime]
    """OCI runtime (default: the profile's, else runc)."""
    tenant: NotRequired[str]
    """Whose session this is: a label and a manifest subfolder."""
    stack: NotRequired[str]
    """Name used in engine-side names and labels (default: the Pulumi stack's name)."""
    cwd: NotRequired[str]
    """Project directory: manifests go below it, bind mounts come from it (default: the provider's working directory)."""
    manifest_dir: NotRequired[str]
    """Manifest directory, relative to cwd or absolute (default .companion/cloud/environments)."""
    bind_roots: NotRequired[list[str]]
    """Host directories bind mounts may come from, besides cwd."""
    docker_host: NotRequired[str]
    """The engine, e.g. ssh://agent@team-host (default: the local one)."""
    healthcheck: NotRequired[Healthcheck]
    """Health probe timing."""
    backup: NotRequired[Backup]
    """Where the session's backups are (for restore)."""
    restore: NotRequired[Restore]
    """At create: latest restores the session's latest backup into its empty workspace (default none)."""
    ssh: NotRequired[bool]
    """sshd in the environment, certificates from the stack's SSH user CA only (default false)."""
    publish_address: NotRequired[str]
    """IPv4 address published ports bind to (default 127.0.0.1; see docs/access.md)."""
    credentials: NotRequired[Credentials]
    """Where the API keys and git token are kept (default files)."""
    broker: NotRequired[Broker]
    """Upstreams of the credential broker (credentials brokered)."""


class AgentImageInputs(TypedDict, total=False):
    """A published image (ref), or a build of the context dockyard ships."""

    variant: ImageVariant
    """Build context (default core)."""
    ref: str
    """A published image to use instead of a build."""
    build_args: dict[str, str]
    """Build args over the pinned versions (images/versions.env)."""
    repository: str
    """Repository of the built image's tag (default dockyard-core, dockyard-gpu for gpu)."""
    tag_prefix: str
    """Tag prefix; the tag ends in a digest of the build inputs (default: the stack's name)."""
    context: str
    """A build context directory with a Dockerfile (default: the one dockyard ships)."""
    extra_ca: str
    """A PEM file of extra CA certificates to build with (a TLS-intercepting proxy's)."""
    base_variant: ImageVariant
    """For python, node and go: the variant they build FROM, core or gpu (default core)."""
    docker_host: str
    """The engine that builds and keeps the image, e.g. ssh://agent@team-host (default: the local one)."""


# --- Output types: manifest contract v1 (dockyard.manifest: one type for every face) -----------


# --- Components ----------------------------------------------------------------------------------


class AgentEnvironment(environment.AgentEnvironment):
    """One isolated agent environment: network, volumes, a hardened container with limits, a manifest file."""

    # Every output of the base class is declared again with a type the schema can hold
    # (the base's annotations are strings and its manifest an untyped dict).
    container_id: pulumi.Output[str]
    """The engine's id of the agent container."""
    container_name: pulumi.Output[str]
    """The container's name (also the environment id)."""
    manifest: pulumi.Output[Manifest]  # type: ignore[assignment]  # the base types it as dict
    """The manifest, as written to manifestPath."""
    manifest_path: str
    """Where the manifest file is written."""

    def __init__(
        self,
        name: str,
        args: AgentEnvironmentInputs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        env_args = to_environment_args(name, args)
        super().__init__(name, env_args, _on_engine(name, env_args.docker_host, opts))


class AgentImage(image.AgentImage):
    """The image environments run: a build of the context dockyard ships, or a published reference."""

    image_ref: pulumi.Output[str]
    """What manifests report: the repo digest where the engine knows one, else the tag."""
    image_id: pulumi.Output[str]
    """What containers use: changes whenever the image does."""
    tag: str
    """The built tag, or the published reference: what another build can use FROM."""

    def __init__(
        self,
        name: str,
        args: AgentImageInputs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        docker_host = args.get("docker_host")
        super().__init__(name, to_image_args(name, args), _on_engine(name, docker_host, opts))


COMPONENTS: list[type[pulumi.ComponentResource]] = [AgentEnvironment, AgentImage]


def _on_engine(
    name: str, docker_host: str | None, opts: pulumi.ResourceOptions | None
) -> pulumi.ResourceOptions | None:
    """``opts`` sending the component's Docker resources to ``docker_host``, as the stack
    program does with its ``docker-host`` provider; unchanged for the default engine."""
    if not docker_host:
        return opts
    engine = docker.Provider(
        f"{name}-engine",
        host=docker_host,
        opts=pulumi.ResourceOptions(parent=opts.parent if opts else None),
    )
    return pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(providers=[engine]))


def main() -> None:
    """Serve the components to the Pulumi engine (``provider/__main__.py`` runs this; the
    engine's address is in ``sys.argv``)."""
    from pulumi.provider.experimental import component_provider_host

    component_provider_host(COMPONENTS, name=PACKAGE, version=version())


# --- Inputs to the Python components -----------------------------------------------------------

# Input name -> the stack configuration key it is checked as (None: an environment key
# spelled the same). Problems found under the config key are reported under the input name.
_STACK_KEYS = {
    "manifest_dir": "manifestDir",
    "bind_roots": "bindRoots",
    "docker_host": "dockerHost",
    "healthcheck": "healthcheck",
    "backup": "backup",
    "publish_address": "publishAddress",
    "broker": "broker",
}
_NOT_CONFIG = {"image_id", "image_ref", "stack", "cwd", "secrets"}
_IMAGE_KEYS = {"ref": "ref", "tag_prefix": "tag", "build_args": "args", "extra_ca": "extraCa"}


def to_environment_args(name: str, inputs: Mapping[str, Any]) -> environment.AgentEnvironmentArgs:
    """Validate ``inputs`` like a one-environment stack and map them like the stack program
    does. Raises :class:`InputError` listing every problem, each under its input name."""
    _require_plain(name, "AgentEnvironment", inputs, allowed_outputs={"image_id", "image_ref"})
    secrets = dict(inputs.get("secrets") or {})
    entry: dict[str, Any] = {"secrets": list(secrets)}
    settings: dict[str, Any] = {}
    for key, value in inputs.items():
        if key in _NOT_CONFIG:
            continue
        if key in _STACK_KEYS:
            settings[_STACK_KEYS[key]] = _schema_to_config(value, key)
        else:
            entry[_camel(key)] = _schema_to_config(value, key)
    cfg, problems = _checked(
        lambda: from_request(
            settings,
            entry,
            stack=inputs.get("stack") or pulumi.get_stack(),
            cwd=inputs.get("cwd") or os.getcwd(),
            check_secrets=False,
            name=_environment_input,
        )
    )
    if cfg is None:
        raise InputError(_report("AgentEnvironment", name, problems))
    image_id = inputs["image_id"]
    return environment_args(
        cfg,
        cfg.environments[0],
        image_id=image_id,
        image_ref=inputs.get("image_ref") or image_id,
        # Secret whatever the caller passed: a plain string from a program must not
        # reach the state in clear text.
        secrets={key: pulumi.Output.secret(value) for key, value in secrets.items()},
    )


def to_image_args(name: str, inputs: Mapping[str, Any]) -> image.AgentImageArgs:
    """Validate ``inputs`` with the stack configuration's image rules; raises
    :class:`InputError` listing every problem, each under its input name."""
    _require_plain(name, "AgentImage", inputs, allowed_outputs=set())
    variants = [v.value for v in ImageVariant]
    variant = _plain(inputs.get("variant") or ImageVariant.CORE)
    base_variant = _plain(inputs.get("base_variant") or ImageVariant.CORE)
    problems = []
    if variant not in variants:
        problems.append(f"variant: {variant!r} is not allowed (allowed: {', '.join(variants)})")
    if base_variant not in image.BASE_VARIANTS:
        problems.append(
            f"baseVariant: {base_variant!r} is not allowed "
            f"(allowed: {', '.join(image.BASE_VARIANTS)})"
        )
    repository = inputs.get("repository") or None  # None: AgentImageArgs' default
    if repository is not None and (
        not isinstance(repository, str) or not _REPOSITORY.fullmatch(repository)
    ):
        problems.append(
            f"repository: {repository!r} is not allowed (allowed: an image repository such as "
            "dockyard-core or registry.example.com/team/agents: lower-case, no tag)"
        )
    source = {config: inputs[key] for key, config in _IMAGE_KEYS.items() if key in inputs}
    settings: dict[str, Any] = {"image": source}
    if "docker_host" in inputs:
        settings["dockerHost"] = inputs["docker_host"]
    cfg, config_problems = _checked(
        lambda: from_host_settings(
            settings,
            stack=pulumi.get_stack(),
            cwd=os.getcwd(),
            check_secrets=False,
            name=_image_input,
        )
    )
    problems.extend(config_problems)
    if cfg is None or problems:
        raise InputError(_report("AgentImage", name, problems))
    return image.AgentImageArgs(
        variant=variant,
        ref=cfg.image.ref,
        build_args=dict(cfg.image.args),
        repository=repository,
        tag_prefix=cfg.image.tag or cfg.stack,
        context=inputs.get("context"),
        extra_ca=cfg.image.extra_ca,
        base_variant=base_variant,
    )


# A repository without tag or digest: optional registry host[:port], lower-case path parts.
_REPOSITORY = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*",
    re.ASCII,
)


def _checked(parse: Callable[[], StackConfig]) -> tuple[StackConfig | None, list[str]]:
    """The stack configuration's verdict: the parsed config, or its problems (keys
    named as inputs by the entry's naming function)."""
    try:
        return parse(), []
    except ConfigError as error:
        return None, error.problems


# Image settings named as the AgentImage inputs that carry them.
_IMAGE_INPUTS = {"tag": "tagPrefix", "args": "buildArgs"}


def _environment_input(loc: tuple[int | str, ...]) -> str:
    """An AgentEnvironment input's key: the environment's keys as they are, stack keys
    in the configuration's spelling, without the namespace."""
    if loc[:2] == ("environments", 0) and len(loc) > 2:
        loc = loc[2:]
    return key_path(loc, prefix="")


def _image_input(loc: tuple[int | str, ...]) -> str:
    """An AgentImage input's key (``tagPrefix``, ``buildArgs.X``, ``extraCa``...)."""
    if loc[:1] == ("image",) and len(loc) > 1 and isinstance(loc[1], str):
        loc = (_IMAGE_INPUTS.get(loc[1], loc[1]), *loc[2:])
    return key_path(loc, prefix="")


def _report(component: str, name: str, problems: list[str]) -> str:
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return f"{component} {name!r}: the inputs are invalid ({count}); nothing was created:\n" + (
        "\n".join(f"  - {problem}" for problem in problems)
    )


def _require_plain(
    name: str, component: str, inputs: Mapping[str, Any], allowed_outputs: set[str]
) -> None:
    """Inputs that decide names and checks must be known when the program runs (the
    schema marks them plain); secrets may hold outputs as values, not as the whole map."""
    outputs = sorted(
        _camel(key)
        for key, value in inputs.items()
        if key not in allowed_outputs and isinstance(value, pulumi.Output)
    )
    if outputs:
        raise InputError(
            _report(
                component,
                name,
                [
                    f"{key}: an output is not allowed (allowed: a value known when the program "
                    "runs; only imageId, imageRef and the values of secrets may be outputs)"
                    for key in outputs
                ],
            )
        )


def _schema_to_config(value: Any, key: str) -> Any:
    """A schema value as a stack file spells it: enums as their value, the keys of
    limits and healthcheck camelCased, whole-number floats (how numbers cross the wire)
    as integers, gpu ['all'] as 'all'."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        camel = key in ("limits", "healthcheck", "backup")
        return {(_camel(k) if camel else k): _schema_to_config(v, "") for k, v in value.items()}
    if isinstance(value, list):
        if key == "gpu" and value == ["all"]:
            return "all"
        return [_schema_to_config(v, "") for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)
