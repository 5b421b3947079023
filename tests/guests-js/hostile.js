// A projection that misbehaves on demand, to show that the server isolates it. It reads the
// `hostile` category and counts events under `count`, except for these event types:
// `Loop` spins forever; `Bomb` allocates memory until something stops it; `Throw` hits a bug
// (a TypeError); `Refuse` refuses the event with a ProjectionError.

import { defineProjection, ProjectionError, Subscription } from '@projector/sdk';

export default defineProjection({
  subscription: Subscription.categories(['hostile']),
  apply(view, event) {
    switch (event.type) {
      case 'Loop': {
        let n = 0;
        for (;;) n = (n + 1) | 0;
      }
      case 'Bomb': {
        const hoard = [];
        for (;;) hoard.push(new Array(1 << 20).fill(hoard.length));
      }
      case 'Throw': {
        const missing = event.data.missing;
        return missing.field;
      }
      case 'Refuse':
        throw new ProjectionError('asked to refuse this event');
    }
    view.update('count', (c) => { c.n += 1; }, () => ({ n: 0 }));
  },
});
