"""Files dockyard ships besides its code: the image build contexts and its version.

In a checkout they live at the repository root (``images/``, ``components/VERSION``);
an installed wheel carries the build contexts as package data (``dockyard/_images``), so
``AgentImage`` builds after a plain ``pip install``.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


class AssetError(RuntimeError):
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
