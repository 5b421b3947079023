// Records, for every event of the `det` category, what a projection could read that is not
// the event: randomness, clocks, and the order of iteration. A view that differs between two
// rebuilds of this projection is nondeterminism leaking in.

import { defineProjection, Subscription } from '@projector/sdk';

export default defineProjection({
  subscription: Subscription.categories(['det']),
  apply(view, event) {
    const bytes = new Uint8Array(4);
    crypto.getRandomValues(bytes);
    const set = new Set(['pear', 'apple', String(event.position), 'fig']);
    const obj = { b: 1, a: 2, [String(event.position % 3)]: 3, z: 4 };
    view.put(`det/${event.position}`, {
      random: [Math.random(), Math.random()],
      crypto: [...bytes],
      now: Date.now(),
      date: new Date().toISOString(),
      performance: typeof performance === 'undefined' ? null : Math.round(performance.now()),
      set: [...set],
      keys: Object.keys(obj),
    });
  },
});
