"""Files dockyard ships besides its code: the image build contexts and its version.

In a checkout they live at the repository root (``images/``, ``components/VERSION``);
an installed wheel carries the build contexts as package data (``dockyard/_images``), so
``AgentImage`` builds after a plain ``pip install``.
"""

from __future__ import annotations

import importlib.resources
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from .errors import Failed

PACKAGE_DIR = Path(__file__).resolve().parent


class AssetError(Failed):
    """A shipped file cannot be found; the message says where it was looked for."""


def images_dir() -> Path:
    """The directory holding ``core/Dockerfile`` and the other build contexts."""
    candidates = [PACKAGE_DIR / "_images", PACKAGE_DIR.parent / "images"]
    try:
        packaged = importlib.resources.files(f"{__package__}._images")
        candidates.append(Path(str(packaged)))
    except (ModuleNotFoundError, TypeError):
        pass
    for candidate in candidates:
        if (candidate / "core" / "Dockerfile").is_file():
            return candidate
    raise AssetError(
        "the dockyard image build context is missing (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); reinstall the dockyard wheel, or give AgentImageArgs(context=...) a "
        "directory with a Dockerfile, or use a published image (ref=...)"
    )


def version() -> str:
    """dockyard's version: one source (``components/VERSION``) for the Python package,
    the Ansible collection and the images' OCI labels."""
    return (PACKAGE_DIR / "VERSION").read_text(encoding="utf-8").strip()


SOURCE_URL = "https://github.com/dockyard-dev/dockyard"
PROVENANCE_ARGS = ("DOCKYARD_VERSION", "DOCKYARD_REVISION", "DOCKYARD_CREATED", "DOCKYARD_SOURCE")
"""Build args that only label an image (OCI source, revision, version, created): every
build path passes them; they are left out of the build-input digest (the image tag), so
a new commit relabels images without replacing the environments that use them."""


def provenance() -> dict[str, str]:
    """The OCI provenance build args for this copy of dockyard: the git commit and its
    time in a checkout, else the release version and the packaged VERSION file's time.
    ``DOCKYARD_REVISION`` / ``DOCKYARD_CREATED`` / ``DOCKYARD_SOURCE`` in the environment
    win (CI sets them)."""
    revision, created = f"v{version()}", None
    checkout = PACKAGE_DIR.parent
    if (checkout / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "-C", str(checkout), "log", "-1", "--format=%H %cI"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.split()
            revision, created = out[0], out[1]
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    if created is None:
        stamp = (PACKAGE_DIR / "VERSION").stat().st_mtime
        created = datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")
    else:
        created = datetime.fromisoformat(created).astimezone(UTC).isoformat(timespec="seconds")
    return {
        "DOCKYARD_VERSION": version(),
        "DOCKYARD_REVISION": os.environ.get("DOCKYARD_REVISION") or revision,
        "DOCKYARD_CREATED": os.environ.get("DOCKYARD_CREATED") or created.replace("+00:00", "Z"),
        "DOCKYARD_SOURCE": os.environ.get("DOCKYARD_SOURCE") or SOURCE_URL,
    }
