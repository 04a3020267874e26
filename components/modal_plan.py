"""Preview the Modal sandbox equivalent of a manifest. Creates nothing.

    python -m dockyard.modal_plan MANIFEST [--stack stacks/Pulumi.team.yaml]
                                            [--cpus N] [--memory SIZE] [--gpu GPU]

The v1 manifest does not carry limits; they come from ``--stack`` (the environment's
resolved limits and GPU request in that stack) or the flags, else dockyard's defaults.
Values of environment variables are never in a manifest: the preview names a Modal
secret that must provide them.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import config as stack_config
from . import manifest as manifest_contract
from .config import messages as config_messages
from .errors import DockyardError, InvalidInput, NotFound

MODAL_GPU_TYPES = (
    "T4",
    "L4",
    "A10G",
    "L40S",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "H100",
    "H200",
    "B200",
)
GPU_FLAG_ALLOWED = (
    "all, comma-separated device ids (0,1 or GPU-<uuid>), or a Modal GPU type "
    f"({', '.join(MODAL_GPU_TYPES)}), optionally with :COUNT (A100:2)"
)


DEVICE_ID = re.compile(r"[0-9]{1,3}|(GPU|MIG)-[0-9A-Za-z-]{1,60}", re.ASCII)


def modal_gpu(gpu: str | Sequence[str]) -> str:
    """Modal's ``gpu=`` for dockyard's GPU request: a Modal type as given, ``all`` as
    ``any``, N device ids as ``any:N``."""
    if gpu == "all":
        return "any"
    if isinstance(gpu, str):
        return gpu
    return f"any:{len(gpu)}"


def parse_gpu_flag(text: str) -> str | list[str]:
    """``--gpu``: ``all``, device ids, or a Modal GPU type (``A100``, ``H100:2``); anything
    else is refused (never silently turned into another request)."""
    if text == "all":
        return "all"
    kind, sep, count = text.partition(":")
    by_upper = {t.upper(): t for t in MODAL_GPU_TYPES}
    if kind.upper() in by_upper and (not sep or (count.isdigit() and 1 <= int(count) <= 8)):
        return by_upper[kind.upper()] + (f":{int(count)}" if sep else "")
    ids = text.split(",")
    if all(DEVICE_ID.fullmatch(i) for i in ids) and len(set(ids)) == len(ids):
        return ids
    shown = text if len(text) <= 40 and text.isascii() and text.isprintable() else "<this value>"
    raise ValueError(f"--gpu: {shown!r} is not allowed (allowed: {GPU_FLAG_ALLOWED})")


def plan(
    manifest: dict[str, Any], cpus: float, memory_mb: int, gpu: str | Sequence[str] | None
) -> str:
    """Python source of the equivalent ``modal.Sandbox.create`` call, with notes."""
    session = manifest["sessionId"]
    notes: list[str] = []
    image = manifest["image"]
    if "/" not in image.split(":")[0] or image.startswith("dockyard-"):
        notes.append(
            f"image {image} is a local tag: push it to a registry Modal can pull "
            "(e.g. ghcr.io/<owner>/dockyard-core, see the core-image workflow)"
        )
    volumes: list[str] = [
        f'"/workspace": modal.Volume.from_name("{manifest["environmentId"]}-workspace", '
        "create_if_missing=True)"
    ]
    for spec in manifest["requested"]["volumes"]:
        source, target, *mode = spec.split(":")
        if source.startswith("/"):
            notes.append(f"bind mount {spec} has no Modal equivalent: copy {source} into a Volume")
            continue
        read_only = ".read_only()" if mode == ["ro"] else ""
        volumes.append(
            f'"{target}": modal.Volume.from_name("{source}", create_if_missing=True){read_only}'
        )
    env_names = manifest["requested"]["env"]
    secrets = (
        f'[modal.Secret.from_name("{manifest["environmentId"]}")],  # must provide: {", ".join(env_names)}'
        if env_names
        else "[],"
    )
    gpu_text = "None" if gpu is None else repr(modal_gpu(gpu))
    ports = [m["containerPort"] for m in manifest["container"]["portMappings"]] or manifest[
        "requested"
    ]["ports"]
    lines = [
        f"# Modal sandbox preview for session {session} ({manifest['backend']}). Preview only: nothing is created.",
        *(f"# NOTE: {note}" for note in notes),
        "import modal",
        "",
        'app = modal.App.lookup("dockyard", create_if_missing=True)',
        "sandbox = modal.Sandbox.create(",
        '    "/usr/local/bin/dockyard-entrypoint",',
        "    app=app,",
        f'    image=modal.Image.from_registry("{image}"),',
        '    workdir="/workspace",',
        f"    encrypted_ports={ports},",
        f"    cpu={cpus:g},",
        f"    memory={memory_mb},",
        f"    gpu={gpu_text},",
        "    volumes={",
        *(f"        {v}," for v in volumes),
        "    },",
        f"    secrets={secrets}",
        f'    env={{"DOCKYARD_BACKEND": "{manifest["backend"]}", "DOCKYARD_SESSION_ID": "{session}"}},',
        ")",
    ]
    return "\n".join(lines)


def _read_manifest(path: str) -> dict[str, Any]:
    """The manifest at ``path``: a missing file is not found, an unreadable or invalid one
    is invalid input (every error names the file)."""
    if not Path(path).exists():
        raise NotFound(f"{path}: no such manifest file")
    try:
        return manifest_contract.load(path)
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot be read ({exc.strerror})") from None


def _limits_from_stack(path: str, session: str) -> tuple[float, int, Any]:
    # A preview reads no secret values, so unset ones are not an error here.
    cfg = stack_config.stack_file(path, cwd="/", check_secrets=False, label=f"--stack {path}")
    for env in cfg.environments:
        if env.session_id == session:
            limits = cfg.limits_of(env)
            return limits.cpus, limits.memory, env.gpu
    raise NotFound(
        f"--stack {path}: no environment with sessionId {session!r} (allowed: a stack file "
        "that declares the manifest's session)"
    )


def _flag(loc: config_messages.Loc) -> str:
    """A limit named as the flag that set it (``--memory``)."""
    return "--" + stack_config.key_path(loc, prefix="")


def preview(
    manifest_path: str,
    stack: str | None = None,
    cpus: float | None = None,
    memory: str | None = None,
    gpu: str | None = None,
) -> str:
    """The Modal preview of the manifest at ``manifest_path`` (:func:`plan`), its limits
    and GPU from ``stack``'s environment for the session, then the flags, else dockyard's
    defaults. Raises a :class:`~dockyard.errors.DockyardError`: :class:`NotFound` for a
    missing manifest or a stack without its session, :class:`InvalidInput` otherwise."""
    manifest = _read_manifest(manifest_path)
    defaults = stack_config.ResolvedLimits()
    found_cpus, found_memory, found_gpu = float(defaults.cpus), defaults.memory, None
    if stack:
        found_cpus, found_memory, found_gpu = _limits_from_stack(stack, manifest["sessionId"])
    try:
        overrides = stack_config.Limits.model_validate(
            {k: v for k, v in {"cpus": cpus, "memory": memory}.items() if v is not None}
        )
    except ValidationError as exc:
        problems = config_messages.problems(exc, stack_config.Limits, name=_flag)
        raise InvalidInput(problems[0], problems) from None
    if gpu:
        try:
            found_gpu = parse_gpu_flag(gpu)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    return plan(manifest, overrides.cpus or found_cpus, overrides.memory or found_memory, found_gpu)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dockyard.modal_plan``: the preview on stdout; on a failure its lines on
    stderr and exit 1."""
    parser = argparse.ArgumentParser(
        prog="python -m dockyard.modal_plan", description=__doc__.split("\n")[0]
    )
    parser.add_argument("manifest", help="a v1 manifest file")
    parser.add_argument("--stack", help="stack file to take the environment's limits and GPU from")
    parser.add_argument("--cpus", type=float, help="CPUs (default: the stack's or dockyard's)")
    parser.add_argument("--memory", help="MB or with a unit: 8192, 8g")
    parser.add_argument("--gpu", help=GPU_FLAG_ALLOWED)
    args = parser.parse_args(argv)
    try:
        text = preview(args.manifest, args.stack, args.cpus, args.memory, args.gpu)
    except DockyardError as error:
        for line in error.problems:
            print(f"ERROR: {line}", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
