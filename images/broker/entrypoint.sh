#!/bin/sh
# Reads the keys and the environment's token from files (/run/secrets), so they are in
# no container configuration `docker inspect` shows, then runs Caddy.
set -eu
secrets="${DOCKYARD_BROKER_SECRETS:-/run/secrets}"
read_secret() {
  if [ -r "$secrets/$1" ]; then cat "$secrets/$1"; else printf ''; fi
}
DOCKYARD_BROKER_TOKEN="$(read_secret DOCKYARD_BROKER_TOKEN)"
if [ -z "$DOCKYARD_BROKER_TOKEN" ]; then
  echo "dockyard-broker: $secrets/DOCKYARD_BROKER_TOKEN is missing or empty (allowed: the environment's token)" >&2
  exit 2
fi
ANTHROPIC_API_KEY="$(read_secret ANTHROPIC_API_KEY)"
OPENAI_API_KEY="$(read_secret OPENAI_API_KEY)"
export DOCKYARD_BROKER_TOKEN ANTHROPIC_API_KEY OPENAI_API_KEY
export DOCKYARD_ANTHROPIC_UPSTREAM="${DOCKYARD_ANTHROPIC_UPSTREAM:-https://api.anthropic.com}"
export DOCKYARD_OPENAI_UPSTREAM="${DOCKYARD_OPENAI_UPSTREAM:-https://api.openai.com}"
export DOCKYARD_UPSTREAM_CA="${DOCKYARD_UPSTREAM_CA:-/etc/ssl/certs/ca-certificates.crt}"
export HOME=/tmp XDG_DATA_HOME=/tmp XDG_CONFIG_HOME=/tmp
exec caddy run --config /etc/dockyard-broker/Caddyfile --adapter caddyfile
