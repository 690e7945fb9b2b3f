// Validates Gateway API objects (JSON list on stdin) against the schemas of the pinned
// @kubernetes-models/gateway-api, generated from the Gateway API's own Go types.
// Strict, as kubernetes-validate is for the core kinds: a kind without a schema fails,
// and so does a field the schema does not know. The generated validators do not check
// unknown fields themselves; they read every field their schema declares, so a field
// that no validator read is one the schema lacks.
//
//   node validate-gateway-api.mjs < objects.json   -> one line per problem, exit 1 if any
import { readFileSync } from "node:fs";

const objects = JSON.parse(readFileSync(0, "utf8"));
const problems = [];

function watched(value, path, reads, objectsSeen) {
  if (value === null || typeof value !== "object") return value;
  if (!reads.has(value)) {
    reads.set(value, new Set());
    objectsSeen.push([path, value]);
  }
  return new Proxy(value, {
    get(target, key) {
      if (typeof key === "string") reads.get(target).add(key);
      return watched(target[key], `${path}/${String(key)}`, reads, objectsSeen);
    },
    ownKeys(target) {
      // A map (labels, annotations) is walked key by key: all its keys are known.
      for (const key of Reflect.ownKeys(target)) reads.get(target).add(key);
      return Reflect.ownKeys(target);
    },
  });
}

for (const object of objects) {
  const name = `${object.kind}/${object.metadata?.name}`;
  const [group, version] = String(object.apiVersion).split("/");
  if (!group.startsWith("gateway.networking.k8s.io") || !version) {
    problems.push(`${name}: ${object.apiVersion} is not a Gateway API group`);
    continue;
  }
  const schema = `IoK8sSigsGatewayApiApis${version[0].toUpperCase()}${version.slice(1)}${object.kind}`;
  let validate;
  try {
    ({ validate } = await import(`@kubernetes-models/gateway-api/_schemas/${schema}`));
  } catch {
    problems.push(`${name}: no schema for ${object.apiVersion} ${object.kind}`);
    continue;
  }
  const reads = new Map();
  const objectsSeen = [];
  if (!validate(watched(object, "", reads, objectsSeen))) {
    for (const error of validate.errors) {
      problems.push(`${name}: ${error.instancePath || "/"} ${error.keyword} ${JSON.stringify(error.params)}`);
    }
  }
  for (const [path, value] of objectsSeen) {
    if (Array.isArray(value)) continue;
    for (const key of Object.keys(value)) {
      if (!reads.get(value).has(key)) problems.push(`${name}: ${path}/${key} is not a field of the schema`);
    }
  }
}

for (const line of problems) console.log(line);
process.exit(problems.length ? 1 : 0);
