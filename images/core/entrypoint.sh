#!/usr/bin/env bash
# dockyard environment entrypoint (R-IMG-2).
#
# Start: persist the agent's config in the config volume, export secrets from files,
# fail fast if the selected agent CLI does not answer, restore the workspace from the
# latest checkpoint when it is empty, start tmux session `main` in the workspace, write
# the ready marker. On SIGTERM/SIGINT: checkpoint (session state + workspace tarball),
# stop the tmux server and exit 0, all inside Docker's default 10 s stop timeout.
#
# Environment (defaults baked into the image):
#   DOCKYARD_BACKEND          claude | codex
#   DOCKYARD_SESSION_ID       session id; names the checkpoint folder (default: hostname)
#   DOCKYARD_WORKSPACE        workspace mount (/workspace)
#   DOCKYARD_CONFIG_DIR       config volume: claude/, codex/, env/ (/config)
#   DOCKYARD_CHECKPOINT_DIR   checkpoint volume; checkpoints/<session>/ below it
#   DOCKYARD_SECRETS_DIR      one file per secret, file name = variable name (/run/secrets)
#   DOCKYARD_READY_FILE       ready marker (/tmp/ready)
#   DOCKYARD_CHECKPOINT_BUDGET seconds the workspace tarball may take on stop (6)
#   DOCKYARD_CHECKPOINT_KEEP  checkpoints kept per session (3)
#   DOCKYARD_RESTORE          1 = restore an empty workspace from the latest checkpoint (1)
set -euo pipefail

backend="${DOCKYARD_BACKEND:-claude}"
session="${DOCKYARD_SESSION_ID:-$(hostname)}"
workspace="${DOCKYARD_WORKSPACE:-/workspace}"
config_dir="${DOCKYARD_CONFIG_DIR:-/config}"
checkpoint_root="${DOCKYARD_CHECKPOINT_DIR:-/checkpoints}"
secrets_dir="${DOCKYARD_SECRETS_DIR:-/run/secrets}"
ready_file="${DOCKYARD_READY_FILE:-/tmp/ready}"
budget="${DOCKYARD_CHECKPOINT_BUDGET:-6}"
keep="${DOCKYARD_CHECKPOINT_KEEP:-3}"

log() { echo "dockyard: $*" >&2; }
die() {
  echo "ERROR: $*" >&2
  exit 1
}

case "$backend" in
  claude | codex) ;;
  *) die "DOCKYARD_BACKEND='$backend' is not supported (allowed: claude, codex)" ;;
esac
# The session id names a folder in the checkpoint volume: keep it a plain name.
[[ "$session" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ ]] ||
  die "DOCKYARD_SESSION_ID='$session' is not a valid session id (allowed: [A-Za-z0-9][A-Za-z0-9_.-]*, at most 63 characters)"
[[ "$budget" =~ ^[0-9]+$ && "$budget" -ge 1 && "$budget" -le 9 ]] ||
  die "DOCKYARD_CHECKPOINT_BUDGET='$budget' is not allowed (allowed: whole seconds 1-9, inside Docker's 10 s stop timeout)"
[[ "$keep" =~ ^[0-9]+$ && "$keep" -ge 1 ]] ||
  die "DOCKYARD_CHECKPOINT_KEEP='$keep' is not allowed (allowed: a whole number >= 1)"
checkpoint_dir="$checkpoint_root/$session"

# --- Agent configuration lives in the config volume (survives image rebuilds) -------
# CLAUDE_CONFIG_DIR also moves .claude.json (account, onboarding, MCP state) there,
# which a ~/.claude link alone would leave in the container layer.
mkdir -p "$config_dir/claude" "$config_dir/codex" "$config_dir/env"
ln -sfn "$config_dir/claude" "$HOME/.claude"
ln -sfn "$config_dir/codex" "$HOME/.codex"
export CLAUDE_CONFIG_DIR="$config_dir/claude" CODEX_HOME="$config_dir/codex"
codex_config="$CODEX_HOME/config.toml"
if ! grep -qsE '^[[:space:]]*sandbox_mode[[:space:]]*=' "$codex_config"; then
  # Top-level keys must precede any [table], so the seed goes first.
  tmp="$(mktemp "$CODEX_HOME/.config.toml.XXXXXX")"
  cat /etc/dockyard/codex-config.toml >"$tmp"
  if [ -f "$codex_config" ]; then
    echo >>"$tmp"
    cat "$codex_config" >>"$tmp"
  fi
  mv -f "$tmp" "$codex_config"
fi

