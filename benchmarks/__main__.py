"""`python -m benchmarks [NAME ...]`: run all benchmarks, or the named ones."""

from __future__ import annotations

import importlib
import signal
import sys

BENCHMARKS = [
    "env_ready",
    "scale",
    "image",
    "program_eval",
    "ansible_site",
    "session_create",
    "backup",
    "preview_proxy",
    "disk_bounds",
    "dataplane",
    "instant",
    "claim",
    "density",
    "api",
]


def _stop(signum: int, _frame: object) -> None:
    # Unwind through the benchmarks' `finally` blocks, which remove what they created.
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _stop)
    names = argv or BENCHMARKS
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(
            f"ERROR: unknown benchmark(s) {unknown} (allowed: {', '.join(BENCHMARKS)})",
            file=sys.stderr,
        )
        return 2
    status = 0
    for name in names:
        print(f"== {name}")
        status |= importlib.import_module(f"benchmarks.{name}").main()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
