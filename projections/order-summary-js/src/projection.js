// Example projection over the example shop, in JavaScript: one document per order and one
// small document per order in its customer's list, byte for byte what the Rust
// `order-summary` writes (projections/order-summary).
//
// - `order/<orderId>` -> { orderId, customerId, status, lines, totalCents, cancelReason,
//   lastPosition }
// - `customer/<customerId>/<orderId>` -> { orderId, status, totalCents }
//
// A `/` or `%` inside an id is written `%2F` or `%25` in keys, so a prefix never reaches
// another customer's orders. Events of other types, and unknown fields, are ignored; an event
// of a known type whose data lacks a field it needs is refused (the projection faults there).

import { defineProjection, ProjectionError, Subscription } from '@projector/sdk';

const TYPES = ['OrderPlaced', 'ItemAdded', 'ItemRemoved', 'OrderShipped', 'OrderCancelled'];

// The fields each event type needs, and what they must be.
const FIELDS = {
  OrderPlaced: { orderId: 'string', customerId: 'string' },
  ItemAdded: { orderId: 'string', sku: 'string', quantity: 'count', unitPriceCents: 'count' },
  ItemRemoved: { orderId: 'string', sku: 'string', quantity: 'count' },
  OrderShipped: { orderId: 'string' },
  OrderCancelled: { orderId: 'string', reason: 'string' },
};

export default defineProjection({
  subscription: Subscription.categories(['order']).ofTypes(TYPES),

  apply(view, event) {
    const fields = FIELDS[event.type];
    if (fields === undefined) return;
    const data = checked(event, fields);
    const orderId = data.orderId;
    const [key, status, totalCents] = view.update(
      `order/${segment(orderId)}`,
      (order) => {
        if (order.orderId !== orderId) order.orderId = orderId;
        change(order, event.type, data);
        order.totalCents = order.lines.reduce((sum, l) => sum + l.quantity * l.unitPriceCents, 0);
        order.lastPosition = event.position;
        const key = order.customerId === null ? null : customerOrderKey(order.customerId, orderId);
        return [key, order.status, order.totalCents];
      },
      newOrder,
    );
    if (key !== null) view.put(key, { orderId, status, totalCents });
  },
});

/** An order before its first event: the fields in the order the Rust projection writes them. */
function newOrder() {
  return { orderId: '', customerId: null, status: 'placed', lines: [], totalCents: 0, cancelReason: null, lastPosition: 0 };
}

function change(order, type, data) {
  switch (type) {
    case 'OrderPlaced':
      order.customerId = data.customerId;
      break;
    case 'ItemAdded': {
      const line = order.lines.find((l) => l.sku === data.sku);
      if (line) {
        line.quantity += data.quantity;
        line.unitPriceCents = data.unitPriceCents;
      } else {
        order.lines.push({ sku: data.sku, quantity: data.quantity, unitPriceCents: data.unitPriceCents });
      }
      break;
    }
    case 'ItemRemoved': {
      const line = order.lines.find((l) => l.sku === data.sku);
      if (line) line.quantity = Math.max(0, line.quantity - data.quantity);
      order.lines = order.lines.filter((l) => l.quantity > 0);
      break;
    }
    case 'OrderShipped':
      order.status = 'shipped';
      break;
    case 'OrderCancelled':
      order.status = 'cancelled';
      order.cancelReason = data.reason;
      break;
  }
}

/** The event's data, refused unless every field it needs is there with the right kind. */
function checked(event, fields) {
  const data = event.data;
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new ProjectionError(`${event.type} data must be an object`);
  }
  for (const [field, kind] of Object.entries(fields)) {
    const value = data[field];
    const ok = kind === 'string' ? typeof value === 'string' : Number.isSafeInteger(value) && value >= 0;
    if (!ok) {
      throw new ProjectionError(`${event.type} event has unexpected data: ${field} must be ${kind === 'string' ? 'a string' : 'a whole number >= 0'}`);
    }
  }
  return data;
}

/** The key of an order's entry in its customer's list. */
export function customerOrderKey(customerId, orderId) {
  return `customer/${segment(customerId)}/${segment(orderId)}`;
}

/** An id as one segment of a key. */
function segment(id) {
  return id.includes('/') || id.includes('%') ? id.replaceAll('%', '%25').replaceAll('/', '%2F') : id;
}