# --- Plain environment overrides from config/env/*.env (KEY=VALUE lines) ------------
# Parsed, never sourced: a value is data, not shell.
for env_file in "$config_dir"/env/*.env; do
  [ -f "$env_file" ] || continue
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in '' | '#'*) continue ;; esac
    if [[ "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
      export "${BASH_REMATCH[1]}=${BASH_REMATCH[2]}"
    else
      log "ignoring malformed line in $env_file (expected NAME=value)"
    fi
  done <"$env_file"
done

# --- Secrets: files -> environment of the agent processes only ----------------------
# Values never pass through argv or logs; only the count is reported.
secret_count=0
if [ -d "$secrets_dir" ] && [ -r "$secrets_dir" ]; then
  for secret_file in "$secrets_dir"/*; do
    [ -f "$secret_file" ] || continue
    name="$(basename "$secret_file")"
    if [[ ! "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
      log "ignoring secret file '$name' (its name must be an environment variable name)"
      continue
    fi
    [ -r "$secret_file" ] || die "secret file $secret_file is not readable by $(id -un)"
    value="$(cat "$secret_file")"
    export "$name=$value"
    secret_count=$((secret_count + 1))
  done
  unset value
fi

# --- Fail fast when the agent CLI does not answer -------------------------------------
# The check runs while the workspace and tmux come up (it is the slowest start step);
# the ready marker is written only after it answered, and a failure stops everything.
command -v "$backend" >/dev/null 2>&1 ||
  die "the $backend CLI is not installed in this image (PATH=$PATH)"
version_file="$(mktemp)"
timeout 20 "$backend" --version >"$version_file" 2>&1 &
version_pid=$!

# --- Checkpoints (R-ENV-8 layout: checkpoints/<session>/<UTC stamp>/) ------------------
latest_checkpoint() {
  local link="$checkpoint_dir/latest"
  [ -L "$link" ] && [ -d "$link" ] && readlink -f "$link"
}

restore_workspace() {
  [ "${DOCKYARD_RESTORE:-1}" = 1 ] || return 0
  [ -d "$workspace" ] && [ -w "$workspace" ] || return 0
  [ -z "$(ls -A "$workspace")" ] || return 0
  local from
  from="$(latest_checkpoint)" || return 0
  [ -f "$from/workspace.tar.gz" ] || return 0
  tar -xzf "$from/workspace.tar.gz" -C "$workspace" ||
    die "restoring $workspace from $from/workspace.tar.gz failed"
  log "restored empty workspace from checkpoint $(basename "$from")"
}

write_checkpoint() {
  mkdir -p "$checkpoint_dir" || {
    log "checkpoint skipped: cannot create $checkpoint_dir"
    return 0
  }
  local stamp dir tarball_status="written"
  stamp="$(date -u +%Y%m%dT%H%M%S.%3NZ)"
  dir="$checkpoint_dir/.partial-$stamp"
  mkdir -p "$dir"
  # Bounded: a huge workspace must not push the stop past Docker's kill timeout. A
  # partial tarball is discarded, and the state file says so.
  if [ -d "$workspace" ]; then
    if ! timeout "$budget" tar -czf "$dir/workspace.tar.gz" -C "$workspace" . 2>/dev/null; then
      rm -f "$dir/workspace.tar.gz"
      tarball_status="skipped: did not finish within ${budget}s"
    fi
  else
    tarball_status="skipped: $workspace missing"
  fi
  local windows=""
  windows="$(tmux list-windows -t main -F '#{window_index}:#{window_name}:#{pane_current_command}' 2>/dev/null | paste -sd, -)" || true
  tmux capture-pane -p -t main -S -200 >"$dir/tmux-main.txt" 2>/dev/null || true
  python3 - "$dir/session.json" "$session" "$backend" "$stamp" "$tarball_status" "$windows" <<'PY'
import json, sys
path, session, backend, stamp, tarball, windows = sys.argv[1:7]
state = {
    "sessionId": session,
    "backend": backend,
    "checkpointedAt": stamp,
    "workspaceTarball": tarball,
    "tmuxWindows": [w for w in windows.split(",") if w],
}
with open(path, "w", encoding="utf-8") as fh:
    json.dump(state, fh, indent=2)
PY
  sync "$dir"/* 2>/dev/null || sync
  mv "$dir" "$checkpoint_dir/$stamp"
  ln -sfn "$stamp" "$checkpoint_dir/latest.tmp" && mv -T "$checkpoint_dir/latest.tmp" "$checkpoint_dir/latest"
  # Keep the newest $keep checkpoints; stamps sort chronologically.
  find "$checkpoint_dir" -mindepth 1 -maxdepth 1 -type d -name '20*' -printf '%f\n' |
    sort -r | tail -n +"$((keep + 1))" | while IFS= read -r old; do
      rm -rf "${checkpoint_dir:?}/$old"
    done
  log "checkpoint $stamp written (workspace tarball $tarball_status)"
}

shutdown() {
  trap - TERM INT
  log "stop requested: writing checkpoint"
  write_checkpoint || log "checkpoint failed"
  tmux kill-server 2>/dev/null || true
  rm -f "$ready_file"
  log "stopped cleanly"
  exit 0
}
trap shutdown TERM INT

# --- Workspace and tmux ---------------------------------------------------------------
[ -d "$workspace" ] || die "workspace $workspace does not exist (mount a volume there)"
restore_workspace
rm -f "$ready_file"
tmux kill-session -t main 2>/dev/null || true
tmux new-session -d -s main -c "$workspace" -x 200 -y 50
tmux has-session -t main || die "tmux session 'main' did not start"
if ! wait "$version_pid"; then
  version="$(cat "$version_file")"
  tmux kill-server 2>/dev/null || true
  die "'$backend --version' failed: ${version:-no output}"
fi
version="$(head -n 1 "$version_file")"
rm -f "$version_file"
log "backend $backend $version; $secret_count secret(s) exported"
date -u +%Y-%m-%dT%H:%M:%S.%3NZ >"$ready_file"
log "ready: tmux session 'main' in $workspace"

# Wait in the background so the TERM trap runs at once instead of after a foreground
# child exits.
while true; do
  sleep 3600 &
  wait $! || true
done
