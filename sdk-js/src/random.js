// Determinism: a view must be a pure function of the events it saw, but the host may run any
// batch in a fresh instance and cut batches differently on a rebuild. So `Math.random` (and
// `crypto.getRandomValues`) draw from a small generator (mulberry32) seeded from the position
// of the event being applied: the n-th draw while applying an event is the same on every
// replay. It is seeded on the event's first draw, so an event that draws nothing costs nothing.
// The host freezes the clocks: `Date.now()` is 0 in a component.

import { currentEvent } from './frame.js';

/** The generator's state, and the event that seeded it. */
const seed = { event: null, state: 0 };

function next() {
  const event = currentEvent;
  if (event !== seed.event && event !== null) {
    const position = event.position;
    seed.state = Math.imul(position | 0, 0x9e3779b1) ^ Math.floor(position / 4294967296);
    seed.event = event;
  }
  seed.state = (seed.state + 0x6d2b79f5) | 0;
  let t = seed.state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return (t ^ (t >>> 14)) >>> 0;
}

function random() {
  return next() / 4294967296;
}

function getRandomValues(array) {
  const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
  for (let i = 0; i < bytes.length; i++) bytes[i] = next() & 0xff;
  return array;
}

/** Installs the generator; returns a function that puts the previous ones back. */
export function installRandom() {
  const previous = Math.random;
  Math.random = random;
  const crypto = globalThis.crypto;
  const previousValues = crypto?.getRandomValues;
  if (crypto) {
    try {
      crypto.getRandomValues = getRandomValues;
    } catch {
      // A read-only crypto (Node's): randomness through it is not made deterministic.
    }
  }
  return () => {
    Math.random = previous;
    if (crypto && previousValues) {
      try {
        crypto.getRandomValues = previousValues;
      } catch {
        // as above
      }
    }
  };
}
