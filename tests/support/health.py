"""The env_health role's script run the way the host timer runs it, against one stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HEALTH_SCRIPT = REPO / "roles" / "env_health" / "files" / "dockyard-health.py"


def health_report(stack: str, report_file: Path, *args: str) -> dict[str, dict[str, Any]]:
    """Run the role's health script against one stack's environments; returns the
    report's environments by container name. The script exits 1 when a refresh failed;
    that is for the caller to assert, from the report."""
    result = subprocess.run(
        [
            sys.executable,
            str(HEALTH_SCRIPT),
            "--label",
            f"dockyard.stack={stack}",
            "--report-file",
            str(report_file),
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    return {env["name"]: env for env in report["environments"]}
