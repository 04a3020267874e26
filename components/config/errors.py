"""The one error a stack's configuration raises."""

from __future__ import annotations

from ..errors import InvalidInput


class ConfigError(InvalidInput, ValueError):
    """A stack's configuration is invalid. ``problems`` holds one line per problem."""

    def __init__(self, stack: str, problems: list[str]) -> None:
        self.stack = stack
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"stack '{stack}': the dockyard configuration is invalid ({count}); "
            f"nothing was created:\n{lines}",
            problems,
        )
