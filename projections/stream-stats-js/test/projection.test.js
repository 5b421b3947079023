import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Harness } from '@projector/sdk/harness';
import streamStats from '../src/projection.js';

test('counts per stream and in total', () => {
  const run = new Harness(streamStats);
  for (const stream of ['order-1', 'order-2', 'order-1', 'user-7']) run.append(stream, 'Anything', {});
  assert.equal(run.text('stream/order-1'), '{"events":2,"lastPosition":3,"lastRevision":1}');
  assert.equal(run.text('total'), '{"events":4,"streams":3,"lastPosition":4}');
});

test('batch size does not change the view', () => {
  const whole = new Harness(streamStats);
  const pieces = new Harness(streamStats);
  for (let n = 0; n < 50; n++) {
    whole.record(`s-${n % 7}`, 'E', n);
    pieces.record(`s-${n % 7}`, 'E', n);
  }
  whole.catchUp();
  pieces.catchUp(3);
  assert.deepEqual(whole.documents(), pieces.documents());
});
