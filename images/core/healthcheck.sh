#!/bin/bash
# dockyard container health check (R-ENV-7). Prints one line saying why, exits 0 when
# healthy and 1 when not (Docker's HEALTHCHECK contract), and records the same line with
# its UTC time in DOCKYARD_HEALTH_FILE (default /tmp/health): the latest verdict, whoever
# asked — the engine's probe or the entrypoint's first check right after ready.
#
# Unhealthy when: the workspace mount is missing or not writable, workspace disk use is
# above DOCKYARD_HEALTH_DISK_MAX_PCT (default 90), or the agent CLI of DOCKYARD_BACKEND
# is missing. Cheap on purpose: it runs every interval in every environment, so the only
# program it starts is df.
set -euo pipefail

backend="${DOCKYARD_BACKEND:-claude}"
workspace="${DOCKYARD_WORKSPACE:-/workspace}"
max_pct="${DOCKYARD_HEALTH_DISK_MAX_PCT:-90}"
state_file="${DOCKYARD_HEALTH_FILE:-/tmp/health}"

verdict() {
  local now="$EPOCHREALTIME" micros
  micros="${now#*.}"
  echo "$1"
  # Written beside the state file and renamed over it, so a reader never sees half a
  # line; a state file that cannot be written never changes the verdict.
  {
    TZ=UTC0 printf '%(%Y-%m-%dT%H:%M:%S)T.%sZ %s\n' "${now%.*}" "${micros:0:3}" "$1" \
      >"$state_file.$$" && mv -f "$state_file.$$" "$state_file"
  } 2>/dev/null || rm -f "$state_file.$$" 2>/dev/null || true
}

unhealthy() {
  verdict "unhealthy: $*"
  exit 1
}

[[ "$max_pct" =~ ^[0-9]+$ && "$max_pct" -ge 1 && "$max_pct" -le 100 ]] ||
  unhealthy "DOCKYARD_HEALTH_DISK_MAX_PCT='$max_pct' is not allowed (allowed: 1-100)"

# A workspace that is only a directory of the container layer would lose the agent's
# work on replacement: the mount itself must be there (field 5 of mountinfo).
mounted=0
while read -r _ _ _ _ mount_point _; do
  if [ "$mount_point" = "$workspace" ]; then
    mounted=1
    break
  fi
done </proc/self/mountinfo
[ "$mounted" = 1 ] || unhealthy "workspace mount $workspace is missing"
[ -w "$workspace" ] || unhealthy "workspace $workspace is not writable by $(id -un)"

used_pct=""
{
  read -r _ # header
  read -r _ _ _ _ used_pct _
} < <(df -P "$workspace" 2>/dev/null) || true
used_pct="${used_pct%\%}"
[[ "$used_pct" =~ ^[0-9]+$ ]] || unhealthy "cannot read disk use of $workspace"
[ "$used_pct" -le "$max_pct" ] ||
  unhealthy "workspace disk ${used_pct}% used (limit ${max_pct}%)"

cli="$(command -v "$backend" 2>/dev/null)" || unhealthy "agent CLI '$backend' is missing"
[ -x "$cli" ] || unhealthy "agent CLI '$backend' is not executable"

verdict "healthy: workspace ${used_pct}% used, $backend present"
