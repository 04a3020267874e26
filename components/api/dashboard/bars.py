"""The dashboard's meters and its chart: bytes used against a limit, written out, and the
last hour of a session's samples as SVG points (no script, no library)."""

from __future__ import annotations

from typing import Any

from ...sessions.stats_history import Sample

CHART_W, CHART_H = 600, 120
"""The chart's drawing area in SVG units (its viewBox)."""


def size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def bar(used: Any, total: Any) -> dict[str, Any] | None:
    """A meter's values: ``used`` of ``total`` bytes, written out too."""
    if not isinstance(used, int) or not isinstance(total, int) or total <= 0:
        return None
    used = max(0, used)
    return {
        "value": used,
        "max": total,
        "percent": round(100.0 * used / total, 1),
        "text": f"{size(used)} of {size(total)} ({100.0 * used / total:.0f}%)",
    }


def chart(samples: list[Sample], now: float, seconds: float = 3600.0) -> dict[str, Any] | None:
    """The last ``seconds`` of ``samples`` as SVG polyline points (x: time, left is
    ``seconds`` ago; y: percent of the limit, 0 at the bottom) for memory and disk, with
    a text summary for those who cannot see it; None without samples."""
    if not samples:
        return None

    def line(part: str, whole: str) -> tuple[str, list[float]]:
        points, values = [], []
        for s in samples:
            used, limit = getattr(s, part), getattr(s, whole)
            if used is None or not limit:
                continue
            percent = max(0.0, min(100.0, 100.0 * used / limit))
            x = max(0.0, min(1.0, 1 - (now - s.at) / seconds)) * CHART_W
            points.append(f"{x:.1f},{CHART_H - percent / 100 * CHART_H:.1f}")
            values.append(percent)
        return " ".join(points), values

    memory, memory_values = line("memory_used", "memory_limit")
    disk, disk_values = line("disk_used", "disk_total")

    def summary(name: str, values: list[float]) -> str:
        if not values:
            return f"{name}: not reported"
        return (
            f"{name}: now {values[-1]:.0f}%, lowest {min(values):.0f}%, "
            f"highest {max(values):.0f}% of its limit"
        )

    return {
        "width": CHART_W,
        "height": CHART_H,
        "memory": memory,
        "disk": disk,
        "samples": len(samples),
        "summary": f"{len(samples)} samples over the last hour. "
        + "; ".join([summary("Memory", memory_values), summary("Disk", disk_values)])
        + ".",
    }
