"""AgentImage: the image an environment runs — built from ``images/<variant>`` or a
published reference (R-IMG-1, R-IMG-6)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_docker as docker

from .assets import PROVENANCE_ARGS, AssetError, images_dir, provenance
from .component import Component

REPO_ROOT = Path(__file__).resolve().parents[1]


def _images_root() -> Path:
    try:
        return images_dir()
    except AssetError:
        return REPO_ROOT / "images"  # missing: AgentImage says so when a build needs it


IMAGES_DIR = _images_root()
CORE_CONTEXT = IMAGES_DIR / "core"
VERSIONS_FILE = IMAGES_DIR / "versions.env"
"""Pinned build args (versions, base image): the one file every builder reads."""
VARIANT_ARGS = {"gpu": IMAGES_DIR / "gpu" / "variant.env"}
LAYERED_VARIANTS = ("python", "node", "go")
"""Language runtime variants: ``images/<variant>`` built FROM another image (its
``BASE_IMAGE`` build arg) — a build of ``images/core`` (or of the GPU variant), or a
published one."""
BASE_VARIANTS = ("core", *VARIANT_ARGS)
"""What a layered variant may be built FROM when dockyard builds its base."""
VARIANTS = (*BASE_VARIANTS, *LAYERED_VARIANTS)
ARG_LINE = re.compile(
    r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)", re.ASCII | re.MULTILINE | re.IGNORECASE
)

BUILD_ARG_LINE = re.compile(r"([A-Z][A-Z0-9_]*)=([A-Za-z0-9][A-Za-z0-9._:/@+-]*)", re.ASCII)
BUILD_ARG_ALLOWED = (
    "NAME=VALUE: NAME in capitals, digits and '_'; VALUE a version or image reference "
    "(letters, digits, '.', '_', ':', '/', '@', '+', '-'), no quotes or spaces"
)


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


def declared_args(context: Path, build_args: Mapping[str, str]) -> dict[str, str]:
    """The ``build_args`` the context's Dockerfile declares (an ``ARG``): the ones that can
    change what it builds. A tag's digest covers these only, so bumping a version pinned
    for another image (a toolchain of one variant) leaves every other tag as it is."""
    names = set(ARG_LINE.findall((context / "Dockerfile").read_text(encoding="utf-8")))
    return {name: value for name, value in build_args.items() if name in names}


def read_build_args(path: Path) -> dict[str, str]:
    """``NAME=VALUE`` lines of a build-args file (``#`` comment lines and blank lines
    skipped). The format is kept to what Make, Ansible's properties lookup and a
    workflow's ``build-args`` read alike, so anything else is refused, naming the line."""
    args: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = BUILD_ARG_LINE.fullmatch(line)
        if match is None or match.group(1) in args:
            problem = "repeats a name" if match else "is not allowed"
            raise ValueError(f"{path}:{number}: {line!r} {problem} (allowed: {BUILD_ARG_ALLOWED})")
        args[match.group(1)] = match.group(2)
    return args


def pinned_versions() -> dict[str, str]:
    """The build args pinned in ``images/versions.env`` (agent CLIs, npm, base image);
    none when only an explicit build context is at hand."""
    return read_build_args(VERSIONS_FILE) if VERSIONS_FILE.is_file() else {}


def variant_build_args(variant: str) -> dict[str, str]:
    """Build args that select a variant (``images/gpu/variant.env``); none for core."""
    if variant == "core":
        return {}
    return read_build_args(VARIANT_ARGS[variant])


def default_build_args(variant: str = "core") -> dict[str, str]:
    """What a build of ``variant`` gets before a stack's own ``image.args``: the pinned
    versions, overlaid by the variant's args, and the OCI provenance labels' values."""
    return {**pinned_versions(), **variant_build_args(variant), **provenance()}


def staged_context(context: Path, extra_ca: Path) -> Path:
    """A copy of ``context`` with ``extra_ca`` as ``certs/extra-ca.crt``, under the user's
    cache, named by a digest of both (same inputs, same directory: builds stay cached).
    The shipped context may be read-only (site-packages), so it is never written to."""
    if not extra_ca.is_file():
        raise AssetError(
            f"extra_ca {extra_ca} is not a file (allowed: a PEM file of CA certificates)"
        )
    pem = extra_ca.read_bytes()
    digest = hashlib.sha256(build_inputs_digest(context, {}).encode() + pem).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dockyard"
    staged = cache / f"context-{digest}"
    if not (staged / "Dockerfile").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=cache, prefix=".context-"))
        shutil.copytree(context, partial, dirs_exist_ok=True)
        (partial / "certs").mkdir(exist_ok=True)
        (partial / "certs" / "extra-ca.crt").write_bytes(pem)
        try:
            partial.rename(staged)
        except OSError:  # another process staged it first: same inputs, same content
            shutil.rmtree(partial, ignore_errors=True)
    return staged


@dataclass(frozen=True)
class AgentImageArgs:
    """``ref`` set: use that published image. Otherwise build ``images/core`` with
    :func:`default_build_args` of the variant overlaid by ``build_args``, tagged
    ``<repository>:<tag_prefix>-<digest>`` so a changed input gives a new tag (and
    replaces the containers using it)."""

    variant: str = "core"
    """One of :data:`VARIANTS`. A layered one (python, node, go) is built FROM ``base``,
    else FROM ``ref``, else FROM a build of ``base_variant``; the other fields apply to
    both builds."""
    ref: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    repository: str | None = None
    """None: ``dockyard-<variant>``."""
    tag_prefix: str = "local"
    context: str | None = None
    """A build context directory with a Dockerfile; None: the one dockyard ships."""
    extra_ca: str | None = None
    """A PEM file of extra CA certificates (a TLS-intercepting proxy's) to build with:
    the context is staged with it as ``certs/extra-ca.crt`` (R-IMG-4)."""
    base: AgentImage | None = None
    """A layered variant's base, shared with the environments that run it as is."""
    base_variant: str = "core"
    """A layered variant's base when neither ``base`` nor ``ref`` is given: core or gpu."""

    @property
    def image_repository(self) -> str:
        """What the build is tagged in: ``repository``, else ``dockyard-<variant>``."""
        return self.repository or f"dockyard-{self.variant}"


