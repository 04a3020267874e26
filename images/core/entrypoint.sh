#!/bin/bash
# dockyard environment entrypoint (R-IMG-2).
#
# Start: persist the agent's config in the config volume, export secrets from files,
# fail fast if the selected agent CLI does not answer, restore the workspace from the
# latest checkpoint when it is empty, start tmux session `main` in the workspace, write
# the ready marker. On SIGTERM/SIGINT: checkpoint (session state + workspace tarball),
# stop the tmux server and exit 0, all inside Docker's default 10 s stop timeout.
#
# Start time is the product: every step until the ready marker uses bash builtins where
# a fork would do (about 1-3 ms each on a busy 2-core host), the CLI check runs while the
# workspace and tmux come up, and one log line reports how long each step took
# ("dockyard: timing ...", read by benchmarks/env_ready.py). Right after the marker, the
# health check runs once and records its verdict (DOCKYARD_HEALTH_FILE), so a verdict
# exists within moments of ready even where the engine's first probe comes one interval
# later (engines before API 1.44 have no start_interval).
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
#   DOCKYARD_HEALTH_FILE      latest health verdict, written by dockyard-healthcheck (/tmp/health)
#   DOCKYARD_ENVD             e2b SDKs' daemon (envd.py, port 49983) after ready: 1, 0, or auto =
#                             when the secret DOCKYARD_ENVD_ACCESS_TOKEN is there (auto); never
#                             without that token, 1 included (envd refuses to serve without it)
set -euo pipefail
# Step times for the timing line: bash's own clock, no fork.
declare -A took=()
t0="$EPOCHREALTIME"
mark() { took[$1]="$EPOCHREALTIME"; }

backend="${DOCKYARD_BACKEND:-claude}"
session="${DOCKYARD_SESSION_ID:-$HOSTNAME}"
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
# which a ~/.claude link alone would leave in the container layer. The image already
# holds the directories and links for the default /config (a new volume is seeded from
# it), so on most starts this section only checks.
[[ -d "$config_dir/claude" && -d "$config_dir/codex" && -d "$config_dir/env" ]] ||
  mkdir -p "$config_dir/claude" "$config_dir/codex" "$config_dir/env"
[[ -L "$HOME/.claude" && "$HOME/.claude" -ef "$config_dir/claude" ]] ||
  ln -sfn "$config_dir/claude" "$HOME/.claude"
[[ -L "$HOME/.codex" && "$HOME/.codex" -ef "$config_dir/codex" ]] ||
  ln -sfn "$config_dir/codex" "$HOME/.codex"
export CLAUDE_CONFIG_DIR="$config_dir/claude" CODEX_HOME="$config_dir/codex"
codex_config="$CODEX_HOME/config.toml"
has_sandbox_mode() {
  local line
  [ -f "$1" ] && [ -r "$1" ] || return 1
  while IFS= read -r line || [ -n "$line" ]; do
    [[ "$line" =~ ^[[:space:]]*sandbox_mode[[:space:]]*= ]] && return 0
  done <"$1"
  return 1
}
if ! has_sandbox_mode "$codex_config"; then
  # Top-level keys must precede any [table], so the seed goes first.
  tmp="$(mktemp "$CODEX_HOME/.config.toml.XXXXXX")"
  cat /etc/dockyard/codex-config.toml >"$tmp"
  if [ -f "$codex_config" ]; then
    echo >>"$tmp"
    cat "$codex_config" >>"$tmp"
  fi
  mv -f "$tmp" "$codex_config"
