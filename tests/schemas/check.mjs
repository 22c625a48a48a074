// Checks deployment files and dashboards against the schemas their projects
// publish, as a cluster or Grafana would read them:
//
//   node check.mjs kubernetes FILE.yaml...   Kubernetes, KEDA and Prometheus
//                                            Operator objects
//   node check.mjs grafana FILE.json...      Grafana dashboards
//   node check.mjs dockerfile FILE...         Dockerfiles, through the
//                                            dockerfile-utils linter
//
// Each object is checked twice: at run time against the JSON schema (types,
// required fields, enums, patterns) and by the TypeScript compiler against
// the published types, whose excess-property check rejects unknown fields,
// as `kubectl apply` (strict field validation) and Grafana's schema do.
// Run from the directory where package.json's packages are installed
// (tests/run.sh does it under ~/.cache/modelwatch/schemas). Exits 1 and
// prints every error when one object fails.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseAllDocuments } from "yaml";

// The package holding each API group's models.
const packages = {
  "keda.sh": "@kubernetes-models/keda",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

function modelPath(apiVersion, kind) {
  const slash = apiVersion.indexOf("/");
  const group = slash < 0 ? "" : apiVersion.slice(0, slash);
  const pkg = packages[group];
  return pkg ? `${pkg}/${apiVersion}/${kind}` : `kubernetes-models/${apiVersion}/${kind}`;
}

async function kubernetes(files) {
  const errors = [];
  const checks = [];
  for (const file of files) {
    const docs = parseAllDocuments(readFileSync(file, "utf8"));
    for (const [i, doc] of docs.entries()) {
      if (doc.errors.length) {
        errors.push(`${file}#${i}: ${doc.errors.map((e) => e.message).join("; ")}`);
        continue;
      }
      const obj = doc.toJS();
      if (obj === null) continue;
      const where = `${file}#${i} ${obj.kind}/${obj.metadata?.name}`;
      const path = modelPath(String(obj.apiVersion), String(obj.kind));
      let mod;
      try {
        mod = await import(path);
      } catch {
        errors.push(`${where}: no published schema for ${obj.apiVersion} ${obj.kind}`);
        continue;
      }
      try {
        new mod[obj.kind](obj).validate();
      } catch (e) {
        errors.push(`${where}: ${e.message}`);
      }
      checks.push({ where, path, type: `I${obj.kind}`, json: JSON.stringify(obj, null, 1) });
    }
  }
  const source = checks
    .map((c, i) => `import type { ${c.type} as T${i} } from "${c.path}";\n` +
      `// ${c.where}\nexport const o${i} = (${c.json}) satisfies T${i};\n`)
    .join("\n");
  return errors.concat(typecheck(source));
}

// Grafana's types declare string enums (`MappingType.ValueToText`), which a
// JSON file spells as their values ("value"): `Relax` accepts the values. A
// query's fields beyond `refId` belong to its data source's plugin, so
// queries stay open; everything else is closed, as in the schema.
const grafanaPrelude = `import type { Dashboard, DataQuery } from "@grafana/schema";
type Relax<T> =
  T extends string ? \`\${T}\` :
  T extends readonly (infer U)[] ? Relax<U>[] :
  T extends DataQuery ? { [K in keyof T]: Relax<T[K]> } & { [key: string]: unknown } :
  T extends object ? { [K in keyof T]: Relax<T[K]> } : T;
`;

function grafana(files) {
  const source = files
    .map((file, i) => `// ${file}\nexport const d${i} = (${readFileSync(file, "utf8")}) satisfies Relax<Dashboard>;\n`)
    .join("\n");
  return typecheck(grafanaPrelude + source);
}

// Every diagnostic counts, warnings too: an image definition should have none.
async function dockerfile(files) {
  const { validate } = await import("dockerfile-utils");
  return files.flatMap((file) =>
    validate(readFileSync(file, "utf8")).map(
      (d) => `${file}:${d.range.start.line + 1}: ${d.message}`));
}

function typecheck(source) {
  const dir = mkdtempSync(join(resolve("."), "check-"));
  const file = join(dir, "check.ts");
  writeFileSync(file, source);
  try {
    execFileSync(resolve("node_modules/.bin/tsc"), [
      "--noEmit", "--strict", "--skipLibCheck", "--target", "es2022",
      "--module", "esnext", "--moduleResolution", "bundler", file,
    ], { stdio: "pipe" });
    rmSync(dir, { recursive: true });
    return [];
  } catch (e) {
    const out = `${e.stdout ?? ""}${e.stderr ?? ""}`.trim();
    return [`${out}\n(the checked source: ${file})`];
  }
}

const [mode, ...files] = process.argv.slice(2);
const check = { kubernetes, grafana, dockerfile }[mode];
if (!check || files.length === 0) {
  console.error("usage: node check.mjs kubernetes|grafana|dockerfile FILE...");
  process.exit(2);
}
const errors = await check(files.map((f) => resolve(f)));
for (const e of errors) console.error(e);
console.log(errors.length ? `${errors.length} error(s)` : `${files.length} file(s) valid`);
process.exit(errors.length ? 1 : 0);
