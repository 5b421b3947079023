// How many events each stream has and where its last one sits, plus a total over the whole
// log: the documents of the Rust `stream-stats`, byte for byte.
//
// - `stream/<stream>` -> { events, lastPosition, lastRevision }
// - `total` -> { events, streams, lastPosition }

import { defineProjection, Subscription } from '@projector/sdk';

const newStream = () => ({ events: 0, lastPosition: 0, lastRevision: 0 });
const newTotal = () => ({ events: 0, streams: 0, lastPosition: 0 });

export default defineProjection({
  subscription: Subscription.all(),

  apply(view, event) {
    const stream = view.edit('stream/' + event.stream, newStream);
    stream.events += 1;
    stream.lastPosition = event.position;
    stream.lastRevision = event.revision;
    const total = view.edit('total', newTotal);
    total.events += 1;
    if (stream.events === 1) total.streams += 1;
    total.lastPosition = event.position;
  },
});
