"""What an environment is asked for, whichever backend builds it: the inputs the Docker
(:class:`dockyard.environment.AgentEnvironmentArgs`) and the Kubernetes
(:class:`dockyard.kubernetes.KubernetesEnvironmentArgs`) components share, one mapping of
a stack's environment onto them, and the manifest fields they decide."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import pulumi

from . import manifest as manifest_contract
from .config import Environment, Healthcheck, ResolvedLimits, StackConfig, Volume
from .contract import LABEL_TENANT


@dataclass(frozen=True, kw_only=True)
class EnvironmentInputs:
    """Flat, already-validated inputs for one environment (see dockyard.config)."""

    stack: str
    session_id: str
    backend: str
    cwd: str
    manifest_dir: str
    """Absolute directory the manifest file goes to."""
    limits: ResolvedLimits
    healthcheck: Healthcheck
    ports: Sequence[int] = ()
    volumes: Sequence[Volume] = ()
    egress: str = "open"
    egress_rules: Sequence[str] = ()
    """Normalised allowlist (dockyard.egress); enforced by the backend's network policy."""
    env: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """Secret name -> Pulumi secret output; delivered only as a file."""
    gpu: str | Sequence[str] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        cfg: StackConfig,
        env: Environment,
        secrets: Mapping[str, pulumi.Input[str]],
        **backend_inputs: Any,
    ) -> Self:
        """``env`` of ``cfg`` as this backend's inputs: the shared ones mapped here (the
        tenant as a label), ``backend_inputs`` the backend's own."""
        return cls(
            stack=cfg.stack,
            session_id=env.session_id,
            backend=env.backend,
            cwd=cfg.cwd,
            manifest_dir=cfg.manifest_dir_of(env),
            limits=cfg.limits_of(env),
            healthcheck=cfg.healthcheck,
            ports=env.ports,
            volumes=env.volumes,
            egress=env.egress,
            egress_rules=env.egress_rules,
            env=env.env,
            secrets=secrets,
            gpu=env.gpu,
            labels={**env.labels, **({LABEL_TENANT: env.tenant} if env.tenant else {})},
            **backend_inputs,
        )

    def manifest(self, **engine_facts: Any) -> dict[str, Any]:
        """The v1 manifest: what was asked for from these inputs, what the engine made of
        it from ``engine_facts`` (environment id, creation time, image, container id and
        name, port mappings)."""
        return manifest_contract.build(
            session_id=self.session_id,
            backend=self.backend,
            cwd=self.cwd,
            requested_ports=list(self.ports),
            requested_volumes=[v.spec for v in self.volumes],
            requested_env=[*self.env.keys(), *self.secrets.keys()],
            **engine_facts,
        )
