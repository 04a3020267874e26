#!/usr/bin/env bash
# Git credentials from the secret file (R-IMG-3), so HTTPS pushes work without the
# token ever being stored in git config, the environment of `docker inspect`, or logs.
#
# Two protocols, one script:
#   GIT_ASKPASS:        git-askpass "Username for 'https://github.com': "  -> username
#                       git-askpass "Password for 'https://…@github.com': " -> token
#   credential helper:  git-askpass get  (key=value lines on stdin/stdout); store and
#                       erase are ignored because the secret file is the only store.
#
#   DOCKYARD_GIT_TOKEN_FILE  token file (default /run/secrets/GITHUB_TOKEN)
#   DOCKYARD_GIT_USERNAME    username sent with the token (default x-access-token)
#   DOCKYARD_GIT_BROKER      host:port of the environment's credential broker
#                            (credentials: brokered): plain http to it gets the token too —
#                            the file then holds the environment's token, not the real
#                            one, and the broker is reachable only on its own network
set -euo pipefail

token_file="${DOCKYARD_GIT_TOKEN_FILE:-${DOCKYARD_SECRETS_DIR:-/run/secrets}/GITHUB_TOKEN}"
username="${DOCKYARD_GIT_USERNAME:-x-access-token}"

read_token() {
  [ -f "$token_file" ] || {
    echo "ERROR: git token file $token_file does not exist" >&2
    exit 1
  }
  [ -r "$token_file" ] || {
    echo "ERROR: git token file $token_file is not readable by $(id -un)" >&2
    exit 1
  }
  local token
  token="$(head -n 1 "$token_file" | tr -d '\r')"
  [ -n "$token" ] || {
    echo "ERROR: git token file $token_file is empty" >&2
    exit 1
  }
  printf '%s' "$token"
}

case "${1:-}" in
  get)
    # Drain git's request.
    protocol="" host=""
    while IFS= read -r line && [ -n "$line" ]; do
      case "$line" in
        protocol=*) protocol="${line#protocol=}" ;;
        host=*) host="${line#host=}" ;;
      esac
    done
    # Only https hosts get the token, and the broker (plain http on its own network).
    broker="${DOCKYARD_GIT_BROKER:-}"
    case "$protocol" in
      https) ;;
      http) [ -n "$broker" ] && [ "$host" = "$broker" ] || exit 0 ;;
      *) exit 0 ;;
    esac
    # Assigned first: set -e does not see a failure inside printf's "$(...)".
    token="$(read_token)"
    printf 'username=%s\npassword=%s\n' "$username" "$token"
    ;;
  store | erase) cat >/dev/null ;;
  Username*) printf '%s\n' "$username" ;;
  Password*)
    # The same rule as the helper: git names the URL in the prompt ('http://user@host').
    url="${1#*\'}" url="${url%\'*}"
    case "$url" in
      https://*) ;;
      http://*)
        hostport="${url#http://}" hostport="${hostport#*@}" hostport="${hostport%%/*}"
        [ -n "${DOCKYARD_GIT_BROKER:-}" ] && [ "$hostport" = "$DOCKYARD_GIT_BROKER" ] || {
          echo "ERROR: no token for $url (only https:// hosts and the environment's broker)" >&2
          exit 1
        }
        ;;
      *)
        echo "ERROR: no token for '$url' (only https:// hosts and the environment's broker)" >&2
        exit 1
        ;;
    esac
    token="$(read_token)"
    printf '%s\n' "$token"
    ;;
  *)
    echo "ERROR: unexpected prompt '${1:-}' (expected git's Username/Password prompt or get/store/erase)" >&2
    exit 1
    ;;
esac
