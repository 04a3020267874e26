import type { Client } from "openapi-fetch";
import type { components, operations, paths } from "./schema.js";

export type { components, operations, paths };
export type DockyardClient = Client<paths>;

/** A client of one dockyard server acting with one API key. */
export function createDockyardClient(options: {
  baseUrl: string;
  key: string;
  fetch?: typeof globalThis.fetch;
}): DockyardClient;
