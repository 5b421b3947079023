//! Example projection over the example shop (design notes, section 8): one document per
//! order and one list per customer.
//!
//! Documents:
//! - `order/<orderId>` → [`OrderSummary`]: customer, lines, total in cents, status;
//! - `customer/<customerId>/<orderId>` → [`CustomerOrder`]: the order's status and total, kept
//!   in step with the order document. A customer's list is the page of documents under the
//!   prefix `customer/<customerId>/`. One small document per order, rather than one growing
//!   document per customer, keeps each event's cost the same however many orders a customer
//!   has placed. A `/` or `%` inside an id is written `%2F` or `%25` in keys, so a prefix
//!   never reaches another customer's orders.
//!
//! Events of other types, and unknown fields, are ignored. An event of a known type whose
//! data lacks a field it needs is refused, which faults the projection at that event.

use std::borrow::Cow;

use projector_sdk::{Error, Event, Projection, Subscription, View};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Placed,
    Shipped,
    Cancelled,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    pub sku: String,
    pub quantity: u64,
    pub unit_price_cents: u64,
}

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OrderSummary {
    pub order_id: String,
    pub customer_id: Option<String>,
    pub status: Status,
    pub lines: Vec<Line>,
    pub total_cents: u64,
    pub cancel_reason: Option<String>,
    /// Position of the last event applied to this order.
    pub last_position: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CustomerOrder {
    pub order_id: String,
    pub status: Status,
    pub total_cents: u64,
}

// Event payloads borrow their strings from the event where JSON allows (no escapes), which
// saves an allocation per field per event.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderPlaced<'a> {
    #[serde(borrow)]
    order_id: Cow<'a, str>,
    #[serde(borrow)]
    customer_id: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemAdded<'a> {
    #[serde(borrow)]
    order_id: Cow<'a, str>,
    #[serde(borrow)]
    sku: Cow<'a, str>,
    quantity: u64,
    unit_price_cents: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemRemoved<'a> {
    #[serde(borrow)]
    order_id: Cow<'a, str>,
    #[serde(borrow)]
    sku: Cow<'a, str>,
    quantity: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderShipped<'a> {
    #[serde(borrow)]
    order_id: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderCancelled<'a> {
    #[serde(borrow)]
    order_id: Cow<'a, str>,
    #[serde(borrow)]
    reason: Cow<'a, str>,
}

pub struct OrderSummaryProjection;

impl Projection for OrderSummaryProjection {
    fn subscription() -> Subscription {
        Subscription::categories(["order"]).event_types([
            "OrderPlaced",
            "ItemAdded",
            "ItemRemoved",
            "OrderShipped",
            "OrderCancelled",
        ])
    }

    fn apply(view: &mut View, event: &Event) -> Result<(), Error> {
        let Some(change) = Change::of(event)? else {
            return Ok(());
        };
        let order_id = change.order_id();
        let position = event.position;
        let order = view.update(
            &["order/", &segment(order_id)].concat(),
            |o: &mut OrderSummary| {
                if o.order_id != order_id {
                    o.order_id = order_id.to_owned();
                }
                change.apply(o);
                o.total_cents = o
                    .lines
                    .iter()
                    .map(|l| l.quantity * l.unit_price_cents)
                    .sum();
                o.last_position = position;
                let key = o
                    .customer_id
                    .as_deref()
                    .map(|customer_id| customer_order_key(customer_id, order_id));
                (key, o.status.clone(), o.total_cents)
            },
        )?;
        let (Some(key), status, total_cents) = order else {
            return Ok(());
        };
        view.put(
            &key,
            CustomerOrder {
                order_id: order_id.to_owned(),
                status,
                total_cents,
            },
        )
    }
}

/// The key of an order's entry in its customer's list.
pub fn customer_order_key(customer_id: &str, order_id: &str) -> String {
    ["customer/", &segment(customer_id), "/", &segment(order_id)].concat()
}

/// An id as one segment of a key.
fn segment(id: &str) -> Cow<'_, str> {
    if id.contains(['/', '%']) {
        Cow::Owned(id.replace('%', "%25").replace('/', "%2F"))
    } else {
        Cow::Borrowed(id)
    }
}

