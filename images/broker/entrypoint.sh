#!/bin/sh
# Reads the keys and the environment's token from files (/run/secrets), so they are in
# no container configuration `docker inspect` shows, enables a site for each key it holds
# (a service without a key is not listened on: its calls fail, nothing is sent unkeyed),
# then runs Caddy.
set -eu
secrets="${DOCKYARD_BROKER_SECRETS:-/run/secrets}"
sites=/tmp/dockyard-broker/sites
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
GITHUB_TOKEN="$(read_secret GITHUB_TOKEN)"
basic() { printf 'x-access-token:%s' "$1" | base64 -w 0; }
DOCKYARD_BROKER_GIT_BASIC="$(basic "$DOCKYARD_BROKER_TOKEN")"
DOCKYARD_GIT_BASIC="$(basic "$GITHUB_TOKEN")"
export DOCKYARD_BROKER_TOKEN ANTHROPIC_API_KEY OPENAI_API_KEY DOCKYARD_BROKER_GIT_BASIC DOCKYARD_GIT_BASIC
export DOCKYARD_ANTHROPIC_UPSTREAM="${DOCKYARD_ANTHROPIC_UPSTREAM:-https://api.anthropic.com}"
export DOCKYARD_OPENAI_UPSTREAM="${DOCKYARD_OPENAI_UPSTREAM:-https://api.openai.com}"
export DOCKYARD_GIT_UPSTREAM="${DOCKYARD_GIT_UPSTREAM:-https://github.com}"
export DOCKYARD_UPSTREAM_CA="${DOCKYARD_UPSTREAM_CA:-/etc/ssl/certs/ca-certificates.crt}"
export HOME=/tmp XDG_DATA_HOME=/tmp XDG_CONFIG_HOME=/tmp

rm -rf "$sites"
mkdir -p "$sites"
enabled=""
for pair in anthropic:ANTHROPIC_API_KEY openai:OPENAI_API_KEY git:GITHUB_TOKEN; do
  site="${pair%%:*}"
  if [ -n "$(read_secret "${pair#*:}")" ]; then
    cp "/etc/dockyard-broker/sites/$site.caddy" "$sites/"
    enabled="$enabled $site"
  fi
done
if [ -z "$enabled" ]; then
  echo "dockyard-broker: no key in $secrets (allowed: ANTHROPIC_API_KEY, OPENAI_API_KEY, GITHUB_TOKEN)" >&2
  exit 2
fi
echo "dockyard-broker: brokering$enabled" >&2
exec caddy run --config /etc/dockyard-broker/Caddyfile --adapter caddyfile
