//! The example shop's events, for benchmarks that need a large realistic log.
#![allow(dead_code)] // each bench uses its own part of this module

use std::path::Path;

use projector::log::{AppendRequest, ExpectedRevision, JsonPayload, Log, NewEvent, StreamName};
use serde_json::{Value, json};

/// The events of order `n`: placed, two or three items, sometimes a removal, then shipped
/// or cancelled. About five events an order.
pub fn order(n: u64) -> Vec<(&'static str, Value)> {
    let id = n.to_string();
    let mut events = vec![(
        "OrderPlaced",
        json!({"orderId": id, "customerId": format!("c-{}", n % 5000)}),
    )];
    for i in 0..2 + n % 2 {
        events.push((
            "ItemAdded",
            json!({"orderId": id, "sku": format!("sku-{}", (n + i) % 500), "quantity": 1 + i, "unitPriceCents": 199 + (n * 7 + i) % 5000}),
        ));
    }
    if n.is_multiple_of(5) {
        events.push((
            "ItemRemoved",
            json!({"orderId": id, "sku": format!("sku-{}", n % 500), "quantity": 1}),
        ));
    }
    events.push(if n.is_multiple_of(10) {
        (
            "OrderCancelled",
            json!({"orderId": id, "reason": "customer request"}),
        )
    } else {
        ("OrderShipped", json!({"orderId": id}))
    });
    events
}

/// A log built by [`build_log`].
pub struct Shop {
    /// Every event in log order, when asked for.
    pub events: Vec<(String, &'static str, Value)>,
    pub head: u64,
    pub orders: u64,
}

/// Appends orders until the log holds `total` events.
pub fn build_log(
    dir: &Path,
    total: u64,
    keep_events: bool,
    tokio: &tokio::runtime::Runtime,
) -> Shop {
    let (log, writer) = Log::open(dir).unwrap();
    let mut all = Vec::new();
    let mut head = 0;
    let mut n = 0;
    tokio.block_on(async {
        while head < total {
            // 256 orders appended concurrently, so they interleave in the log as in a shop.
            let mut pending = Vec::new();
            for _ in 0..256 {
                let stream = format!("order-{n}");
                let events: Vec<_> = order(n);
                let new: Vec<NewEvent> = events
                    .iter()
                    .map(|(t, d)| {
                        NewEvent::new(None, *t, JsonPayload::parse(&d.to_string()).unwrap(), None)
                            .unwrap()
                    })
                    .collect();
                let request = AppendRequest::new(
                    StreamName::new(stream.clone()).unwrap(),
                    ExpectedRevision::NoStream,
                    new,
                )
                .unwrap();
                let log = log.clone();
                pending.push((
                    stream,
                    events,
                    tokio::spawn(async move { log.append(request).await.unwrap() }),
                ));
                n += 1;
            }
            let mut landed = Vec::new();
            for (stream, events, task) in pending {
                landed.push((task.await.unwrap().first_position, stream, events));
            }
            landed.sort_by_key(|l| l.0);
            for (_, stream, events) in landed {
                head += events.len() as u64;
                if keep_events {
                    all.extend(events.into_iter().map(|(t, d)| (stream.clone(), t, d)));
                }
            }
        }
    });
    drop(log);
    writer.join();
    Shop {
        events: all,
        head,
        orders: n,
    }
}
