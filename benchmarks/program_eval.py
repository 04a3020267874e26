"""Program evaluation under mocks: 1, 10, 100, 500 environments — time and peak memory.

Each size runs in a fresh subprocess (one Pulumi program per process), five times.
Target (issue: components): 100 environments in < 5 s; growth must be linear, reported
as seconds per environment at each size.
"""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.common import summary, table, write_result

SIZES = (1, 10, 100, 500)
RUNS = 5
TARGET_100_S = 5.0

CHILD = """
import json, resource, sys, time
start = time.perf_counter()
from tests.support.program import record
imported = time.perf_counter()
n = int(sys.argv[1])
run = record({"environments": [{"sessionId": f"s{i:04d}", "ports": [3000, 5173]} for i in range(n)]})
assert len(run.exports()) == n
done = time.perf_counter()
print(json.dumps({"seconds": done - imported, "import": imported - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(size: int) -> dict[str, object]:
    samples, rss = [], []
    for _ in range(RUNS):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(size)], capture_output=True, text=True, check=True
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        samples.append(result["seconds"])
        rss.append(result["peak_rss_mb"])
    return {"environments": size, "seconds": summary(samples), "peak_rss_mb": summary(rss)}


def main() -> int:
    results = [measure(size) for size in SIZES]
    rows = []
    for r in results:
        seconds = r["seconds"]["median"]  # type: ignore[index]
        rows.append(
            [r["environments"], seconds, seconds / r["environments"], r["peak_rss_mb"]["median"]]
        )  # type: ignore[index]
    print("Program evaluation under mocks (median of 5; time excludes importing Pulumi)")
    print(table(["envs", "seconds", "s/env", "peak RSS MB"], rows))
    hundred = next(r for r in results if r["environments"] == 100)["seconds"]["median"]  # type: ignore[index]
    verdict = "meets" if hundred < TARGET_100_S else "MISSES"
    print(f"100 environments: {hundred:.2f} s — {verdict} the < {TARGET_100_S:.0f} s target")
    path = write_result("program_eval", {"sizes": results, "target_100_s": TARGET_100_S})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
