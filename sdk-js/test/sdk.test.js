import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  decodeBatch,
  defineProjection,
  encodeEvent,
  Event,
  forEachEvent,
  joinFrames,
  FrameError,
  MapBackend,
  Subscription,
  View,
} from '../src/index.js';
import { Harness } from '../src/harness.js';

const id = Uint8Array.from([0x01, 0x93, 0xa0, 0xc4, 0x5f, 0x3e, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 0x2a]);

test('frames decode to the events they encode', () => {
  const batch = joinFrames([
    encodeEvent({ position: 2 ** 40 + 7, revision: 3, recordedAt: 1_700_000_000_000_000, id, stream: 'order-1', type: 'Placed', data: '{"a":"é"}', metadata: '{"m":1}' }),
    encodeEvent({ position: 8, revision: 0, recordedAt: 0, id, stream: 'x', type: 'T', data: '[]' }),
  ]);
  const [a, b] = decodeBatch(batch);
  assert.equal(a.position, 2 ** 40 + 7);
  assert.equal(a.revision, 3);
  assert.equal(a.recordedAt, 1_700_000_000_000_000);
  assert.equal(a.id, '0193a0c4-5f3e-7000-8000-00000000002a');
  assert.equal(a.stream, 'order-1');
  assert.equal(a.category, 'order');
  assert.deepEqual(a.data, { a: 'é' });
  assert.deepEqual(a.metadata, { m: 1 });
  assert.equal(b.category, null);
  assert.equal(b.metadata, null);
  assert.deepEqual(b.data, []);
});

test('a type reads the same whether decoded with its event or when first read', () => {
  const types = ['Placed', 'Ünïcode/🙂', 'T', '', 'Shipped'];
  const batch = joinFrames(
    types.map((type, i) => encodeEvent({ position: i + 1, revision: i, recordedAt: 0, id, stream: `s-${i}`, type, data: '{}' })),
  );
  // Never read while decoding: every type is decoded when first read, later.
  const kept = decodeBatch(batch);
  assert.deepEqual(kept.map((e) => e.type), types);
  assert.ok(kept.every((e) => e instanceof Event));
  assert.deepEqual(JSON.parse(JSON.stringify(kept[1])).type, 'Ünïcode/🙂');
  assert.ok(Object.keys(kept[1]).includes('type'), 'a read type is an own field');
  // Read from the third event on: the decoder decodes it with the event from then on.
  const seen = [];
  forEachEvent(batch, (event) => {
    const decoded = Object.hasOwn(event, 'type');
    const read = event.position >= 3 ? event.type : undefined;
    seen.push({ decoded, read, own: Object.hasOwn(event, 'type'), event });
  });
  assert.deepEqual(seen.map((s) => s.decoded), [false, false, false, true, true]);
  assert.deepEqual(seen.map((s) => s.read), [undefined, undefined, 'T', '', 'Shipped']);
  assert.deepEqual(seen.map((s) => s.own), [false, false, true, true, true]);
  assert.ok(seen.every((s) => s.event instanceof Event));
  assert.deepEqual(seen.map((s) => s.event.type), types);
});

test('a malformed batch is refused, not misread', () => {
  const frame = encodeEvent({ position: 1, revision: 0, recordedAt: 0, id, stream: 's', type: 't', data: '{}' });
  assert.throws(() => decodeBatch(frame.subarray(0, frame.length - 1)), FrameError);
  assert.throws(() => decodeBatch(frame.subarray(0, 2)), FrameError);
});

test('subscriptions select by source and type', () => {
  const all = Subscription.all();
  assert.ok(all.matches('order-1', 'X') && all.matches('x', 'Y'));
  const orders = Subscription.categories(['order']).ofTypes(['OrderPlaced']);
  assert.ok(orders.matches('order-1', 'OrderPlaced'));
  assert.ok(!orders.matches('order-1', 'ItemAdded'));
  assert.ok(!orders.matches('user-1', 'OrderPlaced'));
  assert.ok(!orders.matches('order', 'OrderPlaced'), 'no category without a dash');
  const mixed = new Subscription(['user-1'], ['order']);
  assert.ok(mixed.matches('user-1', 'A') && mixed.matches('order-9', 'B'));
  assert.ok(!mixed.matches('user-2', 'A'));
});

class Counting extends MapBackend {
  constructor() {
    super();
    this.calls = 0;
  }
  get(key) {
    this.calls++;
    return super.get(key);
  }
  put(key, value) {
    this.calls++;
    super.put(key, value);
  }
  delete(key) {
    this.calls++;
    super.delete(key);
  }
}

test('a key updated a thousand times in a batch is read once and written once', () => {
  const backend = new Counting();
  const view = new View(backend);
  for (let i = 0; i < 1000; i++) view.update('c', (c) => (c.n = (c.n ?? 0) + 1));
  view.flush();
  assert.equal(new TextDecoder().decode(backend.get('c')), '{"n":1000}');
  assert.equal(backend.calls, 3, 'one get, one put (and the read above)');
});

test('reads see earlier writes and deletes of the same batch', () => {
  const backend = new MapBackend([['a', new TextEncoder().encode('{"n":1}')]]);
  const view = new View(backend);
  assert.deepEqual(view.get('a'), { n: 1 });
  view.delete('a');
  assert.equal(view.get('a'), undefined);
  assert.equal(view.has('a'), false);
  view.putBytes('b', new TextEncoder().encode('{"n":5}'));
  assert.equal(view.updateExisting('b', (c) => c.n), 5);
  assert.equal(view.updateExisting('z', (c) => c.n), undefined);
  view.flush();
  assert.equal(backend.get('a'), undefined);
  assert.equal(new TextDecoder().decode(backend.get('b')), '{"n":5}');
  assert.equal(backend.get('z'), undefined);
});

