// The rewrites of componentize-js's generated glue (scripts/js-glue.mjs), checked against the
// functions as componentize-js 0.23.0 generates them.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { leaner } from '../js-glue.mjs';

// Copied from the bindings componentize-js 0.23.0 generates for sdk/wit (`--debug-bindings`).
const GENERATED = `const TEXT_ENCODER_UTF8 = new TextEncoder();

function _utf8AllocateAndEncode(s, realloc, memory) {
  if (typeof s !== 'string') {
    throw new TypeError('expected a string, received [' + typeof s + ']');
  }
  if (s.length === 0) { return { ptr: 1, len: 0 }; }
  // Compute the exact allocation size up front. Some older preview1
  // adapters only support an initial allocation, not a subsequent shrink.
  let len = 0;
  let codepoints = 0;
  for (let i = 0; i < s.length; i++) {
    const ch = s.charCodeAt(i);
    codepoints++;
    if (ch < 0x80) { len += 1; }
    else if (ch < 0x800) { len += 2; }
    else if (ch >= 0xd800 && ch <= 0xdbff &&
    i + 1 < s.length &&
    (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      len += 4;
      i++;
    } else { len += 3; }
  }
  const ptr = realloc(0, 0, 1, len);
  const { read, written } = TEXT_ENCODER_UTF8.encodeInto(
  s,
  new Uint8Array(memory.buffer, ptr, len),
  );
  if (read !== s.length || written !== len) {
    throw new Error('failed to encode whole string');
  }
  const res = { ptr, len, codepoints };
  return res;
}


const _debugLog = (...args) => {
  if (!globalThis?.process?.env?.JCO_DEBUG) { return; }
  console.debug(...args);
};

function call(key, realloc, memory) {
  var encodeRes = _utf8AllocateAndEncode(key, realloc, memory);
  _debugLog('[Instruction::CallWasm] enter', {
    funcName: 'get',
    paramCount: 2,
  });
  _debugLog(' [Instruction::CallInterface] (sync, @ enter)');
  return encodeRes;
}
`;

/** The glue's `call`, with `log` standing for `console.debug` and JCO_DEBUG set. */
function load(glue, log) {
  const module = new Function('console', 'globalThis', `${glue}\nreturn call;`);
  return module({ debug: log }, { process: { env: { JCO_DEBUG: '1' } } });
}

/** What `call` leaves in a fresh memory: the bytes it encoded. */
function encoded(call, key) {
  const memory = { buffer: new ArrayBuffer(256) };
  let next = 8;
  const realloc = (_old, _oldLen, _align, len) => {
    const ptr = next;
    next += len;
    return ptr;
  };
  const { ptr, len } = call(key, realloc, memory);
  return len === 0 ? [] : [...new Uint8Array(memory.buffer, ptr, len)];
}

test('strings are encoded to the same bytes as the generated encoder', () => {
  const logged = [];
  const generated = load(GENERATED, (...args) => logged.push(args));
  const lean = load(leaner(GENERATED), () => assert.fail('a debug log was built'));
  const keys = ['', 'stream/order-1', 'customer/ç%2F🙂/4', '日本語', 'a\u0000b', 'lone \ud800 high', 'lone \udc00 low', 'end \ud83d'];
  for (const key of keys) {
    assert.deepEqual(encoded(lean, key), encoded(generated, key), JSON.stringify(key));
  }
  assert.ok(logged.length > 0, 'the generated glue logs when JCO_DEBUG is set');
});

test('a rewrite that finds nothing to rewrite fails the build', () => {
  assert.throws(() => leaner('function other() {}'), /string encoder/);
  const noLogs = GENERATED.replace(/_debugLog\(/g, 'log(');
  assert.throws(() => leaner(noLogs), /debug-log/);
  const readsCodepoints = `${GENERATED}\nconst n = encodeRes.codepoints;\n`;
  assert.throws(() => leaner(readsCodepoints), /codepoints/);
});
