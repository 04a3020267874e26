#!/usr/bin/env python3
"""dockyard idle monitor (R-HOST-1): stop, pause or hibernate idle agent environments, or
power the host off when every environment is idle. Run every minute (systemd timer or cron).

An environment is busy while a `claude` or `codex` process runs in it, a tmux client is
attached to it, or its CPU use is above a threshold. It is idle once it has not been busy
for IDLE_MINUTES. The decision (:func:`decide`) is a pure function of readings, the
previous state and the clock; reading the engine and acting are separate and injectable,
so tests drive it with fake readings, a fake clock and a harmless power-off command.

Config (JSON, --config): idle_minutes, cpu_threshold (percent), action ("stop", "pause",
"hibernate" or "poweroff"), poweroff_command (argv list), state_file, docker (CLI path),
label, backup_command (argv list; [] for none), poweroff_without_backup and
probe_timeout_seconds.

Actions on an idle environment (issue 29 item 4): ``stop`` stops its container (its
processes end; the workspace stays); ``pause`` freezes it (``docker pause``: processes and
memory kept, no CPU; an API exec or file call wakes it, see docs/instant-sessions.md);
``hibernate`` checkpoints its processes and memory to disk with CRIU (``docker checkpoint
create``, the checkpoint dockyard's ``resume`` restores) and stops it. With pause and
hibernate only running environments are read (a paused one is already suspended).
``--check-config`` with ``hibernate`` measures whether this host can checkpoint (the
engine's experimental mode, ``criu check``) and refuses the configuration, saying why,
where it cannot; a checkpoint that fails at run time is reported (exit 1) and the
environment is left running.

The tmux probe runs inside the environment as the agent, which is hostile: it can hold the
probe's output open or flood it. The probe runs under ``timeout -s KILL`` inside, and the
host reads at most PROBE_MAX_BYTES of it within probe_timeout_seconds (plus the docker
CLI's own start-up) before killing the CLI; an environment whose probe overran counts as
busy with an ``unknown`` reason (never stopped on a guess) and the others are read as
usual.

With a backup command (the workspace_backup role's hook), each environment's workspace is
backed up before it is stopped, and every running one before the host is powered off. A
failed backup is reported (exit 1) and the stop goes on (the volume stays on the host);
the power-off does not, unless poweroff_without_backup is true.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Installed, the package's host modules sit beside this script as dockyard/ (its directory
# is sys.path[0]; host_common installs them); in the repository, the checkout's package.
from dockyard import host

AGENT_COMMANDS = frozenset({"claude", "codex"})
ACTIONS = ("stop", "pause", "hibernate", "poweroff")
# Actions taken on each idle environment one by one (poweroff acts on the host).
PER_ENVIRONMENT = ("stop", "pause", "hibernate")
# The checkpoint's name on a hibernated container: dockyard.sessions.hibernate.CHECKPOINT
# (its `resume` restores it); a contract test keeps them equal.
CHECKPOINT = "dockyard-hibernate"
CRIU = ("/usr/sbin/criu", "/sbin/criu", "/usr/local/sbin/criu")
AUDIT_ACTOR = "host:dockyard-idle-monitor"
# The role's defaults (roles/idle_monitor/defaults/main.yml) are the same values; a
# contract test keeps them equal.
DEFAULTS: dict[str, object] = {
    "idle_minutes": 30,
    "cpu_threshold": 5.0,
    "action": "stop",
    "poweroff_command": ["systemctl", "poweroff"],
    "state_file": "/var/lib/dockyard/idle-monitor.json",
    "docker": "docker",
    "label": host.MANAGED_SELECTOR,
    "backup_command": [],
    "poweroff_without_backup": False,
    "probe_timeout_seconds": 10.0,
}
# `tmux list-clients` prints one short line per client; more is not its answer.
PROBE_MAX_BYTES = 64 * 1024
# What the docker CLI itself takes to start an exec, on top of the probe's own deadline.
CLI_SLACK_S = 5.0


@dataclass(frozen=True)
class Reading:
    """What one environment is doing now."""

    name: str
    agent_processes: int
    tmux_clients: int
    cpu_percent: float
    # Why it could not be read (its probe overran and was killed); it then counts as busy.
    unknown: str | None = None

    def busy(self, cpu_threshold: float) -> str | None:
        """Why it is busy, or None."""
        if self.unknown:
            return f"unknown: {self.unknown}"
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
    """Idle environments to act on: stop, pause or hibernate them (the action's)."""
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
    """Pure: which environments to stop, pause or hibernate (``stop``), or whether to
    power off.

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
    if action in PER_ENVIRONMENT:
        decision.stop = idle
    elif readings and len(idle) == len(readings):
        decision.poweroff = True
    return decision


# --- Reading the engine -------------------------------------------------------------------


Runner = host.Runner
run = host.run


def read_environments(
    docker: str,
    label: str,
    runner: Runner = run,
    probe_timeout: float = float(DEFAULTS["probe_timeout_seconds"]),  # type: ignore[arg-type]
    probe_runner: Runner | None = None,
    running_only: bool = False,
) -> list[Reading]:
    """One Reading per running environment (``running_only``: not the paused ones either).
    ``probe_runner`` runs the in-environment probe (default: ``runner``, or, for the real
    :func:`run`, run bounded to PROBE_MAX_BYTES and ``probe_timeout`` + CLI_SLACK_S)."""
    killer: Callable[[str], str] | None = None
    if probe_runner is None:
        probe_runner = runner
        if runner is run:
            probe_runner = functools.partial(
                run, timeout=probe_timeout + CLI_SLACK_S, max_bytes=PROBE_MAX_BYTES
            )
            killer = kill_probe
    only = ["--filter", "status=running"] if running_only else []
    names = runner(
        [docker, "ps", "--filter", f"label={label}", *only, "--format", "{{.Names}}"]
    ).split()
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
        clients, unknown = _tmux_clients(docker, name, probe_runner, probe_timeout, killer)
        readings.append(Reading(name, agents, clients, cpu.get(name, 0.0), unknown))
    return readings


# timeout(1)'s exit when it killed the command (124; 137 when KILL was the signal sent).
TIMED_OUT = (124, 137)


TMUX_PROBE = ["tmux", "list-clients", "-F", "#{client_name}"]


def _tmux_clients(
    docker: str,
    name: str,
    runner: Runner,
    timeout: float,
    killer: Callable[[str], str] | None = None,
) -> tuple[int, str | None]:
    """(attached tmux clients, None), or (0, why) when the probe overran its bounds. The
    probe runs under ``timeout -s KILL`` inside; the agent can stop that too, so after an
    overrun ``killer`` kills what is left of it from the host."""
    inside = ["timeout", "-s", "KILL", str(math.ceil(timeout))]
    argv = [docker, "exec", "-u", "1000", name, *inside, *TMUX_PROBE]
    try:
        out = runner(argv)
    except host.Overrun as exc:
        killed = killer(name) if killer is not None else "not killed from the host"
        return 0, f"tmux probe {exc.bound}; docker CLI killed; {killed}"
    except host.CommandError as exc:
        if exc.returncode in TIMED_OUT:
            return 0, f"tmux probe killed inside after {math.ceil(timeout)} s"
        return 0, None  # no tmux server: nobody attached
    return len([line for line in out.splitlines() if line.strip()]), None


def kill_probe(name: str) -> str:
    """Kill, from the host, the tmux probe execs still running in container ``name`` (the
    engine's exec records: only an exec of exactly this probe is touched)."""
    try:
        engine = host.Engine.from_env()
        killed = []
        for exec_id in engine.inspect(name).get("ExecIDs") or []:
            info = engine.request("GET", f"/exec/{exec_id}/json", deadline_s=10)
            process = info.get("ProcessConfig") or {}
            arguments = process.get("arguments") or []
            if (
                info.get("Running")
                and process.get("entrypoint") == "timeout"
                and arguments[3:] == TMUX_PROBE
            ):
                killed.append(engine.kill_exec(exec_id))
    except host.HostError as exc:
        return f"not killed from the host ({exc})"
    return "; ".join(killed) or "nothing of it left running"


# --- Acting -------------------------------------------------------------------------------


def _labels(docker: str, name: str, runner: Runner) -> dict[str, str]:
    """The container's labels (session, tenant, stack for the audit line); {} if unknown."""
    try:
        out = runner([docker, "inspect", "--format", "{{json .Config.Labels}}", name])
        labels = json.loads(out or "{}")
    except (host.HostError, OSError, ValueError, TypeError):
        return {}
    return labels if isinstance(labels, dict) else {}


def load_state(path: str) -> dict[str, float]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {}
    return {str(k): float(v) for k, v in data.items()}


def save_state(path: str, state: Mapping[str, float]) -> None:
    host.write_atomic(path, json.dumps(dict(state), indent=2, sort_keys=True) + "\n")


def hibernate_problems(docker: str, runner: Runner = run) -> list[str]:
    """What keeps this host from hibernating (checkpointing) environments, measured:
    the engine's experimental mode and ``criu check``; [] when it can."""
    problems = []
    try:
        mode = runner([docker, "version", "--format", "{{.Server.Experimental}}"]).strip()
    except host.HostError as exc:
        mode = f"unknown ({exc})"
    if mode != "true":
        problems.append(
            f"the engine does not run in experimental mode (Server.Experimental: {mode}; "
            'set "experimental": true in /etc/docker/daemon.json and restart dockerd)'
        )
    criu = shutil.which("criu") or next((c for c in CRIU if os.access(c, os.X_OK)), None)
    if criu is None:
        problems.append("criu is not installed (no `criu` on PATH or in /usr/sbin)")
    else:
        try:
            runner([criu, "check"])
        except host.HostError as exc:
            said = getattr(exc, "stderr", "") or str(exc)
            problems.append(
                f"`criu check` fails: {said.strip()[-400:]} (Debian 12's criu 3.17 fails on "
                "kernel 6.18 this way: a newer CRIU is needed, e.g. built from Debian 13's "
                "source package)"
            )
    return problems


def load_config(path: str | None) -> dict[str, Any]:
    config = host.load_config(path, DEFAULTS)
    host.parse_selector(config["label"])
    if config["action"] not in ACTIONS:
        raise host.ConfigError(
            f"action {config['action']!r} is not allowed (allowed: {', '.join(ACTIONS)})"
        )
    command = config["poweroff_command"]
    if not command or not all(isinstance(arg, str) and arg for arg in command):
        raise host.ConfigError(
            f"poweroff_command: {json.dumps(command)} is not allowed (allowed: a non-empty "
            "argv list of strings)"
        )
    host.check_command("backup_command", config["backup_command"])
    if config["idle_minutes"] <= 0 or config["cpu_threshold"] < 0:
        raise host.ConfigError(
            f"idle_minutes {config['idle_minutes']!r} / cpu_threshold {config['cpu_threshold']!r}"
            " are not allowed (allowed: idle_minutes > 0, cpu_threshold >= 0)"
        )
    if not 0 < config["probe_timeout_seconds"] <= 300:
        raise host.ConfigError(
            f"probe_timeout_seconds: {config['probe_timeout_seconds']!r} is not allowed "
            "(allowed: more than 0, at most 300)"
        )
    return config


PAST = {"stop": "stopped", "pause": "paused", "hibernate": "hibernated"}


def act(verb: str, docker: str, name: str, runner: Runner) -> str | None:
    """Stop, pause or hibernate environment ``name``; None when done, else why not (the
    environment is then left as it was: running). Hibernate replaces a stale checkpoint
    of dockyard's name (left by a restore that failed) and checkpoints with CRIU, which
    stops the container."""
    try:
        if verb == "hibernate":
            with contextlib.suppress(host.HostError):
                runner([docker, "checkpoint", "rm", name, CHECKPOINT])
            runner([docker, "checkpoint", "create", name, CHECKPOINT])
        else:
            runner([docker, verb, name])
    except host.HostError as exc:
        return str(exc)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="JSON config file")
    parser.add_argument("--dry-run", action="store_true", help="decide and print, change nothing")
    parser.add_argument(
        "--check-config", action="store_true", help="validate the configuration and exit"
    )
    return parser


def main(
    argv: Sequence[str] | None = None, runner: Runner = run, clock: Callable[[], float] = time.time
) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except (host.HostError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        if config["action"] == "hibernate":
            problems = hibernate_problems(str(config["docker"]), runner)
            if problems:
                print(
                    "ERROR: action 'hibernate' is not possible on this host: "
                    f"{'; '.join(problems)} (allowed here: stop, pause, poweroff)",
                    file=sys.stderr,
                )
                return 2
        return 0
    now = clock()
    try:
        readings = read_environments(
            str(config["docker"]),
            str(config["label"]),
            runner,
            float(config["probe_timeout_seconds"]),  # type: ignore[arg-type]
            running_only=config["action"] in ("pause", "hibernate"),
        )
    except host.HostError as exc:
        print(f"ERROR: cannot read the environments: {exc}", file=sys.stderr)
        return 1
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
    action = str(config["action"])
    verb = action if action in PER_ENVIRONMENT else "stop"
    if args.dry_run:
        print(
            f"dockyard-idle: dry run: would {verb} {decision.stop or 'nothing'}; "
            f"poweroff={decision.poweroff}"
        )
        return 0
    backup = list(config["backup_command"])  # type: ignore[call-overload]
    hook_runner = None if runner is run else runner
    failed: list[str] = []
    docker = str(config["docker"])
    for name in decision.stop:
        # Stopped and hibernated environments are backed up first (the backup hook's
        # reason idle-stop); a paused one stays where it is: nothing to back up.
        why = None if verb == "pause" else host.backup_first(backup, name, "idle-stop", hook_runner)
        if why:
            failed.append(name)
            print(
                f"ERROR: dockyard-idle: backup of {name} before its {verb} failed: {why}",
                file=sys.stderr,
            )
        started = time.monotonic()
        refused = act(verb, docker, name, runner)
        if refused:
            failed.append(name)
            print(f"ERROR: dockyard-idle: {verb} of {name} failed: {refused}", file=sys.stderr)
        else:
            decision.state.pop(name, None)
            print(f"dockyard-idle: {PAST[verb]} {name}")
        host.audit(
            f"idle-{verb}",
            actor=AUDIT_ACTOR,
            labels=_labels(docker, name, runner),
            result="error" if name in failed else "ok",
            duration_ms=round((time.monotonic() - started) * 1000),
            detail=f"idle; {verb} failed: {refused}"[:500]
            if refused
            else ("idle; backup failed" if name in failed else "idle"),
        )
    save_state(str(config["state_file"]), decision.state)
    if decision.poweroff:
        for reading in readings:
            why = host.backup_first(backup, reading.name, "poweroff", hook_runner)
            if why:
                failed.append(reading.name)
                print(
                    f"ERROR: dockyard-idle: backup of {reading.name} before power-off failed: {why}",
                    file=sys.stderr,
                )
        if failed and not config["poweroff_without_backup"]:
            host.audit(
                "idle-poweroff",
                actor=AUDIT_ACTOR,
                result="error",
                detail=f"not powered off: backup of {', '.join(failed)} failed",
            )
            print(
                f"ERROR: dockyard-idle: not powering off: the backup of {', '.join(failed)} "
                "failed (poweroff_without_backup: true powers off anyway)",
                file=sys.stderr,
            )
            return 1
        print(f"dockyard-idle: all environments idle; running {config['poweroff_command']}")
        # Written before the command: after a power-off there is no after.
        host.audit("idle-poweroff", actor=AUDIT_ACTOR, detail=f"{len(readings)} environments idle")
        runner(list(config["poweroff_command"]))  # type: ignore[arg-type]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