test('only what a batch changed is written: read, edited, put, put as bytes, deleted', () => {
  const encode = (text) => new TextEncoder().encode(text);
  const backend = new MapBackend([
    ['read', encode('{"n":1}')],
    ['edited', encode('{"n":1}')],
    ['raw', encode('{"n":1}')],
    ['gone', encode('{"n":1}')],
  ]);
  const view = new View(backend);
  assert.deepEqual(view.get('read'), { n: 1 });
  assert.equal(view.has('read'), true);
  view.edit('edited').n += 1;
  view.put('null', null);
  assert.equal(view.has('null'), true, 'a JSON null is a document');
  assert.equal(view.get('null'), null);
  view.putBytes('raw', encode('{ "n" : 7 }'));
  assert.deepEqual(view.getBytes('raw'), encode('{ "n" : 7 }'), 'bytes put stay as they were put');
  view.delete('gone');
  assert.equal(view.has('gone'), false);
  view.edit('gone', () => ({ again: true }));
  view.flush();
  const text = (key) => new TextDecoder().decode(backend.get(key));
  assert.deepEqual(
    [...backend.documents.keys()].sort(),
    ['edited', 'gone', 'null', 'raw', 'read'],
  );
  assert.equal(text('read'), '{"n":1}');
  assert.equal(text('edited'), '{"n":2}');
  assert.equal(text('null'), 'null');
  assert.equal(text('raw'), '{ "n" : 7 }');
  assert.equal(text('gone'), '{"again":true}');

  // A document read and left alone is not written again.
  const writes = [];
  const watched = new View({ get: (key) => backend.get(key), writeMany: (changes) => writes.push(changes) });
  watched.get('read');
  watched.has('edited');
  watched.flush();
  assert.equal(writes.length, 0);
});

test('a document that is not JSON is reported with its key', () => {
  const view = new View(new MapBackend([['bad', new TextEncoder().encode('nope')]]));
  assert.throws(() => view.get('bad'), /document "bad" is not JSON/);
  assert.throws(() => view.put('k', undefined), /use delete/);
});

const counter = defineProjection({
  subscription: Subscription.categories(['order']),
  apply(view, event) {
    if (event.type === 'Bad') throw new Error('no bad events');
    view.update(event.stream, (c) => {
      c.events = (c.events ?? 0) + 1;
      c.random = Math.random();
    });
  },
});

test('the harness applies only subscribed events and names a refused one', () => {
  const run = new Harness(counter);
  run.append('order-1', 'OrderPlaced', {});
  run.append('user-1', 'Registered', {});
  assert.equal(run.document('order-1').events, 1);
  assert.equal(run.document('user-1'), undefined);
  assert.throws(() => run.append('order-1', 'Bad', {}), /Bad event at position 3 \(stream order-1\): Error: no bad events/);
  assert.equal(run.document('order-1').events, 1, 'the refused batch wrote nothing');
});

test('batch size changes nothing, Math.random included', () => {
  const whole = new Harness(counter);
  const pieces = new Harness(counter);
  for (let n = 0; n < 50; n++) {
    whole.record(`order-${n % 7}`, 'E', { n });
    pieces.record(`order-${n % 7}`, 'E', { n });
  }
  whole.catchUp();
  pieces.catchUp(3);
  assert.deepEqual(whole.documents(), pieces.documents());
  assert.notEqual(whole.document('order-1').random, whole.document('order-2').random);
});

test('defineProjection refuses what is not a projection', () => {
  assert.throws(() => defineProjection({}), /apply/);
  assert.throws(() => defineProjection({ subscription: { streams: [] }, apply() {} }), /Subscription/);
});

test('a batch is written in one writeMany call, or key by key to a backend without it', () => {
  const changesOf = (backend) => {
    const view = new View(backend);
    view.put('a', { n: 1 });
    view.put('ключ/%', ['é']);
    view.putBytes('raw', new Uint8Array([1, 2]));
    view.putBytes('empty', new Uint8Array(0));
    view.delete('old');
    view.get('untouched');
    view.flush();
  };
  const calls = [];
  const batched = new MapBackend([['old', new Uint8Array([9])], ['untouched', new TextEncoder().encode('1')]]);
  const writeMany = batched.writeMany.bind(batched);
  batched.writeMany = (changes) => {
    calls.push(changes.byteLength);
    writeMany(changes);
  };
  changesOf(batched);
  assert.equal(calls.length, 1);
  const plain = new MapBackend([['old', new Uint8Array([9])], ['untouched', new TextEncoder().encode('1')]]);
  plain.writeMany = undefined;
  changesOf(plain);
  assert.deepEqual([...batched.documents].sort(), [...plain.documents].sort());
  assert.deepEqual([...batched.documents.keys()].sort(), ['a', 'empty', 'raw', 'untouched', 'ключ/%']);
  assert.equal(new TextDecoder().decode(batched.documents.get('ключ/%')), '["é"]');
  assert.throws(() => new MapBackend().writeMany(new Uint8Array([1, 0, 0, 0])), /truncated/);
});
