// Workaround for `jco componentize` 1.35.0: it reads the WIT through wasm builds of wasm-tools
// (jco-transpile) and of componentize-js's splicer, both running on
// @bytecodealliance/preview2-shim, whose default list of preopened directories is empty (0.25+),
// so every WIT path fails with "failed to get path metadata: No such file or directory (os error
// 44)" or "reading file <wit>: No such file or directory". Preloaded with `node --import`, this
// gives each shim copy those modules load the host filesystem root before jco starts. Build time
// only: the plugin itself gets no filesystem.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

const modules = [
  'jco-transpile/vendor/wasm-tools.js',
  'jco/node_modules/@bytecodealliance/componentize-js/lib/spidermonkey-embedding-splicer.js',
  'componentize-js/lib/spidermonkey-embedding-splicer.js',
];
const shims = new Set();
for (const m of modules) {
  const file = fileURLToPath(new URL(`./node_modules/@bytecodealliance/${m}`, import.meta.url));
  if (!existsSync(file)) continue;
  // Resolve the shim exactly as that module does (a nested copy or the hoisted one).
  shims.add(createRequire(file).resolve('@bytecodealliance/preview2-shim/filesystem'));
}
if (shims.size === 0) throw new Error('jco-preopens: no preview2-shim found; run `npm ci` first');
for (const shim of shims) {
  const { _setPreopens } = await import(pathToFileURL(shim).href);
  _setPreopens({ '/': '/' });
}
