"""AgentImage: the image an environment runs — built from ``images/<variant>`` or a
published reference (R-IMG-1, R-IMG-6)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_docker as docker

REPO_ROOT = Path(__file__).resolve().parents[1]
CORE_CONTEXT = REPO_ROOT / "images" / "core"
VARIANT_ARGS = {"gpu": REPO_ROOT / "images" / "gpu" / "variant.env"}


def build_inputs_digest(context: Path, build_args: Mapping[str, str], extra: str = "") -> str:
    """A digest of everything that decides a build's result: context files with their
    modes, build args, and ``extra`` (e.g. the base image id). Same inputs, same digest."""
    digest = hashlib.sha256()
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        digest.update(path.relative_to(context).as_posix().encode() + b"\0")
        digest.update(oct(path.stat().st_mode & 0o777).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    digest.update(json.dumps(sorted(build_args.items())).encode())
    digest.update(extra.encode())
    return digest.hexdigest()[:16]


def variant_build_args(variant: str) -> dict[str, str]:
    """Build args that select a variant (``images/gpu/variant.env``); none for core."""
    if variant == "core":
        return {}
    path = VARIANT_ARGS[variant]
    lines = path.read_text(encoding="utf-8").splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


@dataclass(frozen=True)
class AgentImageArgs:
    """``ref`` set: use that published image. Otherwise build ``images/core`` with the
    variant's args overlaid by ``build_args``, tagged ``<repository>:<tag_prefix>-<digest>``
    so a changed input gives a new tag (and replaces the containers using it)."""

    variant: str = "core"
    ref: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    repository: str = "dockyard-core"
    tag_prefix: str = "local"


class AgentImage(pulumi.ComponentResource):
    image_ref: pulumi.Output[str]
    """What the manifest reports: the repo digest where the engine knows one, else the tag."""
    image_id: pulumi.Output[str]
    """What containers use: changes whenever the image does."""

    def __init__(
        self, name: str, args: AgentImageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("dockyard:index:AgentImage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if args.variant not in ("core", *VARIANT_ARGS):
            raise ValueError(
                f"variant {args.variant!r} is not one of core, {', '.join(VARIANT_ARGS)}"
            )
        if args.ref:
            remote = docker.RemoteImage(
                f"{name}-remote", name=args.ref, keep_locally=True, opts=child
            )
            self.image_id = remote.image_id
            self.image_ref = pulumi.Output.all(remote.repo_digest, args.ref).apply(
                lambda values: values[0] or values[1]
            )
        else:
            build_args = {**variant_build_args(args.variant), **args.build_args}
            digest = build_inputs_digest(CORE_CONTEXT, build_args)
            image_name = f"{args.repository}:{args.tag_prefix}-{digest}"
            image = docker.Image(
                f"{name}-build",
                image_name=image_name,
                build=docker.DockerBuildArgs(
                    context=str(CORE_CONTEXT),
                    dockerfile=str(CORE_CONTEXT / "Dockerfile"),
                    args=build_args,
                    # The classic builder: no buildx needed, air-gapped sites cannot pull
                    # a BuildKit frontend.
                    builder_version=docker.BuilderVersion.BUILDER_V1,
                ),
                skip_push=True,
                opts=child,
            )
            self.image_id = image.image_name
            self.image_ref = pulumi.Output.all(image.repo_digest, image.image_name).apply(
                lambda values: values[0] or values[1]
            )
        self.register_outputs({"imageRef": self.image_ref, "imageId": self.image_id})
