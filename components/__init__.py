"""dockyard: Pulumi component resources for isolated AI coding agent environments.

Installed, this package is imported as ``dockyard`` (in a checkout the folder is
``components/``). The public names are loaded on first use, so ``import dockyard.config``
stays light (no Pulumi provider SDKs)::

    from dockyard import AgentEnvironment, AgentImage, Manifest
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .assets import version

__version__ = version()

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
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(
        importlib.import_module(module, __name__), "parse" if name == "parse_config" else name
    )
    globals()[name] = value
    return value
