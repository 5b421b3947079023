// What a projection module exports, and the rules every run of it follows (in a component
// and in the native harness alike).

import { Subscription } from './subscription.js';
import { clearCurrentEvent, currentEvent, eachEvent, FrameError } from './frame.js';

/** Why a projection refused an event; the host records it, with the event, as the fault. */
export class ProjectionError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ProjectionError';
  }
}

/**
 * Checks and returns a projection: `{ subscription, apply(view, event) }`, where
 * `subscription` is a `Subscription` (or a function returning one). Export it as the module's
 * default.
 */
export function defineProjection(projection) {
  if (projection === null || typeof projection !== 'object') {
    throw new TypeError('defineProjection takes { subscription, apply(view, event) }');
  }
  if (typeof projection.apply !== 'function') {
    throw new TypeError('a projection needs an apply(view, event) function');
  }
  const subscription =
    typeof projection.subscription === 'function'
      ? projection.subscription()
      : projection.subscription ?? Subscription.all();
  if (!(subscription instanceof Subscription)) {
    throw new TypeError('subscription must be a Subscription (Subscription.all(), .streams(...), .categories(...))');
  }
  return Object.freeze({ subscription, apply: projection.apply });
}

/**
 * Applies the events of `batch` to `view` in order and flushes the view. A failure is
 * rethrown as a `ProjectionError` naming the event.
 */
export function applyBatch(projection, view, batch) {
  try {
    eachEvent(batch, projection.apply, view);
  } catch (e) {
    const event = currentEvent;
    if (event === null || e instanceof FrameError) throw e;
    clearCurrentEvent();
    throw new ProjectionError(`${event.type} event at position ${event.position} (stream ${event.stream}): ${describe(e)}`);
  }
  view.flush();
}

/** A thrown value as a readable reason. */
export function describe(thrown) {
  if (thrown instanceof ProjectionError) return thrown.message;
  if (thrown instanceof Error) return thrown.message ? `${thrown.name}: ${thrown.message}` : thrown.name;
  if (typeof thrown === 'string') return thrown;
  try {
    return JSON.stringify(thrown) ?? String(thrown);
  } catch {
    return String(thrown);
  }
}
