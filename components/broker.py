"""CredentialBroker: an environment's API keys and git token stay outside it
(``credentials: brokered``, docs/isolation.md).

Children, all parented to the component and named after it:
  <name>-net        an internal network only the environment and its broker join: the
                    environment reaches the broker there, and nothing else through it
  <name>-uplink     the broker's own bridge network, its only way out (the environment's
                    egress allowlist does not apply to it: the broker reaches the APIs,
                    the agent does not need to)
  <name>-image      the broker image (images/broker), unless the program shares one
  <name>-container  Caddy (images/broker): takes the environment's token where the CLI
                    sends its key, sets the real key, forwards over TLS
  <name>-pids       local.Command: the container's cgroup pids cap

The environment holds only its token, derived from the keys and the environment's engine
name (HMAC-SHA256): unguessable without the keys, the same on every ``pulumi up`` (no
replacement without a change), different for every environment, new when a key is.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_command as command
import pulumi_docker as docker

from .assets import images_dir
from .component import Component
from .contract import LABEL_BROKER
from .image import AgentImage, AgentImageArgs

BROKER_UID = "999"  # the Debian caddy package's system user (images/broker/Dockerfile)
SECRETS_DIR = "/run/secrets"
TOKEN_NAME = "DOCKYARD_BROKER_TOKEN"  # noqa: S105 - a file name, not a value
CA_PATH = f"{SECRETS_DIR}/upstream-ca.pem"
PORTS = {"anthropic": 8081, "openai": 8082, "git": 8083}
SERVICE_OF = {"ANTHROPIC_API_KEY": "anthropic", "OPENAI_API_KEY": "openai", "GITHUB_TOKEN": "git"}
"""The secrets a broker holds, each with the service it stands in for (the config's
``BROKERED_SECRETS``); any other secret of the environment stays a file in it."""
UPSTREAM_ENV = {
    "anthropic": "DOCKYARD_ANTHROPIC_UPSTREAM",
    "openai": "DOCKYARD_OPENAI_UPSTREAM",
    "git": "DOCKYARD_GIT_UPSTREAM",
}
MEMORY_MB = 128
PIDS_LIMIT = 128  # Caddy is one Go process; its threads count too
# `docker update` is the only way to set the cgroup pids limit on an existing container
# (pulumi-docker has no input for it); the environment's runtime command runs it too.
PIDS_SCRIPT = (
    'docker update --pids-limit "$DOCKYARD_PIDS_LIMIT" "$DOCKYARD_CONTAINER_ID" >/dev/null'
)
CPU_PERIOD_US = 100_000
CPU_QUOTA_US = 50_000  # half a CPU: Caddy proxying one agent's calls needs far less
TOKEN_CONTEXT = b"dockyard-broker-token-v1\0"


def token_for(environment_id: str, keys: Sequence[str]) -> str:
    """The environment's token: HMAC-SHA256 keyed by the brokered values (in secret-name
    order) over the environment's engine name. Not a key format any API accepts."""
    material = b"\0".join(value.encode() for value in keys)
    digest = hmac.new(material, TOKEN_CONTEXT + environment_id.encode(), hashlib.sha256)
    return "dockyard-broker-" + digest.hexdigest()[:48]


def base_url(host: str, service: str) -> str:
    """What the environment's CLI (or git) is pointed at for ``service``."""
    suffix = "/v1" if service == "openai" else ""
    return f"http://{host}:{PORTS[service]}{suffix}"


@dataclass(frozen=True)
class BrokerPlan:
    """What an environment's broker needs beyond the environment's own args."""

    keys: Mapping[str, pulumi.Input[str]]
    """Brokered secret name (a key of :data:`SERVICE_OF`) -> its real value."""
    upstreams: Mapping[str, str]
    """Service -> https URL it forwards to (``dockyard:broker``)."""
    ca_pem: str | None = None
    """The CAs it trusts upstream instead of the system's (PEM text)."""
    image_id: pulumi.Input[str] | None = None
    """A broker image the program shares between environments; None: built here."""
    build_args: Mapping[str, str] = field(default_factory=dict)
    """Build args for the broker image built here (BASE_IMAGE)."""
    tag_prefix: str = "local"
    extra_ca: str | None = None
    """A PEM file the image built here trusts (the stack's image.extraCa)."""

    @property
    def services(self) -> list[str]:
        return sorted(SERVICE_OF[name] for name in self.keys)


def broker_image_args(
    tag_prefix: str, build_args: Mapping[str, str], extra_ca: str | None
) -> AgentImageArgs:
    """The broker image: images/broker on the same base image as the core image."""
    return AgentImageArgs(
        context=str(images_dir() / "broker"),
        repository="dockyard-broker",
        tag_prefix=tag_prefix,
        build_args={k: v for k, v in build_args.items() if k == "BASE_IMAGE"},
        extra_ca=extra_ca,
    )


@dataclass(frozen=True)
class CredentialBrokerArgs:
    environment_id: str
    """The environment's engine name (dockyard.environment.resource_prefix)."""
    plan: BrokerPlan
    labels: Mapping[str, str] = field(default_factory=dict)
    """The environment's identifying labels (stack, session, environment)."""
    docker_host: str | None = None
    """The engine's URL when it is not the local one (for the pids command)."""


