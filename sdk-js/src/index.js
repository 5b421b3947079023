// Write Projector projections in JavaScript. A projection module's default export is
// `defineProjection({ subscription, apply(view, event) })`; `scripts/build-projection` turns
// it into a WebAssembly component, and `@projector/sdk/harness` runs it natively in tests.

export { Event } from './event.js';
export { decodeBatch, forEachEvent, encodeEvent, joinFrames, FrameError } from './frame.js';
export { View, MapBackend } from './view.js';
export { Subscription } from './subscription.js';
export { defineProjection, ProjectionError } from './projection.js';
