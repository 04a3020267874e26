"""KubernetesEnvironment: one agent session's environment on a Kubernetes cluster
(``dockyard:backend: kubernetes``; docs/kubernetes.md).

Children, all parented to the component and named after it:
  <name>-workspace     PersistentVolumeClaims of the R-ENV-8 tree, mounted at /workspace,
  <name>-config        /config and /checkpoints
  <name>-checkpoints
  <name>-vol-<volume>  a claim per declared named volume
  <name>-secrets       Secret of the listed secrets, mounted as files (only with secrets)
  <name>-statefulset   StatefulSet of one replica: stable Pod name, restarted when it dies
  <name>-sandbox       ... or, with ``agentSandbox``, an agent-sandbox Sandbox instead
  <name>-service       Service for the requested ports (only with ports)
  <name>-deny          NetworkPolicy: default deny, in and out
  <name>-ingress       NetworkPolicy: the requested ports in (only with ports)
  <name>-egress        NetworkPolicy: everything (egress: open) or the allowlist's addresses
  <name>-fqdn          CiliumNetworkPolicy: the allowlist's domains (networkPolicy: cilium)
  <name>-manifest      local.Command: writes the v1 manifest file, removes it on destroy

The claims are standalone objects, not the StatefulSet's volumeClaimTemplates: Pulumi
owns them (``pulumi destroy`` removes them like the Docker backend's volumes, a resize
is an update), whereas template claims outlive their StatefulSet unmanaged and the
templates themselves cannot change without replacing it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from . import kubernetes_objects as objects
from . import manifest as manifest_contract
from .component import Component
from .config import (
    ConfigError,
    Limits,
    StackConfig,
    key_path,
    resolve_limits,
)
from .contract import LABEL_VOLUME, STOP_TIMEOUT_S
from .environment_inputs import EnvironmentInputs
from .kubernetes_sandbox import SANDBOX_API_VERSION, AgentSandboxPool, AgentSandboxPoolArgs
from .manifest_file import declare_manifest_file, manifest_path

CILIUM_API_VERSION = "cilium.io/v2"
IMAGE_ALLOWED = (
    "a published image reference the cluster can pull (e.g. ghcr.io/acme/dockyard-core:1.4): "
    "backend kubernetes builds nothing; set it here or as the environment's image"
)


@dataclass(frozen=True, kw_only=True)
class KubernetesEnvironmentArgs(EnvironmentInputs):
    """Flat, already-validated inputs for one environment on a cluster: the backends'
    shared ones (:class:`EnvironmentInputs`) and these."""

    image: pulumi.Input[str]
    """A published reference: the cluster pulls it."""
    namespace: str
    storage_mb: Mapping[str, int]
    """Claim size per R-ENV-8 role (workspace, config, checkpoints), in MiB."""
    volume_mb: int
    """Claim size of each declared named volume, in MiB."""
    storage_class: str | None = None
    service_type: str = "ClusterIP"
    network_policy: str = "standard"
    runtime_class: str | None = None
    """RuntimeClass of the Pod (e.g. gvisor); None: the cluster's default runtime."""
    agent_sandbox: bool = False
    """An agent-sandbox Sandbox instead of the StatefulSet."""


