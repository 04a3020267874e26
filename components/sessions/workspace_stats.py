"""What a session's container is doing: its stats (state, memory, CPU, pids, disk) and
its own output (the entrypoint's logs, as opaque bytes)."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import Conflict
from .workspace_files import FileVerbs


class StatsVerbs(FileVerbs):
    """Stats (its disk figures come from the file helper) and logs."""

    def stats(self) -> dict[str, Any]:
        import docker.errors

        try:
            inspected = self.api.inspect_container(self.container)
            state = inspected.get("State") or {}
            running = state.get("Status") == "running"
        except docker.errors.NotFound:
            raise Conflict(f"session {self.record.session_id!r}: its container is gone") from None
        sample: Any = {}
        if running:
            try:
                sample = self.api.stats(self.container, stream=False)
            except (docker.errors.APIError, ValueError):
                # Stopped or removed between the inspect and the read: the engine answers
                # an error or an empty body; the state read above is the answer then.
                sample = {}
            if not isinstance(sample, dict):
                sample = {}
        created = _parse_time(self.record.created_at)
        age = (datetime.datetime.now(datetime.UTC) - created).total_seconds() if created else None
        memory = sample.get("memory_stats") or {}
        usage = memory.get("usage")
        inner = memory.get("stats") or {}
        if isinstance(usage, int):
            usage -= int(inner.get("inactive_file", inner.get("total_inactive_file", 0)) or 0)
        mem_limit = memory.get("limit")
        cpu = _cpu_percent(sample)
        disk = self.disk() if running else {}
        return {
            "status": state.get("Status"),
            "health": (state.get("Health") or {}).get("Status"),
            "startedAt": state.get("StartedAt"),
            "createdAt": self.record.created_at,
            "ageSeconds": round(age, 1) if age is not None else None,
            "memory": {
                "used": usage,
                "limit": mem_limit,
                "percent": _percent(usage, mem_limit),
            },
            "cpu": {
                "percent": cpu,
                "onlineCpus": (sample.get("cpu_stats") or {}).get("online_cpus"),
            },
            "pids": (sample.get("pids_stats") or {}).get("current"),
            "disk": {**disk, "percent": _percent(disk.get("used"), disk.get("total"))},
        }

    def logs(
        self, tail: int | None = None, follow: bool = False
    ) -> tuple[Iterator[bytes], Callable[[], None]]:
        """The container's own output (its entrypoint's) as opaque bytes, and a call that
        stops it from any thread (``follow`` keeps the stream open until then)."""
        stream = self.api.logs(
            self.container,
            stdout=True,
            stderr=True,
            stream=True,
            follow=follow,
            tail="all" if tail is None else tail,
        )

        def stop() -> None:
            with contextlib.suppress(Exception):
                stream.close()

        def lines() -> Iterator[bytes]:
            try:
                yield from stream
            except OSError:
                return  # stopped
            finally:
                stop()

        return lines(), stop


def _percent(part: Any, whole: Any) -> float | None:
    if isinstance(part, int | float) and isinstance(whole, int | float) and whole > 0:
        return round(100.0 * part / whole, 2)
    return None


def _cpu_percent(sample: Mapping[str, Any]) -> float | None:
    cpu, pre = sample.get("cpu_stats") or {}, sample.get("precpu_stats") or {}
    try:
        used = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
        system = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
        cpus = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or [1])
    except (KeyError, TypeError):
        return None
    if system <= 0:
        return None
    return round(100.0 * used / system * cpus, 2)


def _parse_time(value: str) -> datetime.datetime | None:
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)