/// What an event does to its order.
enum Change<'a> {
    Placed(OrderPlaced<'a>),
    Added(ItemAdded<'a>),
    Removed(ItemRemoved<'a>),
    Shipped(OrderShipped<'a>),
    Cancelled(OrderCancelled<'a>),
}

impl<'a> Change<'a> {
    /// What an event does; `None` for other event types.
    fn of(event: &Event<'a>) -> Result<Option<Change<'a>>, Error> {
        Ok(Some(match event.event_type {
            "OrderPlaced" => Change::Placed(event.data()?),
            "ItemAdded" => Change::Added(event.data()?),
            "ItemRemoved" => Change::Removed(event.data()?),
            "OrderShipped" => Change::Shipped(event.data()?),
            "OrderCancelled" => Change::Cancelled(event.data()?),
            _ => return Ok(None),
        }))
    }

    /// The order the event is about.
    fn order_id(&self) -> &str {
        match self {
            Change::Placed(e) => &e.order_id,
            Change::Added(e) => &e.order_id,
            Change::Removed(e) => &e.order_id,
            Change::Shipped(e) => &e.order_id,
            Change::Cancelled(e) => &e.order_id,
        }
    }

    fn apply(&self, order: &mut OrderSummary) {
        match self {
            Change::Placed(e) => order.customer_id = Some(e.customer_id.as_ref().to_owned()),
            Change::Added(e) => add(order, &e.sku, e.quantity, e.unit_price_cents),
            Change::Removed(e) => remove(order, &e.sku, e.quantity),
            Change::Shipped(_) => order.status = Status::Shipped,
            Change::Cancelled(e) => {
                order.status = Status::Cancelled;
                order.cancel_reason = Some(e.reason.as_ref().to_owned());
            }
        }
    }
}

fn add(order: &mut OrderSummary, sku: &str, quantity: u64, unit_price_cents: u64) {
    match order.lines.iter_mut().find(|l| l.sku == sku) {
        Some(line) => {
            line.quantity += quantity;
            line.unit_price_cents = unit_price_cents;
        }
        None => order.lines.push(Line {
            sku: sku.to_owned(),
            quantity,
            unit_price_cents,
        }),
    }
}

fn remove(order: &mut OrderSummary, sku: &str, quantity: u64) {
    if let Some(line) = order.lines.iter_mut().find(|l| l.sku == sku) {
        line.quantity = line.quantity.saturating_sub(quantity);
    }
    order.lines.retain(|l| l.quantity > 0);
}

projector_sdk::export!(OrderSummaryProjection);

#[cfg(test)]
mod tests {
    use projector_sdk::harness::Harness;
    use serde_json::json;

    use super::*;

    fn shop() -> Harness<OrderSummaryProjection> {
        let mut run = Harness::new();
        run.append(
            "order-1",
            "OrderPlaced",
            json!({"orderId": "1", "customerId": "c-1"}),
        );
        run.append(
            "order-1",
            "ItemAdded",
            json!({"orderId": "1", "sku": "tea", "quantity": 2, "unitPriceCents": 450}),
        );
        run.append(
            "order-1",
            "ItemAdded",
            json!({"orderId": "1", "sku": "cup", "quantity": 1, "unitPriceCents": 1200, "gift": true}),
        );
        run.append(
            "order-2",
            "OrderPlaced",
            json!({"orderId": "2", "customerId": "c-1"}),
        );
        run
    }

    #[test]
    fn builds_an_order_document() {
        let mut run = shop();
        run.append(
            "order-1",
            "ItemRemoved",
            json!({"orderId": "1", "sku": "tea", "quantity": 1}),
        );
        run.append("order-1", "OrderShipped", json!({"orderId": "1"}));
        assert_eq!(
            run.document("order/1"),
            Some(json!({
                "orderId": "1", "customerId": "c-1", "status": "shipped",
                "lines": [
                    {"sku": "tea", "quantity": 1, "unitPriceCents": 450},
                    {"sku": "cup", "quantity": 1, "unitPriceCents": 1200},
                ],
                "totalCents": 1650, "cancelReason": null, "lastPosition": 6,
            }))
        );
    }

    #[test]
    fn keeps_the_customer_list_in_step() {
        let mut run = shop();
        run.append(
            "order-2",
            "OrderCancelled",
            json!({"orderId": "2", "reason": "changed mind"}),
        );
        assert_eq!(
            run.document("customer/c-1/1"),
            Some(json!({"orderId": "1", "status": "placed", "totalCents": 2100}))
        );
        assert_eq!(
            run.document("customer/c-1/2"),
            Some(json!({"orderId": "2", "status": "cancelled", "totalCents": 0}))
        );
        assert_eq!(
            run.get::<OrderSummary>("order/2")
                .unwrap()
                .cancel_reason
                .as_deref(),
            Some("changed mind")
        );
    }

    #[test]
    fn removing_a_whole_line_drops_it_and_unknown_events_are_ignored() {
        let mut run = shop();
        run.append(
            "order-1",
            "ItemRemoved",
            json!({"orderId": "1", "sku": "tea", "quantity": 5}),
        );
        run.append("order-1", "GiftWrapped", json!({"orderId": "1"}));
        run.append(
            "user-1",
            "OrderPlaced",
            json!({"orderId": "9", "customerId": "c-9"}),
        );
        let order = run.get::<OrderSummary>("order/1").unwrap();
        assert_eq!(order.lines.len(), 1);
        assert_eq!(order.total_cents, 1200);
        assert!(
            run.document("order/9").is_none(),
            "user-1 is not in category order"
        );
    }

    #[test]
    fn ids_with_slashes_stay_one_key_segment() {
        let mut run = Harness::<OrderSummaryProjection>::new();
        run.append(
            "order-x",
            "OrderPlaced",
            json!({"orderId": "7/%", "customerId": "c/1"}),
        );
        run.append(
            "order-y",
            "OrderPlaced",
            json!({"orderId": "8", "customerId": "c"}),
        );
        assert_eq!(customer_order_key("c/1", "7/%"), "customer/c%2F1/7%2F%25");
        assert!(run.document("order/7%2F%25").is_some());
        assert_eq!(
            run.document("customer/c%2F1/7%2F%25"),
            Some(json!({"orderId": "7/%", "status": "placed", "totalCents": 0}))
        );
        let under_c: Vec<&String> = run
            .view()
            .0
            .keys()
            .filter(|k| k.starts_with("customer/c/"))
            .collect();
        assert_eq!(under_c, ["customer/c/8"]);
    }

    #[test]
    fn a_known_event_without_its_fields_is_refused() {
        let mut run = shop();
        run.record(
            "order-1",
            "ItemAdded",
            json!({"orderId": "1", "sku": "tea"}),
        );
        let error = run.catch_up(10).unwrap_err();
        assert!(error.to_string().contains("quantity"), "{error}");
    }

    #[test]
    fn batch_size_does_not_change_the_view() {
        let mut whole = shop();
        let mut pieces = Harness::<OrderSummaryProjection>::new();
        for e in whole.log().to_vec() {
            pieces.record(
                &e.stream,
                &e.event_type,
                serde_json::from_slice(&e.data).unwrap(),
            );
        }
        pieces.catch_up(1).unwrap();
        whole.catch_up(usize::MAX).unwrap();
        assert_eq!(whole.view(), pieces.view());
    }
}
