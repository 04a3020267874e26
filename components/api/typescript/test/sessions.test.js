// Against a running `dockyard serve` (tests/api/test_typescript_client.py starts it and
// sets the environment): many sessions created at once through the generated client,
// listed, hidden from another tenant's key (404 as for a missing one), destroyed.
// Type-checked against src/schema.d.ts by `npm run check` (tsc --checkJs).
//
// DOCKYARD_PHASE=create: create DOCKYARD_COUNT sessions at once, list them, try each with
//   the other tenant's key; write {sessionId: containerId} to DOCKYARD_REPORT.
// DOCKYARD_PHASE=destroy: the other tenant's key cannot destroy them; the tenant's key
//   destroys them at once; each then answers 404.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { test } from "node:test";

import { createDockyardClient } from "../src/index.js";

/** @param {string} name */
function env(name) {
  const value = process.env[name];
  assert.ok(value, `$${name} is not set (tests/api/test_typescript_client.py sets it)`);
  return value;
}

const baseUrl = env("DOCKYARD_URL");
const tenant = createDockyardClient({ baseUrl, key: env("DOCKYARD_KEY") });
const other = createDockyardClient({ baseUrl, key: env("DOCKYARD_OTHER_KEY") });
const count = Number(env("DOCKYARD_COUNT"));
const ids = Array.from({ length: count }, (_, i) => `${env("DOCKYARD_PREFIX")}${i}`);

/** @param {string} sessionId */
async function hiddenFromOther(sessionId) {
  const params = { path: { session_id: sessionId } };
  for (const answer of [
    await other.GET("/api/sessions/{session_id}", { params }),
    await other.POST("/api/sessions/{session_id}/refresh", { params }),
    await other.DELETE("/api/sessions/{session_id}", { params }),
  ]) {
    assert.equal(answer.response.status, 404, `${sessionId}: ${JSON.stringify(answer.error)}`);
    assert.equal(answer.data, undefined);
  }
}

test("create at once, list, another tenant's key gets 404", { skip: env("DOCKYARD_PHASE") !== "create" }, async () => {
  const created = await Promise.all(
    ids.map((sessionId) =>
      tenant.POST("/api/sessions/create", {
        body: { sessionId, cwd: env("DOCKYARD_CWD"), backend: "claude" },
      }),
    ),
  );
  /** @type {Record<string, string>} */
  const containers = {};
  created.forEach(({ data, error, response }, i) => {
    assert.equal(response.status, 201, `${ids[i]}: ${JSON.stringify(error)}`);
    assert.ok(data);
    assert.equal(data.sessionId, ids[i]);
    // The document types the manifest as an object (dockyard.manifest validates it).
    const manifest = /** @type {{ container: { id: string } }} */ (data);
    containers[ids[i]] = manifest.container.id;
  });
  writeFileSync(env("DOCKYARD_REPORT"), JSON.stringify(containers));

  const listed = await tenant.GET("/api/sessions", { params: { query: { limit: 500 } } });
  assert.equal(listed.response.status, 200, JSON.stringify(listed.error));
  assert.ok(listed.data);
  assert.deepEqual(listed.data.items.map((row) => row.sessionId).sort(), [...ids].sort());
  assert.equal(listed.data.total, count);

  const got = await tenant.GET("/api/sessions/{session_id}", {
    params: { path: { session_id: ids[0] } },
  });
  assert.equal(got.response.status, 200, JSON.stringify(got.error));
  assert.equal(got.data?.manifest.sessionId, ids[0]);

  const seenByOther = await other.GET("/api/sessions", { params: { query: { limit: 500 } } });
  assert.equal(seenByOther.response.status, 200);
  assert.deepEqual(seenByOther.data?.items, []);
  await Promise.all(ids.map(hiddenFromOther));
});

test("destroy at once", { skip: env("DOCKYARD_PHASE") !== "destroy" }, async () => {
  await hiddenFromOther(ids[0]);
  const destroyed = await Promise.all(
    ids.map((sessionId) =>
      tenant.DELETE("/api/sessions/{session_id}", { params: { path: { session_id: sessionId } } }),
    ),
  );
  destroyed.forEach(({ data, error, response }, i) => {
    assert.equal(response.status, 200, `${ids[i]}: ${JSON.stringify(error)}`);
    assert.equal(data?.destroyed, true);
  });
  const after = await tenant.GET("/api/sessions", { params: { query: { limit: 500 } } });
  assert.deepEqual(after.data?.items, []);
  const gone = await tenant.GET("/api/sessions/{session_id}", {
    params: { path: { session_id: ids[0] } },
  });
  assert.equal(gone.response.status, 404);
});
