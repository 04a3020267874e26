"""`playbooks/site.yml` on a local container host: first run and idempotent second run.

The host is a fresh container from the core image per run (docker connection, as the
role tests do); docker_host is skipped (it manages this machine's engine). Baseline in
the same run: a playbook of one `ping` task on the same kind of host — Ansible's own
fixed cost (start-up, connection, fact gathering) that no role can go below.

Budget: second (idempotent) run <= 10 s. Each role compares the host with its desired
state in one call (roles/host_common) and converges only on drift, so the second run is
fact gathering plus three comparisons; tests/roles/test_site_playbook.py proves that a
change made between runs is still repaired.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RUNS, engine, stat_row, summary, table, verdict, write_result

BUDGET_SECOND_S = 10.0
VARIABLES = {
    "ansible_become": False,
    "dockyard_docker_hosts": "dockyard",
    "idle_monitor_poweroff_command": ["/bin/true"],
}
BASELINE = """\
- name: Baseline
  hosts: dockyard
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""


def main() -> int:
    client = engine()
    from tests.support.ansible import TargetFleet, run_playbook
    from tests.support.images import build_image

    image = build_image(client, "dockyard-core")
    first, second, baseline, changed = [], [], [], []
    surprises: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
        fleet = TargetFleet(client, image, Path(tmp), [])
        baseline_book = Path(tmp) / "baseline.yml"
        baseline_book.write_text(BASELINE)
        try:
            for _ in range(RUNS):
                (host,) = fleet.start()
                inventory = fleet.inventory([host])
                args = ["--skip-tags", "docker_host"]
                start = time.perf_counter()
                run_playbook(str(baseline_book), inventory=inventory)
                baseline.append(time.perf_counter() - start)
                start = time.perf_counter()
                run_playbook("site.yml", inventory=inventory, extra_vars=VARIABLES, args=args)
                first.append(time.perf_counter() - start)
                start = time.perf_counter()
                again = run_playbook(
                    "site.yml", inventory=inventory, extra_vars=VARIABLES, args=args
                )
                second.append(time.perf_counter() - start)
                changed.append(again.changed()[host.name])
                if again.tasks_changed():
                    # Not idempotent this time: say which tasks, or the figure means nothing.
                    surprises.append(again.tasks_changed())
                    print(f"second run changed: {again.tasks_changed()}\n{again.output[-3000:]}")
                host.remove(force=True, v=True)
                fleet.containers.remove(host)
        finally:
            for container in fleet.containers:
                container.remove(force=True, v=True)
    base = summary(baseline)["median"]
    rows = [
        stat_row("baseline (ping)", baseline, base),
        stat_row("site.yml first run", first, base),
        stat_row("site.yml second run", second, base),
    ]
    print(f"Ansible site.yml on a container host (seconds, median/min/max of {RUNS})")
    print(table(["what", "median", "min", "max", "x baseline"], rows))
    print(
        f"second run {summary(second)['median']:.1f} s, changed={changed} — "
        f"{verdict(summary(second)['median'], BUDGET_SECOND_S)} the {BUDGET_SECOND_S:.0f} s budget"
    )
    path = write_result(
        "ansible_site",
        {
            "baseline_ping_s": summary(baseline),
            "first_run_s": summary(first),
            "second_run_s": summary(second),
            "second_run_changed": changed,
            "second_run_changed_tasks": surprises,
            "budget_second_s": BUDGET_SECOND_S,
        },
    )
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