class AgentImage(Component):
    image_ref: pulumi.Output[str]
    """What the manifest reports: the repo digest where the engine knows one, else the tag."""
    image_id: pulumi.Output[str]
    """What containers use: changes whenever the image does."""
    tag: str
    """The built tag, or the published reference: what a layered variant builds FROM."""

    def __init__(
        self, name: str, args: AgentImageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("AgentImage", name, opts)
        if args.variant not in VARIANTS:
            raise ValueError(f"variant {args.variant!r} is not one of {', '.join(VARIANTS)}")
        if args.variant in LAYERED_VARIANTS:
            self._build_layered(name, args, self.child)
        elif args.ref:
            remote = docker.RemoteImage(
                f"{name}-remote", name=args.ref, keep_locally=True, opts=self.child
            )
            self.image_id = remote.image_id
            self.tag = args.ref
            self.image_ref = _digest_or(remote.repo_digest, args.ref)
        else:
            context = _build_context(
                Path(args.context) if args.context else CORE_CONTEXT,
                args.extra_ca,
                missing=(
                    "no Dockerfile in the image build context {context}: give "
                    "AgentImageArgs(context=...) a directory with one, reinstall the dockyard "
                    "wheel (it ships images/core), or use a published image (ref=...)"
                ),
            )
            build_args = {**default_build_args(args.variant), **args.build_args}
            digest = build_inputs_digest(
                context,
                declared_args(
                    context, {k: v for k, v in build_args.items() if k not in PROVENANCE_ARGS}
                ),
            )
            self._build(
                name,
                f"{args.image_repository}:{args.tag_prefix}-{digest}",
                context,
                build_args,
                self.child,
            )
        self.register_outputs({"imageRef": self.image_ref, "imageId": self.image_id})

    def _build_layered(
        self, name: str, args: AgentImageArgs, child: pulumi.ResourceOptions
    ) -> None:
        """``images/<variant>`` FROM the base: a second build that depends on the base's,
        tagged by a digest that covers the base's tag (a new core, a new variant)."""
        base = args.base or AgentImage(
            f"{name}-base",
            AgentImageArgs(
                variant=args.base_variant,
                ref=args.ref,
                build_args=args.build_args,
                tag_prefix=args.tag_prefix,
                extra_ca=args.extra_ca,
            ),
            opts=child,
        )
        context = _build_context(
            Path(args.context) if args.context else IMAGES_DIR / args.variant,
            args.extra_ca,
            missing=(
                f"no Dockerfile in the {args.variant} variant's build context {{context}}: "
                "give AgentImageArgs(context=...) a directory with one, or reinstall the "
                f"dockyard wheel (it ships images/{args.variant})"
            ),
        )
        # OS_IMAGE: what the base was built on (the python variant compiles CPython there,
        # so a new core reuses it); BASE_IMAGE: the base itself.
        os_image = {**default_build_args(args.base_variant), **args.build_args}["BASE_IMAGE"]
        build_args = declared_args(
            context,
            {**pinned_versions(), **args.build_args, "OS_IMAGE": os_image, "BASE_IMAGE": base.tag},
        )
        digest = build_inputs_digest(context, build_args)
        self._build(
            name,
            f"{args.image_repository}:{args.tag_prefix}-{digest}",
            context,
            build_args,
            pulumi.ResourceOptions(parent=self, depends_on=[base]),
        )

    def _build(
        self,
        name: str,
        image_name: str,
        context: Path,
        build_args: Mapping[str, str],
        opts: pulumi.ResourceOptions,
    ) -> None:
        """Build ``context`` as ``image_name``; the image's outputs become this one's."""
        image = docker.Image(
            f"{name}-build",
            image_name=image_name,
            build=docker.DockerBuildArgs(
                context=str(context),
                dockerfile=str(context / "Dockerfile"),
                args=dict(build_args),
                # The classic builder: no buildx needed, air-gapped sites cannot pull
                # a BuildKit frontend.
                builder_version=docker.BuilderVersion.BUILDER_V1,
            ),
            skip_push=True,
            opts=opts,
        )
        self.tag = image_name
        self.image_id = image.image_name
        self.image_ref = _digest_or(image.repo_digest, image.image_name)


def _digest_or(repo_digest: pulumi.Input[str], reference: pulumi.Input[str]) -> pulumi.Output[str]:
    """What manifests report: the repo digest where the engine knows one, else ``reference``."""
    return pulumi.Output.all(repo_digest, reference).apply(lambda values: values[0] or values[1])


def _build_context(context: Path, extra_ca: str | None, *, missing: str) -> Path:
    """``context``, staged with ``extra_ca`` when given; :class:`AssetError` (``missing``,
    with ``{context}`` filled in) when it has no Dockerfile."""
    if not (context / "Dockerfile").is_file():
        raise AssetError(missing.format(context=context))
    if extra_ca:
        return staged_context(context, Path(extra_ca))
    return context
