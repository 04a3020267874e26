"""The installed ``dockyard`` console script, as engine tests run it: one environment
(its settings and state directories), from a project directory."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

DOCKYARD = Path(sys.executable).with_name("dockyard")


@dataclass
class Cli:
    """``dockyard`` with ``env``, run in ``project`` (None: the test's own directory).
    Test modules subclass it with their own fields and verbs."""

    env: dict[str, str]
    project: Path | None

    timeout: ClassVar[float] = 180
    """Seconds one command may take (a subclass sets its own)."""

    def run(
        self, *args: str, stdin: str | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DOCKYARD), *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout or self.timeout,
            check=False,
            cwd=self.project,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(DOCKYARD), *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.project,
        )

    def json(self, *args: str, stdin: str | None = None) -> Any:
        """``dockyard ARGS --json``'s answer; a failure fails the test with its output."""
        result = self.run(*args, "--json", stdin=stdin)
        assert result.returncode == 0, (
            f"dockyard {' '.join(args)}: rc {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
        return json.loads(result.stdout)
