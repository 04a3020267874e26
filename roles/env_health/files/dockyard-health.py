#!/usr/bin/env python3
"""dockyard health report and refresh policy (R-HOST-3).

For every dockyard environment on this Docker host: container status, health status and
failing streak, age in hours, memory use / limit / %, workspace disk use %, processes
OOM-killed by its memory limit. Writes a JSON report (atomically) and one log line per
environment. With --refresh, an environment past a threshold (age, disk, memory, failed
checks) is recreated keeping its volumes:

  stop (its entrypoint checkpoints) -> rename aside -> create the same container from its
  own configuration (image, env, labels, mounts, limits, pids cap, network) -> carry the
  /run/secrets files over in memory -> start -> remove the old one.

If any step fails the old container is renamed back and started; the report says why.
With a backup command (config ``refresh_backup_command``: the workspace_backup role's hook), the
workspace is backed up first; a failed backup is reported and the refresh goes on (it
keeps the volumes).
An environment that exited non-zero (killed, crashed) is started again with --refresh:
`docker kill` counts as a manual stop for the engine's restart policy, a clean stop
(the entrypoint's checkpoint path, e.g. the idle monitor's `docker stop`) exits 0 and is
left alone.
Pulumi's state still names the old container id afterwards: run `pulumi refresh` (or
pass --manifest-dir so the manifest file is updated for apps that read it).

Everything read from an environment is bounded (the agent inside is hostile): the
in-container probe gets ``probe_timeout_seconds`` in all and PROBE_MAX_BYTES of output,
after which it is killed (inside and from the host) and that environment is reported
with ``probe: unknown: <why>`` while the report goes on with the next one; every other
engine read has its own cap and deadline, and refresh reads the /run/secrets tar (a
directory the agent can write) in chunks up to SECRETS_MAX_BYTES, refusing the refresh
beyond that before anything is stopped.

stdlib only; talks to the engine over its unix socket (DOCKER_HOST=unix://... or the
default /var/run/docker.sock).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

# Installed, the package's host modules sit beside this script as dockyard/ (its directory
# is sys.path[0]; host_common installs them); in the repository, the checkout's package.
from dockyard import host

Engine = host.Engine
EngineError = host.EngineError

# The role's defaults (roles/env_health/defaults/main.yml) are the same values; a
# contract test keeps them equal.
DEFAULTS: dict[str, Any] = {
    "label": host.MANAGED_SELECTOR,
    "report_file": "/var/lib/dockyard/health/report.json",
    "max_age_hours": 72.0,
    "max_disk_pct": 80.0,
    "max_memory_pct": 90.0,
    "max_failed_checks": 3,
    "refresh": False,
    "workspace": "/workspace",
    "manifest_dir": "",
    "refresh_backup_command": [],
    "metrics_file": "/var/lib/dockyard/health/dockyard.prom",
    "log_format": "text",
    "probe_timeout_seconds": 20.0,
}
# The probe prints two short lines; anything past this is not a probe's answer.
PROBE_MAX_BYTES = 64 * 1024
# Secret files are keys and tokens: a tar of them far over this is not secrets.
SECRETS_MAX_BYTES = 8 * 2**20
# Engine reads per environment (inspect, stats, archive): the engine answers these, but a
# wedged container must not hold the report either.
ENGINE_DEADLINE_S = 60.0
AUDIT_ACTOR = "host:dockyard-health"
THRESHOLDS = ("max_age_hours", "max_disk_pct", "max_memory_pct", "max_failed_checks")


@dataclass
class Status:
    name: str
    id: str
    status: str
    health: str
    failing_streak: int
    age_hours: float
    memory_used_mb: float | None
    memory_limit_mb: float | None
    memory_pct: float | None
    disk_pct: float | None
    oom_kills: int | None = None
    exit_code: int = 0
    restarts: int = 0
    manifest: str = "unchanged"
    refresh_reasons: list[str] = field(default_factory=list)
    action: str = "none"
    # "ok", or "unknown: <why>" when the environment could not be measured (its probe
    # overran its bounds and was killed, could not start, or the engine failed to answer).
    probe: str = "ok"
    labels: dict[str, str] = field(default_factory=dict)


def collect(
    engine: Engine,
    label: str,
    workspace: str,
    now: datetime,
    probe_timeout: float = DEFAULTS["probe_timeout_seconds"],
) -> list[Status]:
    """One Status per environment. An environment that cannot be read (it vanished, the
    engine does not answer for it in time, its probe overran) gets ``probe: unknown``
    and the others are still read."""
    statuses = []
    for summary in sorted(engine.containers(label), key=lambda c: c["Names"][0]):
        try:
            info = engine.inspect(summary["Id"])
        except EngineError as exc:
            statuses.append(_unreadable(summary, now, f"unknown: inspect: {exc}"))
            continue
        state = info["State"]
        health = state.get("Health") or {}
        created = host.parse_engine_time(info["Created"])
        used = limit = pct = disk = oom = None
        probe = "ok"
        if state["Status"] == "running":
            try:
                stats = engine.request(
                    "GET",
                    f"/containers/{info['Id']}/stats?stream=false",
                    deadline_s=ENGINE_DEADLINE_S,
                )
            except EngineError as exc:
                probe = f"unknown: stats: {exc}"
            else:
                used, limit, pct = _memory(stats, info)
                disk, oom, probe = _inside(engine, info["Id"], workspace, probe_timeout)
        elif state.get("OOMKilled"):
            oom = 1
        statuses.append(
            Status(
                name=info["Name"].lstrip("/"),
                id=info["Id"],
                status=state["Status"],
                health=health.get("Status", "none"),
                failing_streak=int(health.get("FailingStreak", 0)),
                age_hours=round((now - created).total_seconds() / 3600, 2),
                memory_used_mb=used,
                memory_limit_mb=limit,
                memory_pct=pct,
                disk_pct=disk,
                oom_kills=oom,
                exit_code=int(state.get("ExitCode") or 0),
                restarts=int(info.get("RestartCount") or 0),
                probe=probe,
                labels=dict(info.get("Config", {}).get("Labels") or {}),
            )
        )
    return statuses


def _unreadable(summary: Mapping[str, Any], now: datetime, why: str) -> Status:
    """What the container list says of an environment that could not be inspected."""
    created = datetime.fromtimestamp(int(summary.get("Created") or 0), UTC)
    return Status(
        name=str((summary.get("Names") or ["/?"])[0]).lstrip("/"),
        id=str(summary["Id"]),
        status=str(summary.get("State") or "unknown"),
        health="unknown",
        failing_streak=0,
        age_hours=round((now - created).total_seconds() / 3600, 2),
        memory_used_mb=None,
        memory_limit_mb=None,
        memory_pct=None,
        disk_pct=None,
        probe=why,
        labels=dict(summary.get("Labels") or {}),
    )


def _memory(stats: Mapping[str, Any], info: Mapping[str, Any]) -> tuple[float, float, float]:
    memory = stats.get("memory_stats") or {}
    usage = float(memory.get("usage", 0))
    # What `docker stats` shows: page cache that can be dropped does not count.
    cache = (memory.get("stats") or {}).get(
        "total_inactive_file", (memory.get("stats") or {}).get("inactive_file", 0)
    )
    used = max(usage - float(cache), 0.0)
    limit = float(info["HostConfig"].get("Memory") or memory.get("limit") or 0)
    pct = round(100 * used / limit, 2) if limit else 0.0
    return round(used / 2**20, 1), round(limit / 2**20, 1), pct


# One exec per environment: workspace disk use, then the memory cgroup's OOM-kill counter
# (cgroup v2 memory.events, or v1 memory.oom_control; both say `oom_kill N`).
INSIDE_SCRIPT = (
    'df -P "$1" | tail -n 1; '
    "cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null; "
    "true"
)


def _inside(
    engine: Engine, ref: str, workspace: str, timeout: float
) -> tuple[float | None, int | None, str]:
    """Workspace disk use %, OOM kills and the probe verdict, measured in the container.
    The probe runs as the agent, so the agent can stop it, hold its output open or write
    into it: it gets ``timeout`` seconds in all and PROBE_MAX_BYTES of output, then it is
    killed and the verdict says ``unknown: <why>`` (also when the exec cannot start, e.g.
    the environment is at its process cap)."""
    try:
        result = engine.exec_bounded(
            ref,
            ["sh", "-c", INSIDE_SCRIPT, "sh", workspace],
            deadline_s=timeout,
            max_bytes=PROBE_MAX_BYTES,
        )
    except EngineError as exc:
        return None, None, f"unknown: probe could not run: {exc}"
    if result.problem is not None:
        return None, None, f"unknown: probe {result.problem}"
    if result.code != 0:
        return None, None, f"unknown: probe exited {result.code}"
    lines = result.output.strip().splitlines()
    disk = oom = None
    if lines and len(fields := lines[0].split()) >= 5 and fields[4].rstrip("%").isdigit():
        disk = float(fields[4].rstrip("%"))
    for line in lines[1:]:
        key, _, value = line.strip().partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            oom = int(value)
    return disk, oom, "ok"


def evaluate(status: Status, config: Mapping[str, Any]) -> list[str]:
    """Why this environment needs a refresh (empty: it does not)."""
    reasons = []
    if status.status in ("exited", "dead") and status.exit_code != 0:
        reasons.append(
            f"exited with code {status.exit_code} (killed or crashed; a clean stop exits 0)"
        )
        return reasons
    if status.age_hours > float(config["max_age_hours"]):
        reasons.append(f"age {status.age_hours:.1f} h > {config['max_age_hours']:g} h")
    if status.disk_pct is not None and status.disk_pct > float(config["max_disk_pct"]):
        reasons.append(f"disk {status.disk_pct:g}% > {config['max_disk_pct']:g}%")
    if status.memory_pct is not None and status.memory_pct > float(config["max_memory_pct"]):
        reasons.append(f"memory {status.memory_pct:g}% > {config['max_memory_pct']:g}%")
    if status.failing_streak >= int(config["max_failed_checks"]):
        reasons.append(
            f"{status.failing_streak} failed health checks >= {config['max_failed_checks']}"
        )
    return reasons


# --- Refresh --------------------------------------------------------------------------


def refresh(engine: Engine, name: str) -> str:
    """Recreate container ``name`` from its own configuration, keeping volumes and secret
    files. Returns the new container id."""
    old = engine.inspect(name)
    # A tar of /run/secrets (200), or a JSON error when the container has none (404).
    # The agent owns that directory: read at most SECRETS_MAX_BYTES of it, in chunks, and
    # refuse the refresh beyond that while nothing has been stopped yet.
    try:
        found = engine.request(
            "GET",
            f"/containers/{old['Id']}/archive?path=/run/secrets",
            expect=(200, 404),
            max_bytes=SECRETS_MAX_BYTES,
            deadline_s=ENGINE_DEADLINE_S,
        )
    except host.EngineOverrun as exc:
        raise EngineError(
            f"/run/secrets of {name}: {exc.bound} as a tar (allowed: at most "
            f"{SECRETS_MAX_BYTES} bytes within {ENGINE_DEADLINE_S:g} s; nothing was stopped)"
        ) from None
    secrets = found if isinstance(found, bytes) else b""
    engine.request("POST", f"/containers/{old['Id']}/stop?t=10")
    aside = f"{name}-refresh-{int(time.time())}"
    engine.request("POST", f"/containers/{old['Id']}/rename?name={aside}")
    new_id = ""
    try:
        networks = old["NetworkSettings"]["Networks"]
        first = next(iter(networks), None)
        body = {**old["Config"], "Image": old["Image"], "HostConfig": old["HostConfig"]}
        if first:
            body["NetworkingConfig"] = {
                "EndpointsConfig": {first: {"Aliases": networks[first].get("Aliases")}}
            }
            body["HostConfig"] = {**old["HostConfig"], "NetworkMode": first}
        created = engine.request(
            "POST", f"/containers/create?name={urllib.parse.quote(name)}", body
        )
        new_id = created["Id"]
        for network in list(networks)[1:]:
            engine.request("POST", f"/networks/{network}/connect", {"Container": new_id})
        if secrets:
            engine.request("PUT", f"/containers/{new_id}/archive?path=/run", raw=secrets)
        engine.request("POST", f"/containers/{new_id}/start")
    except EngineError:
        if new_id:
            engine.request("DELETE", f"/containers/{new_id}?force=1", expect=(204, 404))
        engine.request("POST", f"/containers/{old['Id']}/rename?name={urllib.parse.quote(name)}")
        engine.request("POST", f"/containers/{old['Id']}/start")
        raise
    engine.request("DELETE", f"/containers/{old['Id']}")
    return new_id


def sync_manifest(manifest_dir: str, old_id: str, info: Mapping[str, Any]) -> str:
    """Make the manifest of container ``old_id`` describe ``info`` (the same container or
    its replacement): id, creation time and the published host ports as the engine has
    them now — a restart allocates new random host ports. The result is validated against
    the manifest schema before it replaces the file (dockyard_host.rewrite_manifest).

    Returns "unchanged" (no manifest, or already true), "updated", or "refused: <why>"
    when the rewritten manifest would not be valid (the file is left as it was)."""
    path = host.manifest_for_container(manifest_dir, old_id)
    if path is None:
        return "unchanged"
    published = _host_ports(info)

    def describe_now(manifest: dict[str, Any]) -> None:
        container = manifest["container"]
        container["id"] = info["Id"]
        manifest["createdAt"] = host.iso_millis(host.parse_engine_time(info["Created"]))
        if info["State"]["Running"] and published:
            container["portMappings"] = [
                {"containerPort": m["containerPort"], "hostPort": published[m["containerPort"]]}
                for m in container.get("portMappings", [])
                if m["containerPort"] in published
            ]

    try:
        return "updated" if host.rewrite_manifest(path, describe_now) else "unchanged"
    except (host.ManifestError, KeyError, TypeError) as exc:
        reason = str(exc).splitlines()
        return f"refused: {path}: {' '.join(line.strip() for line in reason)[:300]}"


def _host_ports(info: Mapping[str, Any]) -> dict[int, int]:
    ports = (info.get("NetworkSettings") or {}).get("Ports") or {}
    return {
        int(key.split("/")[0]): int(bindings[0]["HostPort"])
        for key, bindings in ports.items()
        if bindings and key.endswith("/tcp")
    }


# --- Report -------------------------------------------------------------------------------


def log_line(status: Status) -> str:
    memory = (
        "n/a"
        if status.memory_pct is None
        else f"{status.memory_pct:g}% ({status.memory_used_mb:g}/{status.memory_limit_mb:g} MB)"
    )
    disk = "n/a" if status.disk_pct is None else f"{status.disk_pct:g}%"
    oom = "n/a" if status.oom_kills is None else str(status.oom_kills)
    verdict = (
        "ok"
        if not status.refresh_reasons
        else "refresh needed: " + "; ".join(status.refresh_reasons)
    )
    return (
        f"dockyard-health name={status.name} status={status.status} health={status.health} "
        f"age_h={status.age_hours:g} memory={memory} disk={disk} oom_kills={oom} "
        f"probe={status.probe} verdict={verdict} action={status.action}"
    )


METRICS = (
    # name, help, value of a Status (None: not measured, the sample is left out)
    ("up", "1 if the environment's container is running.", lambda s: float(s.status == "running")),
    (
        "healthy",
        "1 if the container's health check says healthy.",
        lambda s: float(s.health == "healthy"),
    ),
    ("age_hours", "Hours since the container was created.", lambda s: s.age_hours),
    ("memory_used_bytes", "Memory in use.", lambda s: _mb(s.memory_used_mb)),
    ("memory_limit_bytes", "Memory limit.", lambda s: _mb(s.memory_limit_mb)),
    (
        "disk_used_ratio",
        "Workspace disk use, 0-1.",
        lambda s: None if s.disk_pct is None else s.disk_pct / 100,
    ),
    ("restarts_total", "Times the engine restarted the container.", lambda s: float(s.restarts)),
    (
        "measured",
        "1 if the environment could be measured; 0 if its probe overran its bounds or failed.",
        lambda s: float(s.probe == "ok"),
    ),
    (
        "oom_kills_total",
        "Processes the kernel killed for memory.",
        lambda s: None if s.oom_kills is None else float(s.oom_kills),
    ),
)


def _mb(value: float | None) -> float | None:
    return None if value is None else value * 1024 * 1024


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics(statuses: Sequence[Status], now: datetime) -> str:
    """The report in Prometheus' text format, for node_exporter's textfile collector."""
    lines = [
        "# HELP dockyard_health_report_timestamp_seconds When the report ran.",
        "# TYPE dockyard_health_report_timestamp_seconds gauge",
        f"dockyard_health_report_timestamp_seconds {now.timestamp():.3f}",
    ]
    for name, help_text, value in METRICS:
        metric = f"dockyard_environment_{name}"
        kind = "counter" if name.endswith("_total") else "gauge"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
        for status in statuses:
            sample = value(status)
            if sample is None:
                continue
            labels = {
                "environment": status.name,
                "session": status.labels.get(host.LABEL_SESSION, ""),
                "stack": status.labels.get(host.LABEL_STACK, ""),
                "tenant": status.labels.get(host.LABEL_TENANT, ""),
            }
            rendered = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
            lines.append(f"{metric}{{{rendered}}} {float(sample)!r}")
    return "\n".join(lines) + "\n"


def load_config(path: str | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    config = host.load_config(path, DEFAULTS, overrides)
    host.parse_selector(config["label"])
    if config["log_format"] not in ("text", "json"):
        raise host.ConfigError(
            f"log_format: {config['log_format']!r} is not allowed (allowed: text or json)"
        )
    if config["metrics_file"] and not config["metrics_file"].startswith("/"):
        raise host.ConfigError(
            f"metrics_file: {config['metrics_file']!r} is not allowed (allowed: an absolute "
            "path, or empty for no metrics)"
        )
    host.check_command("refresh_backup_command", config["refresh_backup_command"])
    if not 0 < config["probe_timeout_seconds"] <= 300:
        raise host.ConfigError(
            f"probe_timeout_seconds: {config['probe_timeout_seconds']!r} is not allowed "
            "(allowed: more than 0, at most 300)"
        )
    for key in THRESHOLDS:
        if config[key] <= 0:
            raise host.ConfigError(
                f"{key}: {config[key]!r} is not allowed (allowed: a positive number)"
            )
    return config


OVERRIDABLE = ("label", "report_file", "refresh", "manifest_dir", *THRESHOLDS)


def build_parser() -> argparse.ArgumentParser:
    """Options left out fall back to --config, then to DEFAULTS (None means not given)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="JSON config file")
    parser.add_argument("--label", help="select environments by this label (key=value)")
    parser.add_argument("--report-file")
    parser.add_argument("--manifest-dir")
    parser.add_argument(
        "--refresh",
        action="store_true",
        default=None,
        help="recreate environments past a threshold",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of log lines"
    )
    parser.add_argument("--max-age-hours", type=float)
    parser.add_argument("--max-disk-pct", type=float)
    parser.add_argument("--max-memory-pct", type=float)
    parser.add_argument("--max-failed-checks", type=int)
    parser.add_argument(
        "--check-config", action="store_true", help="validate the configuration and exit"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, {key: getattr(args, key) for key in OVERRIDABLE})
        engine = Engine.from_env()
    except (host.HostError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        return 0
    now = datetime.now(UTC)
    try:
        statuses = collect(
            engine, config["label"], config["workspace"], now, config["probe_timeout_seconds"]
        )
    except host.HostError as exc:
        print(f"ERROR: cannot read the environments: {exc}", file=sys.stderr)
        return 1
    failures = 0
    replaced: dict[str, str] = {}
    for status in statuses:
        status.refresh_reasons = evaluate(status, config)
        if not status.refresh_reasons:
            continue
        if not config["refresh"]:
            status.action = "reported"
            continue
        labels = status.labels
        started = time.monotonic()
        if status.status in ("exited", "dead"):
            try:
                engine.request("POST", f"/containers/{status.id}/start")
            except EngineError as exc:
                status.action = f"restart failed: {exc}"
                failures += 1
            else:
                status.action = "restarted"
            host.audit(
                "health-restart",
                actor=AUDIT_ACTOR,
                labels=labels,
                result="ok" if status.action == "restarted" else "error",
                duration_ms=round((time.monotonic() - started) * 1000),
                detail="; ".join(status.refresh_reasons),
            )
            continue
        why = host.backup_first(config["refresh_backup_command"], status.name, "refresh")
        if why:
            failures += 1
            print(
                f"ERROR: dockyard-health: backup of {status.name} before its refresh failed: {why}",
                file=sys.stderr,
            )
        try:
            new_id = refresh(engine, status.name)
        except EngineError as exc:
            status.action = f"refresh failed: {exc}"
            failures += 1
            host.audit(
                "health-refresh",
                actor=AUDIT_ACTOR,
                labels=labels,
                result="error",
                duration_ms=round((time.monotonic() - started) * 1000),
                detail=str(exc),
            )
            continue
        status.action = f"refreshed as {new_id[:12]}"
        replaced[status.id] = new_id
        host.audit(
            "health-refresh",
            actor=AUDIT_ACTOR,
            labels=labels,
            duration_ms=round((time.monotonic() - started) * 1000),
            detail="; ".join(status.refresh_reasons),
        )
    # Every run, not only after an action: the engine's restart policy also allocates
    # new host ports, and apps read ports from the manifest.
    for status in statuses:
        try:
            info = engine.inspect(replaced.get(status.id, status.id))
        except EngineError:
            continue
        status.manifest = sync_manifest(config["manifest_dir"], status.id, info)
        if status.manifest.startswith("refused"):
            failures += 1
    report = {
        "generatedAt": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "thresholds": {k: config[k] for k in THRESHOLDS},
        "refresh": bool(config["refresh"]),
        "manifestValidator": host.VALIDATOR,
        # Labels name the environment in the audit trail; the report keeps its own fields.
        "environments": [{k: v for k, v in asdict(s).items() if k != "labels"} for s in statuses],
    }
    host.write_json_atomic(config["report_file"], report)
    if config["metrics_file"]:
        # Atomically: the collector never reads half a file.
        host.write_atomic(config["metrics_file"], metrics(statuses, now))
    if args.json:
        print(json.dumps(report, indent=2))
    elif config["log_format"] == "json":
        for entry in report["environments"]:
            print(json.dumps({"event": "dockyard-health", "time": report["generatedAt"], **entry}))
    else:
        for status in statuses:
            print(log_line(status))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
