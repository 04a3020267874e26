#!/usr/bin/env python3
"""dockyard idle monitor (R-HOST-1): stop idle agent environments, or power the host off
when every environment is idle. Run every minute (systemd timer or cron).

An environment is busy while a `claude` or `codex` process runs in it, a tmux client is
attached to it, or its CPU use is above a threshold. It is idle once it has not been busy
for IDLE_MINUTES. The decision (:func:`decide`) is a pure function of readings, the
previous state and the clock; reading the engine and acting are separate and injectable,
so tests drive it with fake readings, a fake clock and a harmless power-off command.

Config (JSON, --config): idle_minutes, cpu_threshold (percent), action ("stop" or
"poweroff"), poweroff_command (argv list), state_file, docker (CLI path), label.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

AGENT_COMMANDS = frozenset({"claude", "codex"})
ACTIONS = ("stop", "poweroff")
DEFAULTS = {
    "idle_minutes": 30,
    "cpu_threshold": 5.0,
    "action": "stop",
    "poweroff_command": ["systemctl", "poweroff"],
    "state_file": "/var/lib/dockyard/idle-monitor.json",
    "docker": "docker",
    "label": "dockyard.managed=true",
}


@dataclass(frozen=True)
class Reading:
    """What one environment is doing now."""

    name: str
    agent_processes: int
    tmux_clients: int
    cpu_percent: float

    def busy(self, cpu_threshold: float) -> str | None:
        """Why it is busy, or None."""
        if self.agent_processes:
            return f"{self.agent_processes} agent process(es)"
        if self.tmux_clients:
            return f"{self.tmux_clients} tmux client(s) attached"
        if self.cpu_percent > cpu_threshold:
            return f"cpu {self.cpu_percent:.1f}% > {cpu_threshold:g}%"
        return None


@dataclass
class Decision:
    stop: list[str] = field(default_factory=list)
    poweroff: bool = False
    state: dict[str, float] = field(default_factory=dict)
    """Container name -> last time (epoch s) it was seen busy."""
    notes: list[str] = field(default_factory=list)


def decide(
    readings: Iterable[Reading],
    state: Mapping[str, float],
    now: float,
    *,
    idle_minutes: float,
    cpu_threshold: float,
    action: str,
) -> Decision:
    """Pure: which environments to stop, or whether to power off.

    A newly seen environment counts as busy now (it gets the full idle period). With
    ``action="poweroff"`` the host goes down only when there is at least one environment
    and all are idle; nothing is stopped one by one then.
    """
    if action not in ACTIONS:
        raise ValueError(f"action {action!r} is not allowed (allowed: {', '.join(ACTIONS)})")
    decision = Decision()
    idle_after = idle_minutes * 60
    idle: list[str] = []
    readings = list(readings)
    for reading in readings:
        reason = reading.busy(cpu_threshold)
        last_busy = now if reason or reading.name not in state else state[reading.name]
        decision.state[reading.name] = last_busy
        idle_for = now - last_busy
        if reason:
            decision.notes.append(f"{reading.name}: busy ({reason})")
        elif idle_for >= idle_after:
            idle.append(reading.name)
            decision.notes.append(f"{reading.name}: idle for {idle_for / 60:.0f} min")
        else:
            decision.notes.append(
                f"{reading.name}: quiet for {idle_for / 60:.0f} of {idle_minutes:g} min"
            )
    if action == "stop":
        decision.stop = idle
    elif readings and len(idle) == len(readings):
        decision.poweroff = True
    return decision


# --- Reading the engine -------------------------------------------------------------------


Runner = Callable[[Sequence[str]], str]


def run(argv: Sequence[str]) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True, timeout=60).stdout


def read_environments(docker: str, label: str, runner: Runner = run) -> list[Reading]:
    names = runner([docker, "ps", "--filter", f"label={label}", "--format", "{{.Names}}"]).split()
    if not names:
        return []
    cpu: dict[str, float] = {}
    stats = runner([docker, "stats", "--no-stream", "--format", "{{.Name}} {{.CPUPerc}}", *names])
    for line in stats.splitlines():
        name, _, percent = line.partition(" ")
        cpu[name] = float(percent.strip().rstrip("%") or 0)
    readings = []
    for name in names:
        # `docker top` requires the PID column; the command name is the second one.
        rows = runner([docker, "top", name, "-o", "pid,comm"]).splitlines()[1:]
        commands = [row.split(None, 1)[1].strip() for row in rows if len(row.split(None, 1)) == 2]
        agents = sum(1 for command in commands if command in AGENT_COMMANDS)
        clients = _tmux_clients(docker, name, runner)
        readings.append(Reading(name, agents, clients, cpu.get(name, 0.0)))
    return readings


def _tmux_clients(docker: str, name: str, runner: Runner) -> int:
    try:
        out = runner(
            [docker, "exec", "-u", "1000", name, "tmux", "list-clients", "-F", "#{client_name}"]
        )
    except subprocess.CalledProcessError:
        return 0  # no tmux server: nobody attached
    return len([line for line in out.splitlines() if line.strip()])


# --- Acting -------------------------------------------------------------------------------


def load_state(path: str) -> dict[str, float]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {}
    return {str(k): float(v) for k, v in data.items()}


def save_state(path: str, state: Mapping[str, float]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(dict(state), handle, indent=2, sort_keys=True)
    os.replace(tmp, path)


def load_config(path: str | None) -> dict[str, object]:
    config = dict(DEFAULTS)
    if path:
        with open(path, encoding="utf-8") as handle:
            config.update(json.load(handle))
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown} (allowed: {', '.join(sorted(DEFAULTS))})")
    if config["action"] not in ACTIONS:
        raise ValueError(
            f"{path}: action {config['action']!r} is not allowed (allowed: {', '.join(ACTIONS)})"
        )
    if not isinstance(config["poweroff_command"], list) or not config["poweroff_command"]:
        raise ValueError(f"{path}: poweroff_command must be a non-empty argv list")
    return config


def main(
    argv: Sequence[str] | None = None, runner: Runner = run, clock: Callable[[], float] = time.time
) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="JSON config file")
    parser.add_argument("--dry-run", action="store_true", help="decide and print, change nothing")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    now = clock()
    readings = read_environments(str(config["docker"]), str(config["label"]), runner)
    decision = decide(
        readings,
        load_state(str(config["state_file"])),
        now,
        idle_minutes=float(config["idle_minutes"]),  # type: ignore[arg-type]
        cpu_threshold=float(config["cpu_threshold"]),  # type: ignore[arg-type]
        action=str(config["action"]),
    )
    for note in decision.notes:
        print(f"dockyard-idle: {note}")
    if args.dry_run:
        print(
            f"dockyard-idle: dry run: would stop {decision.stop or 'nothing'}; poweroff={decision.poweroff}"
        )
        return 0
    for name in decision.stop:
        runner([str(config["docker"]), "stop", name])
        decision.state.pop(name, None)
        print(f"dockyard-idle: stopped {name}")
    save_state(str(config["state_file"]), decision.state)
    if decision.poweroff:
        print(f"dockyard-idle: all environments idle; running {config['poweroff_command']}")
        runner(list(config["poweroff_command"]))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
