"""Where the collection's plugins find dockyard's host modules.

The host modules (dockyard.host and what it imports, standard library only) and the
manifest schema have one home, the package's ``components/``; the collection carries them
from there (galaxy.yml keeps exactly host_common's ``host_common_package_files``), two
directories up from ``plugins/``, in a checkout and in an installed collection alike. The
inventory plugin imports them from here; the ``host_package`` lookup hands their paths to
host_common, which installs them on hosts as the package tree ``dockyard/``."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "components"


def package_path(relative: str) -> Path:
    """The file ``relative`` (e.g. ``host/engine.py``) of the package; ValueError when the
    name leaves the package or the file is missing."""
    parts = PurePosixPath(relative).parts
    if not relative or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise ValueError(f"host package file {relative!r}: a path inside the package is allowed")
    path = PACKAGE_DIR.joinpath(*parts)
    if not path.is_file():
        raise ValueError(f"host package file {relative!r} is missing (looked for {path})")
    return path
