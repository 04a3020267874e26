"""Build dockyard images once per set of build inputs, with the classic builder.

The tag is a digest of everything that decides the result (context files and their
modes, build args, the base image id), so an unchanged image is reused across test
sessions and any change to an input builds a new one. The docker SDK builds with the
classic builder, which is the path pulumi-docker's default takes too. Builds of
images/core get the pinned build args of images/versions.env first, as `pulumi up` does.

Nothing is added to what the Dockerfile makes (no label of the suite's own): the core
image built here is then the very image a stack's ``AgentImage`` builds from the same
inputs (same id, only another tag), so a layered variant built FROM either one reuses
the other's layers instead of building the same variant a second time in one run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import docker
import docker.errors
import pytest

from dockyard.image import build_inputs_digest, default_build_args, pinned_versions

REPO = Path(__file__).resolve().parents[2]
CORE_CONTEXT = REPO / "images" / "core"
DEFAULT_BASE = pinned_versions()["BASE_IMAGE"]


class ImageBuildError(RuntimeError):
    """A build failed; the message carries the tail of the build log."""


def base_image_id(client: docker.DockerClient, ref: str) -> str:
    try:
        return str(client.images.get(ref).id)
    except docker.errors.ImageNotFound:
        pytest.fail(
            f"base image {ref} is missing: run `make base-image` (pulls it, or bootstraps it "
            "from a Debian mirror with images/base/bootstrap.sh)"
        )


def build_image(
    client: docker.DockerClient,
    repository: str,
    build_args: Mapping[str, str] | None = None,
    context: Path = CORE_CONTEXT,
) -> str:
    """Return a tag of ``context`` built with ``build_args``, building only when needed.
    For images/core, ``build_args`` overlay the pinned ones (:func:`default_build_args`)."""
    pinned = default_build_args() if context == CORE_CONTEXT else {}
    args = {**pinned, **(build_args or {})}
    base_id = base_image_id(client, args.get("BASE_IMAGE", DEFAULT_BASE))
    tag = f"{repository}:test-{build_inputs_digest(context, args, base_id)}"
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    log: list[str] = []
    stream = client.api.build(
        path=str(context),
        tag=tag,
        buildargs=args,
        rm=True,
        forcerm=True,
        decode=True,
    )
    for chunk in stream:
        if "stream" in chunk:
            log.extend(chunk["stream"].splitlines())
        if "error" in chunk:
            tail = "\n".join(log[-40:])
            raise ImageBuildError(f"building {tag} failed: {chunk['error']}\n{tail}")
    if os.environ.get("DOCKYARD_TEST_VERBOSE_BUILD"):
        print("\n".join(log))
    client.images.get(tag)  # the build must have produced the tag
    return tag


def history_ids(client: docker.DockerClient, ref: str) -> list[tuple[str, str]]:
    """(layer image id, instruction) per build step, oldest first."""
    return [
        (str(entry["Id"]), str(entry["CreatedBy"])) for entry in reversed(client.api.history(ref))
    ]
