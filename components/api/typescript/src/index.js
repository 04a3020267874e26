// The dockyard HTTP API from TypeScript or JavaScript: openapi-fetch over the types
// openapi-typescript generated from ../openapi.json (src/schema.d.ts, `make typescript-client`).
import createClient from "openapi-fetch";

/**
 * A client of one dockyard server acting with one API key.
 * @param {{ baseUrl: string, key: string, fetch?: typeof globalThis.fetch }} options
 * @returns {import("openapi-fetch").Client<import("./schema.js").paths>}
 */
export function createDockyardClient({ baseUrl, key, fetch }) {
  if (!key) throw new TypeError("key: missing (allowed: an API key from `dockyard keys create`)");
  return createClient({
    baseUrl: baseUrl.replace(/\/+$/, ""),
    headers: { Authorization: `Bearer ${key}` },
    ...(fetch ? { fetch } : {}),
  });
}
