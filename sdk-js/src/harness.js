// Runs a projection natively, against an in-memory view: the way to test a projection's
// logic with `node --test`, no wasm involved. Events are numbered as the log numbers them
// (positions from 1, revisions from 0 per stream), framed and decoded as in a component,
// and only those the subscription selects are applied, in batches of any size.

import { encodeEvent, joinFrames } from './frame.js';
import { MapBackend, View } from './view.js';
import { applyBatch } from './projection.js';
import { installRandom } from './random.js';

const encoder = new TextEncoder();
const utf8 = new TextDecoder();

export class Harness {
  /** `projection`: what `defineProjection` returned (a module's default export). */
  constructor(projection) {
    this.projection = projection;
    this.backend = new MapBackend();
    this.log = [];
    this.revisions = new Map();
    this.applied = 0;
  }

  /** Records an event in the log without applying it; returns its position. */
  record(stream, type, data, metadata) {
    const revision = this.revisions.get(stream) ?? 0;
    this.revisions.set(stream, revision + 1);
    const position = this.log.length + 1;
    const id = new Uint8Array(16);
    new DataView(id.buffer).setUint32(12, position);
    this.log.push({
      position,
      revision,
      recordedAt: position,
      id,
      stream,
      type,
      data: JSON.stringify(data ?? {}),
      metadata: metadata === undefined ? '' : JSON.stringify(metadata),
    });
    return position;
  }

  /** Records an event and applies it; throws if the projection refuses it. */
  append(stream, type, data, metadata) {
    const position = this.record(stream, type, data, metadata);
    this.catchUp();
    return position;
  }

  /**
   * Applies every recorded event not applied yet, in batches of `batch` events of the log
   * (events the subscription skips count toward a batch, as on the server). A refused batch
   * keeps none of its writes, and is tried again by the next call.
   */
  catchUp(batch = Infinity) {
    const { subscription } = this.projection;
    while (this.applied < this.log.length) {
      const end = Math.min(this.log.length, this.applied + Math.max(1, batch));
      const frames = this.log
        .slice(this.applied, end)
        .filter((e) => subscription.matches(e.stream, e.type))
        .map(encodeEvent);
      const bytes = joinFrames(frames);
      // Writes land in a copy, kept only when the whole batch succeeds.
      const scratch = new MapBackend(this.backend.documents);
      const restore = installRandom();
      try {
        applyBatch(this.projection, new View(scratch), bytes);
      } finally {
        restore();
      }
      this.backend = scratch;
      this.applied = end;
    }
  }

  /** The document under `key`, parsed, or `undefined`. */
  document(key) {
    const bytes = this.backend.get(key);
    return bytes === undefined ? undefined : JSON.parse(utf8.decode(bytes));
  }

  /** The stored text of the document under `key`, or `undefined`. */
  text(key) {
    const bytes = this.backend.get(key);
    return bytes === undefined ? undefined : utf8.decode(bytes);
  }

  /** Every document as text, by key, in key order. */
  documents() {
    return new Map([...this.backend.documents.keys()].sort(byBytes).map((k) => [k, this.text(k)]));
  }
}

/** Orders keys by their UTF-8 bytes, as the server's view does. */
function byBytes(a, b) {
  const x = encoder.encode(a);
  const y = encoder.encode(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}
