"""Load single Python files as modules: the host-side scripts that roles install (stdlib
only) and other files outside a package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_script(role: str, filename: str) -> ModuleType:
    path = REPO / "roles" / role / "files" / filename
    return load_file("dockyard_script_" + filename.replace("-", "_").removesuffix(".py"), path)


def load_file(name: str, path: Path) -> ModuleType:
    """The Python file at ``path`` (not part of a package: a role's script, the
    environment's daemon, a plugin) loaded afresh as module ``name``; ImportError when it
    cannot be."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module
