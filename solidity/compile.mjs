// Compiles solidity/contracts (production) and solidity/test (test doubles) with the pinned
// npm solc into JSON artifacts: ABI, bytecode, compiler version and settings, and the keccak256
// of every source that went into each contract (so a Python test can detect stale artifacts
// without node or solc). Output is deterministic: compiling twice changes nothing.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const solc = require("solc");

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..");
const targets = [
  { dir: "solidity/contracts", out: "gateway/contracts/artifacts" },
  { dir: "solidity/test", out: "tests/contracts/artifacts" },
];
// Pinned compiler settings, shared with tests/contracts/test_artifacts.py.
const pinned = JSON.parse(fs.readFileSync(path.join(here, "compiler.json"), "utf8"));
if (!solc.version().startsWith(pinned.solc + "+")) {
  console.error(`solc ${solc.version()} is installed but compiler.json pins ${pinned.solc}: run npm ci`);
  process.exit(1);
}
const settings = {
  ...pinned.settings,
  metadata: { bytecodeHash: "ipfs" },
  outputSelection: {
    "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "metadata"] },
  },
};
const ozVersion = JSON.parse(
  fs.readFileSync(path.join(here, "node_modules/@openzeppelin/contracts/package.json"), "utf8"),
).version;

function listSol(dir) {
  return fs
    .readdirSync(path.join(root, dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith(".sol"))
    .map((e) => path.relative(root, path.join(e.parentPath ?? e.path, e.name)))
    .sort();
}

function findImports(importPath) {
  const candidates = [path.join(root, importPath), path.join(here, "node_modules", importPath)];
  for (const c of candidates) {
    if (fs.existsSync(c)) return { contents: fs.readFileSync(c, "utf8") };
  }
  return { error: `not found: ${importPath}` };
}

const sources = {};
for (const t of targets) for (const f of listSol(t.dir)) sources[f] = { content: fs.readFileSync(path.join(root, f), "utf8") };
const input = { language: "Solidity", sources, settings };
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
// 2394: the transient-storage warning, expected for ReentrancyGuardTransient.
for (const e of output.errors ?? []) if (e.errorCode !== "2394") console.error(e.formattedMessage);
if (errors.length) process.exit(1);

for (const t of targets) {
  const outDir = path.join(root, t.out);
  fs.mkdirSync(outDir, { recursive: true });
  for (const f of fs.readdirSync(outDir)) if (f.endsWith(".json")) fs.unlinkSync(path.join(outDir, f));
  for (const sourceName of listSol(t.dir)) {
    for (const [name, c] of Object.entries(output.contracts[sourceName] ?? {})) {
      if (!c.evm.bytecode.object) continue; // interfaces and abstract contracts
      const meta = JSON.parse(c.metadata);
      const artifact = {
        contractName: name,
        sourceName,
        compiler: { version: meta.compiler.version, settings: pinned.settings },
        dependencies: { "@openzeppelin/contracts": ozVersion },
        sources: Object.fromEntries(Object.entries(meta.sources).map(([p, s]) => [p, s.keccak256])),
        abi: c.abi,
        bytecode: "0x" + c.evm.bytecode.object,
        deployedBytecode: "0x" + c.evm.deployedBytecode.object,
      };
      fs.writeFileSync(path.join(outDir, `${name}.json`), JSON.stringify(artifact, null, 1) + "\n");
      console.log(`${t.out}/${name}.json  ${(c.evm.deployedBytecode.object.length / 2)} bytes runtime`);
    }
  }
}
