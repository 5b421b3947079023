import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Harness } from '@projector/sdk/harness';
import orderSummary from '../src/projection.js';

function shop() {
  const run = new Harness(orderSummary);
  run.append('order-1', 'OrderPlaced', { orderId: '1', customerId: 'c-1' });
  run.append('order-1', 'ItemAdded', { orderId: '1', sku: 'tea', quantity: 2, unitPriceCents: 450 });
  run.append('order-1', 'ItemAdded', { orderId: '1', sku: 'cup', quantity: 1, unitPriceCents: 1200, gift: true });
  run.append('order-2', 'OrderPlaced', { orderId: '2', customerId: 'c-1' });
  return run;
}

test('builds an order document, with the Rust projection\'s bytes', () => {
  const run = shop();
  run.append('order-1', 'ItemRemoved', { orderId: '1', sku: 'tea', quantity: 1 });
  run.append('order-1', 'OrderShipped', { orderId: '1' });
  assert.equal(
    run.text('order/1'),
    '{"orderId":"1","customerId":"c-1","status":"shipped","lines":[{"sku":"tea","quantity":1,"unitPriceCents":450},{"sku":"cup","quantity":1,"unitPriceCents":1200}],"totalCents":1650,"cancelReason":null,"lastPosition":6}',
  );
});

test('keeps the customer list in step', () => {
  const run = shop();
  run.append('order-2', 'OrderCancelled', { orderId: '2', reason: 'changed mind' });
  assert.deepEqual(run.document('customer/c-1/1'), { orderId: '1', status: 'placed', totalCents: 2100 });
  assert.deepEqual(run.document('customer/c-1/2'), { orderId: '2', status: 'cancelled', totalCents: 0 });
  assert.equal(run.document('order/2').cancelReason, 'changed mind');
});

test('ids with / and % stay one key segment', () => {
  const run = new Harness(orderSummary);
  run.append('order-x', 'OrderPlaced', { orderId: 'a/b%c', customerId: 'c/1' });
  assert.equal(run.document('order/a%2Fb%25c').orderId, 'a/b%c');
  assert.equal(run.document('customer/c%2F1/a%2Fb%25c').orderId, 'a/b%c');
});

test('removing every unit drops the line', () => {
  const run = shop();
  run.append('order-1', 'ItemRemoved', { orderId: '1', sku: 'cup', quantity: 5 });
  assert.deepEqual(run.document('order/1').lines, [{ sku: 'tea', quantity: 2, unitPriceCents: 450 }]);
  assert.equal(run.document('order/1').totalCents, 900);
});

test('an event lacking a field it needs is refused, naming the event', () => {
  const run = shop();
  assert.throws(
    () => run.append('order-1', 'ItemAdded', { orderId: '1', sku: 'tea' }),
    /ItemAdded event at position 5 \(stream order-1\): .*quantity/,
  );
});

test('other events and categories are ignored', () => {
  const run = shop();
  run.append('order-1', 'GiftWrapped', { orderId: '1' });
  run.append('user-1', 'OrderPlaced', { orderId: '9', customerId: 'c-9' });
  assert.equal(run.document('order/9'), undefined);
  assert.equal(run.document('order/1').lastPosition, 3);
});