class KubernetesEnvironment(Component):
    workload_name: str
    pod_name: str
    """The Pod to exec into (``kubectl exec <pod> -c agent``); the manifest's container name."""
    manifest: pulumi.Output[dict]
    manifest_path: str

    def __init__(
        self,
        name: str,
        args: KubernetesEnvironmentArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("KubernetesEnvironment", name, opts)
        workload = objects.environment_name(args.stack, args.session_id)
        labels, annotations = objects.environment_metadata(
            name=workload,
            stack=args.stack,
            session_id=args.session_id,
            backend=args.backend,
            egress_mode=args.egress,
            user_labels=args.labels,
        )

        def metadata(object_name: str, **extra_labels: str) -> dict[str, Any]:
            return {
                "name": object_name,
                "namespace": args.namespace,
                "labels": {**labels, **extra_labels},
                "annotations": annotations,
            }

        claims = objects.claim_names(workload, args.volumes)
        sizes = {
            **args.storage_mb,
            **{volume: args.volume_mb for volume in claims if volume not in args.storage_mb},
        }
        pvcs = [
            k8s.core.v1.PersistentVolumeClaim(
                f"{name}-{volume}",
                metadata=metadata(claim, **{LABEL_VOLUME: volume}),
                spec=objects.claim_spec(sizes[volume], args.storage_class),
                opts=self.child,
            )
            for volume, claim in claims.items()
        ]

        secret = None
        if args.secrets:
            secret = k8s.core.v1.Secret(
                f"{name}-secrets",
                metadata=metadata(f"{workload}-secrets"),
                type="Opaque",
                string_data=dict(args.secrets),
                opts=self.child,
            )

        pod = objects.pod_spec(
            image=args.image,
            session_id=args.session_id,
            backend=args.backend,
            env=args.env,
            ports=args.ports,
            limits=args.limits,
            healthcheck=args.healthcheck,
            volumes=args.volumes,
            claims=claims,
            secret_name=f"{workload}-secrets" if secret is not None else None,
            runtime_class=args.runtime_class,
            gpu=args.gpu,
            termination_grace_seconds=STOP_TIMEOUT_S,
        )
        pod_annotations: dict[str, Any] = {
            **annotations,
            objects.LIMITS_ANNOTATION: json.dumps(
                args.limits.model_dump(by_alias=True), sort_keys=True
            ),
        }
        if secret is not None:
            # A changed secret gives the Secret a new revision, which rolls the Pod: the
            # entrypoint reads the files once, at start (the Docker backend recreates the
            # container for the same reason).
            pod_annotations[objects.SECRETS_REVISION_ANNOTATION] = secret.metadata.apply(
                lambda meta: _meta_field(meta, "resourceVersion") or ""
            )
        template = {
            "metadata": {"labels": labels, "annotations": pod_annotations},
            "spec": pod,
        }
        after_storage = pulumi.ResourceOptions(
            parent=self, depends_on=[*pvcs, *([secret] if secret is not None else [])]
        )
        workload_resource: pulumi.CustomResource
        if args.agent_sandbox:
            workload_resource = k8s.apiextensions.CustomResource(
                f"{name}-sandbox",
                api_version=SANDBOX_API_VERSION,
                kind="Sandbox",
                metadata=metadata(workload),
                # Our own Service carries the ports; the controller's headless one would
                # take the same name.
                spec={"podTemplate": template, "service": False},
                opts=after_storage,
            )
            self.pod_name = workload  # the controller names the Pod after the Sandbox
        else:
            workload_resource = k8s.apps.v1.StatefulSet(
                f"{name}-statefulset",
                metadata=metadata(workload),
                spec={
                    "replicas": 1,
                    "serviceName": workload,
                    "selector": {"matchLabels": objects.selector_labels(workload)},
                    "template": template,
                },
                opts=after_storage,
            )
            self.pod_name = f"{workload}-0"

        resolved_ports: pulumi.Output[list[dict[str, int]]] = pulumi.Output.from_input([])
        if args.ports:
            service = k8s.core.v1.Service(
                f"{name}-service",
                metadata=metadata(workload),
                spec={
                    "type": args.service_type,
                    "selector": objects.selector_labels(workload),
                    "ports": [
                        {
                            "name": objects.port_name(port),
                            "port": port,
                            "targetPort": port,
                            "protocol": "TCP",
                        }
                        for port in args.ports
                    ],
                },
                opts=self.child,
            )
            resolved_ports = service.spec.apply(
                lambda spec: service_port_mappings(spec, args.service_type)
            )

        self._network_policies(name, workload, args, metadata, self.child)

        self.workload_name = workload
        self.manifest = pulumi.Output.all(
            workload_resource.metadata, resolved_ports, args.image
        ).apply(
            lambda values: args.manifest(
                environment_id=self.pod_name,
                created_at=_required(values[0], "creationTimestamp", workload),
                image=values[2],
                container_id=container_id(_required(values[0], "uid", workload)),
                container_name=self.pod_name,
                ports=values[1],
            )
        )
        self.manifest_path = manifest_path(args.manifest_dir, args.session_id)
        declare_manifest_file(name, self.manifest, self.manifest_path, self.child)

        self.register_outputs(
            {
                "workloadName": self.workload_name,
                "podName": self.pod_name,
                "manifest": self.manifest,
                "manifestPath": self.manifest_path,
            }
        )

    def _network_policies(
        self,
        name: str,
        workload: str,
        args: KubernetesEnvironmentArgs,
        metadata: Callable[..., dict[str, Any]],
        child: pulumi.ResourceOptions,
    ) -> None:
        """Default deny both ways, then what is allowed: policies only ever add."""
        selector = {"matchLabels": objects.selector_labels(workload)}
        k8s.networking.v1.NetworkPolicy(
            f"{name}-deny",
            metadata=metadata(f"{workload}-deny"),
            spec={"podSelector": selector, "policyTypes": ["Ingress", "Egress"]},
            opts=child,
        )
        ingress = objects.ingress_rules(args.ports)
        if ingress:
            k8s.networking.v1.NetworkPolicy(
                f"{name}-ingress",
                metadata=metadata(f"{workload}-ingress"),
                spec={"podSelector": selector, "policyTypes": ["Ingress"], "ingress": ingress},
                opts=child,
            )
        egress = objects.egress_rules(args.egress, args.egress_rules)
        if egress is not None:
            k8s.networking.v1.NetworkPolicy(
                f"{name}-egress",
                metadata=metadata(f"{workload}-egress"),
                spec={"podSelector": selector, "policyTypes": ["Egress"], "egress": egress},
                opts=child,
            )
        fqdn = (
            objects.cilium_egress(args.egress_rules, args.network_policy)
            if args.egress == "allowlist"
            else None
        )
        if fqdn is not None:
            k8s.apiextensions.CustomResource(
                f"{name}-fqdn",
                api_version=CILIUM_API_VERSION,
                kind="CiliumNetworkPolicy",
                metadata=metadata(f"{workload}-fqdn"),
                spec={"endpointSelector": selector, "egress": fqdn},
                opts=child,
            )


def container_id(uid: str) -> str:
    """The manifest's container id: the SHA-256 of the workload's ``metadata.uid``.

    A Pod's container id exists only once it runs and changes at every restart; the
    StatefulSet's (or Sandbox's) uid is assigned by the API server at creation, unique
    in the cluster and stable for the environment's life. Hashing it gives the 64 hex
    digits the v1 contract's writer requires."""
    return hashlib.sha256(uid.encode()).hexdigest()


def service_port_mappings(spec: Any, service_type: str) -> list[dict[str, int]]:
    """The Service's resolved ports as (container port, port to connect to).

    NodePort: the node port the API server allocated (reachable on every node's
    address). ClusterIP and LoadBalancer: the Service's port, which is the container
    port (in the cluster, or on the load balancer's address)."""
    mappings = []
    for port in _meta_field(spec, "ports") or []:
        external = (
            _meta_field(port, "nodePort")
            if service_type == "NodePort"
            else _meta_field(port, "port")
        )
        mappings.append({"internal": int(_meta_field(port, "targetPort")), "external": external})
    return mappings


def _meta_field(value: Any, camel: str) -> Any:
    """A field of a resolved output: typed outputs key by snake_case, custom resources by
    the API's camelCase."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
    if isinstance(value, Mapping):
        return value[camel] if camel in value else value.get(snake)
    return getattr(value, snake, None)


def _required(meta: Any, key: str, workload: str) -> str:
    value = _meta_field(meta, key)
    if not value:
        raise manifest_contract.ManifestError(
            f"{workload}: the API server reported no metadata.{key}; the manifest needs it"
        )
    return str(value)


def declare_kubernetes(
    cfg: StackConfig, secret: Callable[[str], pulumi.Output[str]]
) -> dict[str, KubernetesEnvironment]:
    """Declare every environment of ``cfg`` on its cluster (``backend: kubernetes``):
    one provider for ``kubernetes.context``, one :class:`KubernetesEnvironment` per
    session, and with ``agentSandbox`` the stack's SandboxTemplate and warm pool.

    The namespace must exist (docs/kubernetes.md: created by whoever runs the cluster,
    labelled for Pod Security "restricted"). Returns the environments by session id."""
    settings = cfg.kubernetes
    images, problems = _images(cfg)
    if problems:
        raise pulumi.RunError(str(ConfigError(cfg.stack, problems)))
    provider = k8s.Provider("kubernetes", context=settings.context, namespace=settings.namespace)
    opts = pulumi.ResourceOptions(providers=[provider])
    storage = settings.storage.model_dump()
    default_runtime = cfg.all_profiles()[cfg.profile].runtime or "runc"

    if settings.agent_sandbox and cfg.image.ref:
        AgentSandboxPool(
            "sandbox-pool",
            AgentSandboxPoolArgs(
                stack=cfg.stack,
                namespace=settings.namespace,
                image=cfg.image.ref,
                # What an environment without its own limits or profile would get.
                limits=resolve_limits(cfg.all_profiles()[cfg.profile], cfg.limits, Limits()),
                healthcheck=cfg.healthcheck,
                storage_mb=storage,
                storage_class=settings.storage_class,
                runtime_class=settings.runtime_classes.get(default_runtime),
            ),
            opts=opts,
        )

    environments: dict[str, KubernetesEnvironment] = {}
    for env in cfg.environments:
        environments[env.session_id] = KubernetesEnvironment(
            f"env-{env.session_id}",
            KubernetesEnvironmentArgs.of(
                cfg,
                env,
                {name: secret(name) for name in env.secrets},
                image=images[env.session_id],
                namespace=settings.namespace,
                storage_mb=storage,
                volume_mb=settings.storage.workspace,
                storage_class=settings.storage_class,
                service_type=settings.service_type,
                network_policy=settings.network_policy,
                runtime_class=settings.runtime_classes.get(cfg.runtime_of(env)),
                agent_sandbox=settings.agent_sandbox,
            ),
            opts=opts,
        )
    return environments


def _images(cfg: StackConfig) -> tuple[dict[str, str], list[str]]:
    """The published image of each environment, and a problem line per image source that
    an environment needs but that names no published image."""
    images: dict[str, str] = {}
    missing: dict[str, list[str]] = {}
    for index, env in enumerate(cfg.environments):
        gpu = cfg.profile_of(env).gpu
        ref = env.image or (cfg.gpu_image if gpu else cfg.image).ref
        if ref:
            images[env.session_id] = ref
        else:
            key = "gpuImage.ref" if gpu else "image.ref"
            missing.setdefault(key, []).append(f"environments[{index}]")
    if cfg.kubernetes.agent_sandbox and not cfg.image.ref:
        missing.setdefault("image.ref", []).append("kubernetes.agentSandbox (its SandboxTemplate)")
    problems = [
        f"{key_path(key.split('.'))}: not set, needed by {', '.join(users)} "
        f"(allowed: {IMAGE_ALLOWED})"
        for key, users in missing.items()
    ]
    # A variant is a build on top of the image; the cluster builds nothing.
    problems += [
        f"{key_path(['environments', index, 'variant'])}: {cfg.variant_of(env)!r} is not allowed "
        "(allowed: core on backend kubernetes, which builds no image; publish the variant, "
        f"e.g. ghcr.io/<owner>/dockyard-{cfg.variant_of(env)}, and set the environment's image)"
        for index, env in enumerate(cfg.environments)
        if cfg.variant_of(env) != "core" and not env.image
    ]
    return images, problems
