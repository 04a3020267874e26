#!/usr/bin/env bash
# dockyard container health check (R-ENV-7). Prints one line saying why, exits 0 when
# healthy and 1 when not (Docker's HEALTHCHECK contract).
#
# Unhealthy when: the workspace mount is missing or not writable, workspace disk use is
# above DOCKYARD_HEALTH_DISK_MAX_PCT (default 90), or the agent CLI of DOCKYARD_BACKEND
# is missing. Cheap on purpose: it runs every interval in every environment.
set -euo pipefail

backend="${DOCKYARD_BACKEND:-claude}"
workspace="${DOCKYARD_WORKSPACE:-/workspace}"
max_pct="${DOCKYARD_HEALTH_DISK_MAX_PCT:-90}"

unhealthy() {
  echo "unhealthy: $*"
  exit 1
}

[[ "$max_pct" =~ ^[0-9]+$ && "$max_pct" -ge 1 && "$max_pct" -le 100 ]] ||
  unhealthy "DOCKYARD_HEALTH_DISK_MAX_PCT='$max_pct' is not allowed (allowed: 1-100)"

# A workspace that is only a directory of the container layer would lose the agent's
# work on replacement: the mount itself must be there.
awk -v ws="$workspace" '$5 == ws { found = 1 } END { exit !found }' /proc/self/mountinfo ||
  unhealthy "workspace mount $workspace is missing"
[ -w "$workspace" ] || unhealthy "workspace $workspace is not writable by $(id -un)"

used_pct="$(df -P "$workspace" | awk 'NR == 2 { sub("%", "", $5); print $5 }')"
[[ "$used_pct" =~ ^[0-9]+$ ]] || unhealthy "cannot read disk use of $workspace"
[ "$used_pct" -le "$max_pct" ] ||
  unhealthy "workspace disk ${used_pct}% used (limit ${max_pct}%)"

command -v "$backend" >/dev/null 2>&1 || unhealthy "agent CLI '$backend' is missing"
[ -x "$(command -v "$backend")" ] || unhealthy "agent CLI '$backend' is not executable"

echo "healthy: workspace ${used_pct}% used, $backend present"