fi
mark config

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
    name="${secret_file##*/}"
    if [[ ! "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
      log "ignoring secret file '$name' (its name must be an environment variable name)"
      continue
    fi
    [ -r "$secret_file" ] || die "secret file $secret_file is not readable by $(id -un)"
    # What $(cat file) gave, without the fork: the whole file, trailing newlines dropped.
    value=""
    IFS= read -r -d '' value <"$secret_file" || true
    value="${value%"${value##*[!$'\n']}"}"
    export "$name=$value"
    secret_count=$((secret_count + 1))
  done
  unset value
fi
mark secrets

# --- Fail fast when the agent CLI does not answer -------------------------------------
# It runs while the workspace and tmux come up (with tmux, the longest start steps);
# the ready marker is written only after it answered, and a failure stops everything.
command -v "$backend" >/dev/null 2>&1 ||
  die "the $backend CLI is not installed in this image (PATH=$PATH)"
version_file="/tmp/dockyard-cli-version.$$"
timeout 20 "$backend" --version >"$version_file" 2>&1 &
version_pid=$!
mark cli-started

# --- Checkpoints (R-ENV-8 layout: checkpoints/<session>/<UTC stamp>/) ------------------
latest_checkpoint() {
  local link="$checkpoint_dir/latest"
  [ -L "$link" ] && [ -d "$link" ] && readlink -f "$link"
}

restore_workspace() {
  [ "${DOCKYARD_RESTORE:-1}" = 1 ] || return 0
  [ -d "$workspace" ] && [ -w "$workspace" ] || return 0
  local entries
  shopt -s nullglob dotglob
  entries=("$workspace"/*)
  shopt -u nullglob dotglob
  [ "${#entries[@]}" -eq 0 ] || return 0
  # Tested here first: the usual start has no checkpoint, and $(...) would be a fork.
  [ -L "$checkpoint_dir/latest" ] || return 0
  local from
  from="$(latest_checkpoint)" || return 0
  [ -f "$from/workspace.tar.gz" ] || return 0
  tar -xzf "$from/workspace.tar.gz" -C "$workspace" ||
    die "restoring $workspace from $from/workspace.tar.gz failed"
  log "restored empty workspace from checkpoint ${from##*/}"
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
mark workspace
# A restarted container keeps /tmp: drop the previous run's marker and session.
if [[ -e "$ready_file" || -L "$ready_file" ]]; then rm -f "$ready_file"; fi
if [[ -S "${TMUX_TMPDIR:-/tmp}/tmux-$UID/default" ]]; then
  tmux kill-session -t main 2>/dev/null || true
fi
# tmux opens login shells, and Debian's /etc/profile resets PATH for them, which would
# hide the agent CLIs (/opt/agents/bin) and any PATH from config/env in every pane;
# /etc/profile.d/dockyard-path.sh puts this one back.
export DOCKYARD_PATH="$PATH"
# tmux makes libevent use poll(2) on Linux; under gVisor (Debian 12's runsc) its server
# then spins at up to a whole core from the moment its last client leaves (new-session
# -d's client, at once) until one attaches. EVENT_NOPOLL makes libevent use select(2)
# instead, idle on both runtimes (docs/isolation.md, "tmux under runsc").
# select holds descriptors below 1024 only (this fortified libevent aborts above), so
# only while the open-files soft limit keeps all the server's below that (the default,
# nofileSoft 1024). The server's first command drops the variable from tmux's global
# environment before the first pane starts: no agent process inherits it.
tmux_first=()
if [[ ! -v EVENT_NOPOLL ]]; then
  nofile=""
  ulimit -Sn >"$version_file.nofile" 2>/dev/null || true # a builtin into a file: no fork
  read -r nofile <"$version_file.nofile" || true
  if [[ "$nofile" =~ ^[0-9]+$ && "$nofile" -le 1024 ]]; then
    export EVENT_NOPOLL=1
    tmux_first=(set-environment -g -u EVENT_NOPOLL ';')
  fi
fi
# new-session -d returns once the server has created the session (non-zero if not).
tmux "${tmux_first[@]}" new-session -d -s main -c "$workspace" -x 200 -y 50 ||
  die "tmux session 'main' did not start"
[ "${#tmux_first[@]}" -eq 0 ] || unset EVENT_NOPOLL
mark tmux

# --- SSH (DOCKYARD_SSH=1, docs/access.md) ---------------------------------------------
# sshd as the agent: it can only ever log in the agent. Host keys in the config volume
# survive recreation; the principals file lets in certificates for this session only.
if [ "${DOCKYARD_SSH:-0}" = 1 ]; then
  ssh_dir="$config_dir/ssh"
  mkdir -p "$ssh_dir"
  chmod 0700 "$ssh_dir"
  [ -f "$ssh_dir/ssh_host_ed25519_key" ] ||
    ssh-keygen -q -t ed25519 -N '' -C "dockyard $session" -f "$ssh_dir/ssh_host_ed25519_key" ||
    die "could not create the SSH host key in $ssh_dir"
  printf 'agent@%s\n' "$session" >"$ssh_dir/principals"
  [ -s /etc/dockyard/ssh/user_ca.pub ] || die "DOCKYARD_SSH=1 but /etc/dockyard/ssh/user_ca.pub is missing"
  /usr/sbin/sshd -f /etc/dockyard/sshd_config -E "$ssh_dir/sshd.log" ||
    die "sshd did not start (see $ssh_dir/sshd.log)"
fi

version_status=0
wait "$version_pid" || version_status=$?
version_text=""
IFS= read -r -d '' version_text <"$version_file" || true
version_text="${version_text%"${version_text##*[!$'\n']}"}"
if [ "$version_status" != 0 ]; then
  tmux kill-server 2>/dev/null || true
  die "'$backend --version' failed: ${version_text:-no output}"
fi
mark cli
log "backend $backend ${version_text%%$'\n'*}; $secret_count secret(s) exported"
# ISO-8601 UTC with milliseconds, from bash's clock (what `date -u` gave, without a fork).
now="$EPOCHREALTIME"
micros="${now#*.}"
TZ=UTC0 printf '%(%Y-%m-%dT%H:%M:%S)T.%sZ\n' "${now%.*}" "${micros:0:3}" >"$ready_file"
mark ready
log "ready: tmux session 'main' in $workspace"

# The first health verdict, at once: before API 1.44 the engine's first probe comes a
# whole interval (60 s by default) after start. After the marker, so off the ready path.
dockyard-healthcheck >/dev/null 2>&1 &
# The e2b SDKs' in-environment daemon on port 49983 (docs/e2b.md), as the agent. It runs
# commands for whoever reaches that port, so only where its access token was delivered
# (an E2B sandbox): auto and 1 start it with the token, 0 forbids it, and without the token
# nothing starts (envd.py itself also refuses a missing or short one). After the marker
# too: the SDKs retry until it listens.
envd="${DOCKYARD_ENVD:-auto}"
if [[ "$envd" = 1 || "$envd" = auto ]]; then
  if [ -n "${DOCKYARD_ENVD_ACCESS_TOKEN:-}" ]; then
    python3 /usr/local/lib/dockyard/envd.py </dev/null &
  elif [ "$envd" = 1 ]; then
    log "envd not started: DOCKYARD_ENVD=1 but the secret DOCKYARD_ENVD_ACCESS_TOKEN is missing (it never serves unauthenticated)"
  fi
fi
rm -f "$version_file" "$version_file.nofile"

# Milliseconds since the entrypoint started, per step, in the order they finished.
timing="start=$t0"
for step in config secrets cli-started workspace tmux cli ready; do
  elapsed=$(((${took[$step]/./} - ${t0/./}) / 100))
  timing+=" $step=$((elapsed / 10)).$((elapsed % 10))"
done
log "timing $timing (ms since start)"

# Wait in the background so the TERM trap runs at once instead of after a foreground
# child exits.
while true; do
  sleep 3600 &
  wait $! || true
done
