"""AgentSandboxPool: a stack's kubernetes-sigs/agent-sandbox SandboxTemplate and warm pool
(``kubernetes.agentSandbox: true``; docs/kubernetes.md).

The stack's declared sessions are ``Sandbox`` objects of their own
(:class:`dockyard.kubernetes.KubernetesEnvironment`): each has its own claims, Secret
and Service, which a claim on a shared template cannot carry. The template and its warm
pool serve sessions started later through ``SandboxClaim`` (the agent-sandbox SDKs):
pre-started Pods of the stack's default image, profile and runtime, each with its own
workspace, config and checkpoints claims.

Children, parented to the component and named after it:
  <name>-template   SandboxTemplate (extensions.agents.x-k8s.io/v1beta1)
  <name>-warmpool   SandboxWarmPool of that template

API versions: agent-sandbox v0.5.6, whose storage versions are v1beta1
(tests/data/agent-sandbox holds the CRD schemas the tests validate against).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from . import kubernetes_objects as objects
from .component import Component
from .config import Healthcheck, ResolvedLimits
from .contract import (
    LABEL_ENVIRONMENT,
    LABEL_MANAGED,
    LABEL_STACK,
    LABEL_VOLUME,
    MANAGED_VALUE,
    STOP_TIMEOUT_S,
)

SANDBOX_API_VERSION = "agents.x-k8s.io/v1beta1"
EXTENSIONS_API_VERSION = "extensions.agents.x-k8s.io/v1beta1"


@dataclass(frozen=True)
class AgentSandboxPoolArgs:
    """What every pool Pod gets: the stack's defaults, no session of its own."""

    stack: str
    namespace: str
    image: pulumi.Input[str]
    limits: ResolvedLimits
    healthcheck: Healthcheck
    storage_mb: Mapping[str, int]
    """Claim size per R-ENV-8 role, in MiB."""
    storage_class: str | None = None
    runtime_class: str | None = None
    backend: str = "claude"


class AgentSandboxPool(Component):
    template_name: str
    warm_pool_name: str

    def __init__(
        self, name: str, args: AgentSandboxPoolArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("AgentSandboxPool", name, opts)
        pool = objects.object_name(f"dockyard-{args.stack}-pool", objects.WORKLOAD_NAME_MAX)
        # The sessions' label set; dockyard.environment names the pool, not a session.
        labels = {
            LABEL_ENVIRONMENT: pool,
            LABEL_STACK: objects.label_value(args.stack),
            LABEL_MANAGED: MANAGED_VALUE,
        }
        metadata = {
            "name": pool,
            "namespace": args.namespace,
            "labels": labels,
            "annotations": {LABEL_STACK: args.stack},
        }
        pod = objects.pod_spec(
            image=args.image,
            session_id=None,
            backend=args.backend,
            env={},
            ports=(),
            limits=args.limits,
            healthcheck=args.healthcheck,
            volumes=(),
            claims=None,  # the volumeClaimTemplates below add them, one set per Sandbox
            secret_name=None,
            runtime_class=args.runtime_class,
            gpu=None,
            termination_grace_seconds=STOP_TIMEOUT_S,
        )
        template = k8s.apiextensions.CustomResource(
            f"{name}-template",
            api_version=EXTENSIONS_API_VERSION,
            kind="SandboxTemplate",
            metadata=metadata,
            spec={
                "podTemplate": {"metadata": {"labels": labels}, "spec": pod},
                "volumeClaimTemplates": [
                    {
                        "metadata": {
                            "name": role,
                            "labels": {**labels, LABEL_VOLUME: role},
                        },
                        "spec": objects.claim_spec(args.storage_mb[role], args.storage_class),
                    }
                    for role in objects.ROLES
                ],
                # The controller's own default policy for the template's sandboxes: in
                # only from the sandbox router, out only to public addresses (no
                # RFC 1918 ranges, no metadata server).
                "networkPolicyManagement": "Managed",
                # A claim may name its session (DOCKYARD_SESSION_ID); such a claim starts
                # a fresh Sandbox instead of taking a warm one.
                "envVarsInjectionPolicy": "Allowed",
            },
            opts=self.child,
        )
        # No replicas: the controller's default (1) applies and Pulumi does not own the
        # field, so `kubectl scale sandboxwarmpool` sizes the pool and stays.
        k8s.apiextensions.CustomResource(
            f"{name}-warmpool",
            api_version=EXTENSIONS_API_VERSION,
            kind="SandboxWarmPool",
            metadata=metadata,
            spec={"sandboxTemplateRef": {"name": pool}},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[template]),
        )
        self.template_name = pool
        self.warm_pool_name = pool
        self.register_outputs({"templateName": pool, "warmPoolName": pool})
