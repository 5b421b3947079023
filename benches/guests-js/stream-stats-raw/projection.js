// `stream-stats` written against the WIT file alone, without the SDK, the way a careful author
// would by hand: the frame read in place, one `get` per new key, one `write-many` per batch.
// The projections bench replays it beside the SDK's `stream-stats-js` (the same documents),
// so that what the SDK costs is a ratio in one run. Not an example to copy: no error names
// its event, and nothing checks the frame.

import { get, writeMany } from 'projector:projection/view@0.1.1';

const utf8 = new TextDecoder();
const encoder = new TextEncoder();
const TWO_32 = 4294967296;

export function subscription() {
  return { streams: [], categories: [], eventTypes: [] };
}

export function apply(batch) {
  const data = new DataView(batch.buffer, batch.byteOffset, batch.byteLength);
  const docs = new Map();
  const stored = get('total');
  const total = stored ? JSON.parse(utf8.decode(stored)) : { events: 0, streams: 0, lastPosition: 0 };
  const end = batch.byteLength;
  let at = 0;
  while (at < end) {
    const position = data.getUint32(at + 4, true) + data.getUint32(at + 8, true) * TWO_32;
    const revision = data.getUint32(at + 12, true) + data.getUint32(at + 16, true) * TWO_32;
    const n = data.getUint32(at + 44, true);
    const key = 'stream/' + utf8.decode(batch.subarray(at + 48, at + 48 + n));
    let doc = docs.get(key);
    if (doc === undefined) {
      const bytes = get(key);
      doc = bytes ? JSON.parse(utf8.decode(bytes)) : { events: 0, lastPosition: 0, lastRevision: 0 };
      docs.set(key, doc);
    }
    doc.events += 1;
    doc.lastPosition = position;
    doc.lastRevision = revision;
    total.events += 1;
    if (doc.events === 1) total.streams += 1;
    total.lastPosition = position;
    at += 4 + data.getUint32(at, true);
  }
  docs.set('total', total);
  // write-many's framing: u32 n + key, u32 n + document.
  const parts = [];
  let size = 0;
  for (const [key, doc] of docs) {
    const k = encoder.encode(key);
    const v = encoder.encode(JSON.stringify(doc));
    parts.push(k, v);
    size += 8 + k.byteLength + v.byteLength;
  }
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let w = 0;
  for (const part of parts) {
    view.setUint32(w, part.byteLength, true);
    out.set(part, w + 4);
    w += 4 + part.byteLength;
  }
  writeMany(out);
}
