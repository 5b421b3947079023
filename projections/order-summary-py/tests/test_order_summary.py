import pytest

import order_summary
from projector_sdk import ProjectionError
from projector_sdk.harness import Harness


def shop():
    run = Harness(order_summary)
    run.append("order-1", "OrderPlaced", {"orderId": "1", "customerId": "c-1"})
    run.append("order-1", "ItemAdded", {"orderId": "1", "sku": "tea", "quantity": 2, "unitPriceCents": 450})
    run.append("order-1", "ItemAdded", {"orderId": "1", "sku": "cup", "quantity": 1, "unitPriceCents": 1200, "gift": True})
    run.append("order-2", "OrderPlaced", {"orderId": "2", "customerId": "c-1"})
    return run


def test_builds_an_order_document_with_the_rust_projections_bytes():
    run = shop()
    run.append("order-1", "ItemRemoved", {"orderId": "1", "sku": "tea", "quantity": 1})
    run.append("order-1", "OrderShipped", {"orderId": "1"})
    assert run.text("order/1") == (
        '{"orderId":"1","customerId":"c-1","status":"shipped","lines":[{"sku":"tea","quantity":1,"unitPriceCents":450},'
        '{"sku":"cup","quantity":1,"unitPriceCents":1200}],"totalCents":1650,"cancelReason":null,"lastPosition":6}'
    )


def test_keeps_the_customer_list_in_step():
    run = shop()
    run.append("order-2", "OrderCancelled", {"orderId": "2", "reason": "changed mind"})
    assert run.document("customer/c-1/1") == {"orderId": "1", "status": "placed", "totalCents": 2100}
    assert run.document("customer/c-1/2") == {"orderId": "2", "status": "cancelled", "totalCents": 0}
    assert run.document("order/2")["cancelReason"] == "changed mind"


def test_ids_with_slash_and_percent_stay_one_key_segment():
    run = Harness(order_summary)
    run.append("order-x", "OrderPlaced", {"orderId": "a/b%c", "customerId": "c/1"})
    assert run.document("order/a%2Fb%25c")["orderId"] == "a/b%c"
    assert run.document("customer/c%2F1/a%2Fb%25c")["orderId"] == "a/b%c"


def test_removing_every_unit_drops_the_line():
    run = shop()
    run.append("order-1", "ItemRemoved", {"orderId": "1", "sku": "cup", "quantity": 5})
    assert run.document("order/1")["lines"] == [{"sku": "tea", "quantity": 2, "unitPriceCents": 450}]
    assert run.document("order/1")["totalCents"] == 900


def test_an_event_lacking_a_field_it_needs_is_refused_naming_the_event():
    run = shop()
    with pytest.raises(ProjectionError, match=r"ItemAdded event at position 5 \(stream order-1\): .*quantity"):
        run.append("order-1", "ItemAdded", {"orderId": "1", "sku": "tea"})


def test_other_events_and_categories_are_ignored():
    run = shop()
    run.append("order-1", "GiftWrapped", {"orderId": "1"})
    run.append("user-1", "OrderPlaced", {"orderId": "9", "customerId": "c-9"})
    assert run.document("order/9") is None
    assert run.document("order/1")["lastPosition"] == 3
