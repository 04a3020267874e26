"""Sizes: each key with a size has its own range and says that range when it refuses.

Memory, Kubernetes storage and disk bounds share one size grammar (MB as a number, or a
size with a unit); a size is judged against its own key's range only, never another's.
"""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.config import ConfigError, parse

CWD = "/home/u/project"
MEMORY = "a size from 6 MB to 4 TiB: MB as a number (8192) or with a unit (512m, 8g)"
STORAGE = "a size from 64 MB to 64 TiB: MB as a number (10240) or with a unit (10g, 1t)"
DISK = "a size from 16 MB to 16 TiB: MB as a number (20480) or with a unit (512m, 20g)"
# (stack key, path inside it, the key path, what it allows, largest, just above)
SIZES = [
    ("limits", ("memory",), "dockyard:limits.memory", MEMORY, "4t", "5t"),
    ("limits", ("disk", "workspace"), "dockyard:limits.disk.workspace", DISK, "16t", "17t"),
    ("limits", ("disk", "tmp"), "dockyard:limits.disk.tmp", DISK, "8t", "16385g"),
    ("quotas", ("memory",), "dockyard:quotas.memory", MEMORY, "4096g", "4097g"),
    (
        "kubernetes",
        ("storage", "workspace"),
        "dockyard:kubernetes.storage.workspace",
        STORAGE,
        "64t",
        "65t",
    ),
]


def _nested(key: str, path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for part in reversed(path):
        value = {part: value}
    return {f"dockyard:{key}": value}


@pytest.mark.parametrize(("key", "path", "named", "allowed", "largest", "above"), SIZES)
def test_a_size_is_judged_by_its_own_range(
    key: str, path: tuple[str, ...], named: str, allowed: str, largest: str, above: str
) -> None:
    extra = {"dockyard:backend": "kubernetes"} if key == "kubernetes" else {}
    parse({**extra, **_nested(key, path, largest)}, stack="s", cwd=CWD)
    for bad in (above, "1k", True, "8 bananas"):
        with pytest.raises(ConfigError) as caught:
            parse({**extra, **_nested(key, path, bad)}, stack="s", cwd=CWD)
        assert caught.value.problems == [
            f"{named}: {bad!r} is not allowed (allowed: {allowed})".replace("True", "true")
        ], bad
