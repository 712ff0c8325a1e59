// Compiles contracts/src/*.sol with the pinned solc-js into contracts/artifacts/<Name>.json
// (ABI, bytecode, deployed bytecode, compiler settings). The artifacts are committed so
// `cargo build` needs no Node.js; `--check` fails if they differ from a fresh compile.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "..");
const srcDir = path.join(root, "src");
const outDir = path.join(root, "artifacts");
const check = process.argv.includes("--check");

const sources = {};
for (const file of fs.readdirSync(srcDir).filter((f) => f.endsWith(".sol")).sort()) {
  sources[file] = { content: fs.readFileSync(path.join(srcDir, file), "utf8") };
}
const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};
const output = JSON.parse(solc.compile(JSON.stringify({ language: "Solidity", sources, settings })));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

let stale = [];
fs.mkdirSync(outDir, { recursive: true });
for (const [file, contracts] of Object.entries(output.contracts)) {
  for (const [name, c] of Object.entries(contracts)) {
    // Interfaces have no code to deploy.
    if (!c.evm.bytecode.object) continue;
    const artifact = {
      contractName: name,
      sourceName: `src/${file}`,
      compiler: { version: solc.version(), settings: { optimizer: settings.optimizer, evmVersion: settings.evmVersion } },
      abi: c.abi,
      bytecode: "0x" + c.evm.bytecode.object,
      deployedBytecode: "0x" + c.evm.deployedBytecode.object,
    };
    const text = JSON.stringify(artifact, null, 2) + "\n";
    const target = path.join(outDir, `${name}.json`);
    if (check) {
      if (!fs.existsSync(target) || fs.readFileSync(target, "utf8") !== text) stale.push(name);
    } else {
      fs.writeFileSync(target, text);
      console.log(`wrote artifacts/${name}.json`);
    }
  }
}
if (check) {
  if (stale.length) {
    console.error(`artifacts differ from the sources for: ${stale.join(", ")}; run \`npm run build\` in contracts/ and commit`);
    process.exit(1);
  }
  console.log("contract artifacts match the sources");
}
