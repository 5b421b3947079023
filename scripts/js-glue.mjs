// The rewrites scripts/componentize-js.mjs makes to the host-call glue componentize-js
// generates (the reasons are in that script). Kept apart so that `npm test` checks them
// without building a component (scripts/test/js-glue.test.mjs).

const DEBUG_CALL = /(?<![\w$.])_debugLog\(/g;

const ENCODER = /function _utf8AllocateAndEncode\(s, realloc, memory\) \{\n[\s\S]*?\n\}\n/;
const LEAN_ENCODER = `function _utf8AllocateAndEncode(s, realloc, memory) {
  if (typeof s !== 'string') {
    throw new TypeError('expected a string, received [' + typeof s + ']');
  }
  if (s.length === 0) { return { ptr: 1, len: 0 }; }
  const bytes = TEXT_ENCODER_UTF8.encode(s);
  const len = bytes.length;
  const ptr = realloc(0, 0, 1, len);
  new Uint8Array(memory.buffer, ptr, len).set(bytes);
  return { ptr, len };
}
`;

/** The generated glue, rewritten; throws when a rewrite finds nothing to rewrite. */
export function leaner(bindings) {
  if (!ENCODER.test(bindings)) throw new Error('the string encoder of the bindings was not found');
  if (/\bcodepoints\b/.test(bindings.replace(ENCODER, ''))) {
    throw new Error("the bindings read the encoder's codepoints, which the lean encoder drops");
  }
  const calls = bindings.match(DEBUG_CALL)?.length ?? 0;
  if (calls === 0) throw new Error('no debug-log call found in the bindings');
  return bindings.replace(ENCODER, LEAN_ENCODER).replace(DEBUG_CALL, 'false && _debugLog(');
}
