"""dockyard: Pulumi component resources for isolated AI coding agent environments.

Installed, this package is imported as ``dockyard`` (in a checkout the folder is
``components/``). The public names, ``__version__`` among them, are loaded on first use:
importing the package takes the standard library alone, so ``import dockyard.config`` stays
light (no Pulumi provider SDKs) and the host scripts import ``dockyard.host`` from the copy
of the package's stdlib modules the roles install on Docker hosts::

    from dockyard import AgentEnvironment, AgentImage, Manifest
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AgentEnvironment": ".environment",
    "AgentEnvironmentArgs": ".environment",
    "AgentImage": ".image",
    "AgentImageArgs": ".image",
    "Manifest": ".manifest",
    "ManifestError": ".manifest",
    "ConfigError": ".config",
    "StackConfig": ".config",
    "parse_config": ".config",
}

if TYPE_CHECKING:
    __version__: str
    from .config import ConfigError, StackConfig
    from .config import parse as parse_config
    from .environment import AgentEnvironment, AgentEnvironmentArgs
    from .image import AgentImage, AgentImageArgs
    from .manifest import Manifest, ManifestError

__all__ = [
    "AgentEnvironment",
    "AgentEnvironmentArgs",
    "AgentImage",
    "AgentImageArgs",
    "ConfigError",
    "Manifest",
    "ManifestError",
    "StackConfig",
    "__version__",
    "parse_config",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read on first use: assets is not among the host modules
        version: str = importlib.import_module(".assets", __name__).version()
        globals()[name] = version
        return version
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(
        importlib.import_module(module, __name__), "parse" if name == "parse_config" else name
    )
    globals()[name] = value
    return value
