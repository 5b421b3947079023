"""Example projection over the example shop, in Python: one document per order and one small
document per order in its customer's list, byte for byte what the Rust ``order-summary``
writes (projections/order-summary).

- ``order/<orderId>`` -> ``{orderId, customerId, status, lines, totalCents, cancelReason,
  lastPosition}``
- ``customer/<customerId>/<orderId>`` -> ``{orderId, status, totalCents}``

A ``/`` or ``%`` inside an id is written ``%2F`` or ``%25`` in keys, so a prefix never reaches
another customer's orders. Events of other types, and unknown fields, are ignored; an event of
a known type whose data lacks a field it needs is refused (the projection faults there).
"""

from projector_sdk import ProjectionError, Subscription

# The fields each event type needs, and what they must be.
FIELDS = {
    "OrderPlaced": {"orderId": str, "customerId": str},
    "ItemAdded": {"orderId": str, "sku": str, "quantity": int, "unitPriceCents": int},
    "ItemRemoved": {"orderId": str, "sku": str, "quantity": int},
    "OrderShipped": {"orderId": str},
    "OrderCancelled": {"orderId": str, "reason": str},
}

subscription = Subscription(categories=["order"], event_types=list(FIELDS))


def apply(view, event):
    fields = FIELDS.get(event.type)
    if fields is None:
        return
    data = checked(event, fields)
    order_id = data["orderId"]

    def change_order(order):
        if order["orderId"] != order_id:
            order["orderId"] = order_id
        change(order, event.type, data)
        order["totalCents"] = sum(line["quantity"] * line["unitPriceCents"] for line in order["lines"])
        order["lastPosition"] = event.position
        customer = order["customerId"]
        key = None if customer is None else customer_order_key(customer, order_id)
        return key, order["status"], order["totalCents"]

    key, status, total_cents = view.update("order/" + segment(order_id), change_order, new_order)
    if key is not None:
        view.put(key, {"orderId": order_id, "status": status, "totalCents": total_cents})


def new_order():
    """An order before its first event: the fields in the order the Rust projection writes them."""
    return {
        "orderId": "",
        "customerId": None,
        "status": "placed",
        "lines": [],
        "totalCents": 0,
        "cancelReason": None,
        "lastPosition": 0,
    }


def change(order, event_type, data):
    if event_type == "OrderPlaced":
        order["customerId"] = data["customerId"]
    elif event_type == "ItemAdded":
        line = next((line for line in order["lines"] if line["sku"] == data["sku"]), None)
        if line is not None:
            line["quantity"] += data["quantity"]
            line["unitPriceCents"] = data["unitPriceCents"]
        else:
            order["lines"].append(
                {"sku": data["sku"], "quantity": data["quantity"], "unitPriceCents": data["unitPriceCents"]}
            )
    elif event_type == "ItemRemoved":
        line = next((line for line in order["lines"] if line["sku"] == data["sku"]), None)
        if line is not None:
            line["quantity"] = max(0, line["quantity"] - data["quantity"])
        order["lines"] = [line for line in order["lines"] if line["quantity"] > 0]
    elif event_type == "OrderShipped":
        order["status"] = "shipped"
    elif event_type == "OrderCancelled":
        order["status"] = "cancelled"
        order["cancelReason"] = data["reason"]


def checked(event, fields):
    """The event's data, refused unless every field it needs is there with the right kind."""
    data = event.data
    if not isinstance(data, dict):
        raise ProjectionError(f"{event.type} data must be an object")
    for field, kind in fields.items():
        value = data.get(field)
        if kind is str:
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64
        if not ok:
            what = "a string" if kind is str else "a whole number >= 0"
            raise ProjectionError(f"{event.type} event has unexpected data: {field} must be {what}")
    return data


def customer_order_key(customer_id, order_id):
    """The key of an order's entry in its customer's list."""
    return f"customer/{segment(customer_id)}/{segment(order_id)}"


def segment(id_):
    """An id as one segment of a key."""
    if "/" in id_ or "%" in id_:
        return id_.replace("%", "%25").replace("/", "%2F")
    return id_
