#!/bin/sh
# pnpm, pnpx, yarn, yarnpkg and corepack itself, run through corepack with the image's
# npm registry. Corepack fetches package managers from COREPACK_NPM_REGISTRY but joins a
# value ending in "/" into a "//" path that registries refuse (HTTP 400), and npm
# registry URLs (NPM_CONFIG_REGISTRY) usually end in one; unset, corepack falls back to
# npmjs.org and repo.yarnpkg.com, which an air-gapped site cannot reach.
registry="${COREPACK_NPM_REGISTRY:-${NPM_CONFIG_REGISTRY:-}}"
if [ -n "$registry" ]; then
    COREPACK_NPM_REGISTRY="${registry%/}"
    export COREPACK_NPM_REGISTRY
fi
exec node "/usr/local/lib/node_modules/corepack/dist/$(basename "$0").js" "$@"
