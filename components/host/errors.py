"""The host library's errors: what a host script reports, naming what is not as it needs
(standard library only)."""

from __future__ import annotations

from collections.abc import Sequence


class HostError(RuntimeError):
    """Something on the host is not as a script needs it; the message says what."""


class ConfigError(HostError, ValueError):
    """A configuration value is not allowed."""


class EngineError(HostError):
    """The Docker engine refused or failed a request."""


class Overrun(HostError):
    """A read went past its byte cap or its deadline; what was started was killed.
    ``bound`` says which ("output over N bytes", "no end within N s")."""

    bound: str = ""


class CommandError(HostError):
    """A command exited non-zero (or was killed at a bound: see :class:`CommandOverrun`)."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv[:3])} failed ({returncode}): {stderr.strip()}")
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class CommandOverrun(CommandError, Overrun):
    """A command went past its output cap or deadline and was killed (its whole process
    group). Return code 124 (time, as timeout(1)) or 125 (bytes)."""

    def __init__(self, argv: Sequence[str], bound: str, time_up: bool) -> None:
        super().__init__(argv, 124 if time_up else 125, f"{bound}; killed")
        self.bound = bound


class EngineOverrun(EngineError, Overrun):
    """An Engine API read went past its byte cap or deadline (``time_up``)."""

    def __init__(self, message: str, bound: str, *, time_up: bool) -> None:
        super().__init__(message)
        self.bound = bound
        self.time_up = time_up


class ManifestError(HostError, ValueError):
    """A manifest is not a valid contract v1 manifest (or cannot be read)."""


class SchemaError(HostError):
    """The schema uses something the stdlib validator cannot check."""
