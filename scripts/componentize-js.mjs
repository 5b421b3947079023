// Builds a JavaScript component as the `componentize-js` command would (the same engine; the
// world `projection` of sdk/wit; its `http` and `fetch-event` features off), with the host-call
// glue it generates made cheaper (the rewrites are in js-glue.mjs). Called by
// scripts/build-projection:
//
//   node scripts/componentize-js.mjs NODE_MODULES BUNDLE.js WIT_DIR OUT.wasm
//
// componentize-js generates JavaScript glue for every import of the world; a projection calls
// the view's `get` once per new key, so that glue is on its hot path, and the component runs
// it in SpiderMonkey's interpreter, where every call and property lookup costs. As generated
// (componentize-js 0.23.0) each host call builds two debug-log objects and looks up
// `globalThis.process.env.JCO_DEBUG` twice (a miss, through the global's resolve hook), and
// each string argument is measured by a `charCodeAt` loop, one native call per character,
// before it is encoded. Two rewrites, each checked to have applied (a componentize-js upgrade
// that changes the glue fails the build here rather than building it unchanged):
//
// - the debug-log calls are guarded by a constant `false`, so their arguments are never built;
// - strings are encoded with one `TextEncoder.encode` call and copied into the guest's memory
//   (the same bytes: both encode a lone surrogate as U+FFFD).
//
// The rest of the glue (lifting, lowering, the allocator calls) is untouched.

import { writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

import { leaner } from './js-glue.mjs';

const [modules, bundle, wit, out] = process.argv.slice(2);
if (!out) {
  console.error('usage: componentize-js.mjs NODE_MODULES BUNDLE.js WIT_DIR OUT.wasm');
  process.exit(2);
}
const root = resolve(modules, '@bytecodealliance/componentize-js');
// The splicer module componentize.js imports (the same file, so the same module instance).
const { splicer } = await import(pathToFileURL(resolve(root, 'lib/spidermonkey-embedding-splicer.js')));
const { componentize } = await import(pathToFileURL(resolve(root, 'src/componentize.js')));

const splice = splicer.spliceBindings;
splicer.spliceBindings = (...args) => {
  const spliced = splice(...args);
  return { ...spliced, jsBindings: leaner(spliced.jsBindings) };
};

const { component } = await componentize({
  sourcePath: bundle,
  witPath: resolve(wit),
  worldName: 'projection',
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
