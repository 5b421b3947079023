// The byte framing of an event batch (see `apply` in sdk/wit/projection.wit), integers
// little-endian:
//
//   u32 length of the rest | u64 position | u64 revision | u64 recorded-at | 16 bytes id |
//   u32 n, stream | u32 n, type | u32 n, data (JSON) | u32 n, metadata (JSON; n = 0: none)
//
// `encodeEvent` is the host's side, used by the native harness so that its tests go through
// the same decoder as the component.

import { batchEvents, resetTypeRead, typeRead } from './event.js';

const FIXED = 8 + 8 + 8 + 16;
const TWO_32 = 4294967296;
const encoder = new TextEncoder();
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Why a batch could not be decoded: the host and the guest disagree on the format. */
export class FrameError extends Error {
  constructor(message) {
    super(`malformed event batch: ${message}`);
    this.name = 'FrameError';
  }
}

/** Calls `each(event)` for every event of `batch` (a Uint8Array), in order. */
export function forEachEvent(batch, each) {
  eachEvent(batch, (_, event) => each(event), undefined);
}

/**
 * Calls `apply(view, event)` for every event of `batch`, in order: the per-event path of every
 * component. The component runs JavaScript in an interpreter where a call, a getter and above
 * all a native call (a DataView read, a TextDecoder call) each cost a good part of a
 * microsecond, so the frame's bounds are checked and the fields nearly every projection reads
 * (position, revision, stream, and the type once the projection has read one) decoded here,
 * once; the data, metadata, id and time are decoded when the projection first asks (see
 * `Event`). `currentEvent` is the event being applied, for the caller to name it when `apply`
 * throws, and for `Math.random`'s seed.
 */
export function eachEvent(batch, apply, view) {
  const bytes = batch instanceof Uint8Array ? batch : new Uint8Array(batch);
  const data = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const { Decoded, Lazy } = batchEvents({ bytes, view: data });
  const end = bytes.byteLength;
  // Types are decoded when read until a projection first reads one (see `batchEvents`).
  let lazyType = true;
  resetTypeRead();
  let at = 0;
  // Offsets as literals (a named constant is a lookup and an addition at run time here):
  // 44 = 4 + FIXED, where the stream's length is; 48 where the stream starts; 60 = the
  // smallest frame (4 + FIXED + four lengths).
  while (at < end) {
    if (end - at < 60) throw new FrameError('truncated frame');
    const stop = at + 4 + data.getUint32(at, true);
    const streamEnd = at + 48 + data.getUint32(at + 44, true);
    if (streamEnd + 4 > stop) throw new FrameError('stream overruns its frame');
    const typeEnd = streamEnd + 4 + data.getUint32(streamEnd, true);
    if (typeEnd + 8 > stop || stop > end) throw new FrameError('frame overruns the batch');
    const position = data.getUint32(at + 4, true) + data.getUint32(at + 8, true) * 4294967296;
    const revision = data.getUint32(at + 12, true) + data.getUint32(at + 16, true) * 4294967296;
    const stream = utf8.decode(bytes.subarray(at + 48, streamEnd));
    const event = lazyType
      ? new Lazy(at, position, revision, stream)
      : new Decoded(at, position, revision, stream, utf8.decode(bytes.subarray(streamEnd + 4, typeEnd)));
    currentEvent = event;
    apply(view, event);
    if (lazyType && typeRead) lazyType = false;
    at = stop;
  }
  currentEvent = null;
}

/**
 * The event `eachEvent` is applying, or `null`. (A module binding, not an object's property:
 * the cheapest write in the interpreter, made once an event.)
 */
export let currentEvent = null;

/** Sets `currentEvent` to `null`. */
export function clearCurrentEvent() {
  currentEvent = null;
}

/** The events of `batch` as an array. */
export function decodeBatch(batch) {
  const events = [];
  forEachEvent(batch, (event) => events.push(event));
  return events;
}

/**
 * Appends one event's frame to `parts` (an array of Uint8Array). `event` has `position`,
 * `revision`, `recordedAt`, `id` (16 bytes), `stream`, `type`, `data` and `metadata` (JSON
 * text, or bytes; `metadata` may be empty).
 */
export function encodeEvent(event) {
  const fields = [event.stream, event.type, event.data, event.metadata ?? ''].map((f) =>
    typeof f === 'string' ? encoder.encode(f) : f,
  );
  const rest = FIXED + 16 + fields.reduce((n, f) => n + f.byteLength, 0);
  const out = new Uint8Array(4 + rest);
  const view = new DataView(out.buffer);
  view.setUint32(0, rest, true);
  let at = 4;
  for (const n of [event.position, event.revision, event.recordedAt]) {
    view.setUint32(at, n % TWO_32, true);
    view.setUint32(at + 4, Math.floor(n / TWO_32), true);
    at += 8;
  }
  out.set(event.id, at);
  at += 16;
  for (const field of fields) {
    view.setUint32(at, field.byteLength, true);
    out.set(field, at + 4);
    at += 4 + field.byteLength;
  }
  return out;
}

/** Joins frames into one batch. */
export function joinFrames(frames) {
  const out = new Uint8Array(frames.reduce((n, f) => n + f.byteLength, 0));
  let at = 0;
  for (const frame of frames) {
    out.set(frame, at);
    at += frame.byteLength;
  }
  return out;
}