class CredentialBroker(Component):
    host: str
    """The broker's name on the environment's side: what the base URLs point at."""
    network_name: pulumi.Output[str]
    """The internal network the environment joins to reach it."""
    token: pulumi.Output[str]
    """The environment's token (a secret): what it holds in place of every key."""
    container_id: pulumi.Output[str]

    def __init__(
        self, name: str, args: CredentialBrokerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("CredentialBroker", name, opts)
        plan = args.plan
        self.host = f"{args.environment_id}-broker"
        labels = {**args.labels, LABEL_BROKER: "true"}

        network = docker.Network(
            f"{name}-net",
            name=self.host,
            driver="bridge",
            # No way out through this network: it only joins the environment to its broker.
            internal=True,
            labels=_labels(docker.NetworkLabelArgs, labels),
            opts=self.child,
        )
        uplink = docker.Network(
            f"{name}-uplink",
            name=f"{self.host}-uplink",
            driver="bridge",
            labels=_labels(docker.NetworkLabelArgs, labels),
            opts=self.child,
        )
        image_id = plan.image_id
        if image_id is None:
            image_id = AgentImage(
                f"{name}-image",
                broker_image_args(plan.tag_prefix, plan.build_args, plan.extra_ca),
                opts=self.child,
            ).image_id

        names = sorted(plan.keys)
        self.token = pulumi.Output.secret(
            pulumi.Output.all(*(plan.keys[n] for n in names)).apply(
                lambda values: token_for(args.environment_id, [str(v) for v in values])
            )
        )
        uploads = [
            _secret_file(f"{SECRETS_DIR}/{secret}", plan.keys[secret]) for secret in names
        ] + [_secret_file(f"{SECRETS_DIR}/{TOKEN_NAME}", self.token)]
        if plan.ca_pem:
            uploads.append(_secret_file(CA_PATH, plan.ca_pem, mode="0444"))
        container = docker.Container(
            f"{name}-container",
            name=self.host,
            image=image_id,
            hostname=self.host,
            user=f"{BROKER_UID}:{BROKER_UID}",
            restart="unless-stopped",
            must_run=True,
            stop_timeout=5,
            # An internal network never carries a container's default route: the broker
            # leaves through its uplink, the only other network it is on.
            networks_advanced=[
                docker.ContainerNetworksAdvancedArgs(name=uplink.name),
                docker.ContainerNetworksAdvancedArgs(name=network.name),
            ],
            envs=[
                *(f"{UPSTREAM_ENV[s]}={plan.upstreams[s]}" for s in plan.services),
                *([f"DOCKYARD_UPSTREAM_CA={CA_PATH}"] if plan.ca_pem else []),
            ],
            uploads=uploads,
            labels=_labels(docker.ContainerLabelArgs, labels),
            cpu_period=CPU_PERIOD_US,
            cpu_quota=CPU_QUOTA_US,
            memory=MEMORY_MB,
            memory_swap=MEMORY_MB,
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
            security_opts=["no-new-privileges:true"],
            opts=self.child,
        )
        command.local.Command(
            f"{name}-pids",
            create=PIDS_SCRIPT,
            environment={
                **({"DOCKER_HOST": args.docker_host} if args.docker_host else {}),
                "DOCKYARD_CONTAINER_ID": container.id,
                "DOCKYARD_PIDS_LIMIT": str(PIDS_LIMIT),
            },
            triggers=[container.id],
            opts=self.child,
        )
        self.network_name = network.name
        self.container_id = container.id
        self.register_outputs(
            {"host": self.host, "networkName": self.network_name, "containerId": container.id}
        )


def environment_variables(
    host: str, services: Sequence[str], upstreams: Mapping[str, str]
) -> list[str]:
    """What the environment gets in place of its keys: base URLs at its broker and, for
    git, a rewrite of the git host to the broker (the credential helper answers there
    with the token, images/core/git-askpass.sh)."""
    variables = []
    if "anthropic" in services:
        variables.append(f"ANTHROPIC_BASE_URL={base_url(host, 'anthropic')}")
    if "openai" in services:
        variables.append(f"OPENAI_BASE_URL={base_url(host, 'openai')}")
    if "git" in services:
        variables += [
            "GIT_CONFIG_COUNT=1",
            f"GIT_CONFIG_KEY_0=url.{base_url(host, 'git')}/.insteadOf",
            f"GIT_CONFIG_VALUE_0={upstreams['git']}/",
            f"DOCKYARD_GIT_BROKER={host}:{PORTS['git']}",
        ]
    return variables


CODEX_SYSTEM_CONFIG = "/etc/codex/config.toml"
"""Codex's system configuration layer: below the user's own ``$CODEX_HOME/config.toml``,
so nothing of the user's is rewritten, and gone with the container."""


def codex_config(host: str) -> str:
    """Codex's built-in OpenAI provider takes neither ``OPENAI_BASE_URL`` nor the key from
    ``OPENAI_API_KEY``; a provider of its own does both (measured with Codex 0.169)."""
    return (
        "# dockyard, credentials: brokered — Codex reaches OpenAI through this\n"
        "# environment's credential broker, with the environment's token as its key.\n"
        'model_provider = "dockyard-broker"\n\n'
        "[model_providers.dockyard-broker]\n"
        'name = "OpenAI (through the dockyard credential broker)"\n'
        f'base_url = "{base_url(host, "openai")}"\n'
        'env_key = "OPENAI_API_KEY"\n'
        'wire_api = "responses"\n'
    )


def _secret_file(
    path: str, content: pulumi.Input[str], mode: str = "0400"
) -> docker.ContainerUploadArgs:
    return docker.ContainerUploadArgs(
        file=path, content=content, permissions=mode, owner=BROKER_UID, group=BROKER_UID
    )


def _labels(kind: type, labels: Mapping[str, str]) -> list:
    return [kind(label=key, value=value) for key, value in sorted(labels.items())]
