// The component side: turns a projection into the world's exports. The build generates the
// component's entry module, which imports the host's view and calls `component`:
//
//   import * as host from 'projector:projection/view@0.1.1';
//   import projection from './your-projection.js';
//   import { component } from '@projector/sdk/guest';
//   export const { subscription, apply } = component(projection, host);

import { View } from './view.js';
import { applyBatch, describe } from './projection.js';
import { installRandom } from './random.js';

export function component(projection, host) {
  installRandom();
  return {
    subscription() {
      const s = projection.subscription;
      return { streams: s.streams, categories: s.categories, eventTypes: s.eventTypes };
    },
    apply(batch) {
      try {
        applyBatch(projection, new View(host), batch);
      } catch (e) {
        // A thrown value becomes the `err` of `result<_, string>`.
        throw describe(e);
      }
    },
  };
}
