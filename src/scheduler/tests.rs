//! Rebuild equals live: whatever the batch sizes and wherever the server stops (cleanly or
//! not), a projection's view equals the view of one uninterrupted native run of the same code
//! over the same events; a catch-up over a stored log stops at a bad event with exactly the
//! events before it committed; and a rebuild, whose batches are merged into few commits,
//! builds the same view.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use order_summary::OrderSummaryProjection;
use projector_sdk::harness::Harness;
use proptest::prelude::*;

use super::*;
use crate::log::{AppendRequest, ExpectedRevision, JsonPayload, NewEvent, StreamName};
use crate::runtime::Limits;
use crate::runtime::tests::guest;

/// One generated event: (stream number, kind, numbers for its fields).
type Spec = (u8, u8, u8);

fn event_of((stream, kind, n): Spec) -> (String, &'static str, serde_json::Value) {
    let order = format!("{}", stream % 4);
    let stream_name = if stream >= 4 {
        format!("user-{order}")
    } else {
        format!("order-{order}")
    };
    let sku = format!("sku-{}", n % 3);
    let (event_type, data) = match kind % 6 {
        0 => (
            "OrderPlaced",
            serde_json::json!({"orderId": order, "customerId": format!("c-{}", n % 2)}),
        ),
        1 => (
            "ItemAdded",
            serde_json::json!({"orderId": order, "sku": sku, "quantity": 1 + n % 4, "unitPriceCents": 100 + u64::from(n)}),
        ),
        2 => (
            "ItemRemoved",
            serde_json::json!({"orderId": order, "sku": sku, "quantity": 1 + n % 2}),
        ),
        3 => ("OrderShipped", serde_json::json!({"orderId": order})),
        4 => (
            "OrderCancelled",
            serde_json::json!({"orderId": order, "reason": format!("r{n}")}),
        ),
        _ => ("SomethingElse", serde_json::json!({"orderId": order})),
    };
    (stream_name, event_type, data)
}

fn append(
    log: &Log,
    tokio: &tokio::runtime::Runtime,
    stream: String,
    event_type: &str,
    data: &serde_json::Value,
) {
    let event = NewEvent::new(
        None,
        event_type,
        JsonPayload::parse(&data.to_string()).unwrap(),
        None,
    )
    .unwrap();
    let request = AppendRequest::new(
        StreamName::new(stream).unwrap(),
        ExpectedRevision::Any,
        vec![event],
    )
    .unwrap();
    tokio.block_on(log.append(request)).unwrap();
}

struct Node {
    projections: Projections,
}

fn start(dir: &Path, log: &Log, max_batch: usize, tokio: &tokio::runtime::Runtime) -> Node {
    let runtime = Arc::new(Runtime::new(&dir.join("cache"), Limits::default()).unwrap());
    let config = SchedulerConfig {
        projections: dir.join("deploy"),
        views: dir.join("views"),
        workers: 2,
        max_batch,
        watch: false,
        quota: None,
        account: "root".into(),
        change_retention: crate::views::feed::DEFAULT_RETENTION,
    };
    Node {
        projections: Projections::start(config, runtime, log, tokio.handle().clone()).unwrap(),
    }
}

/// A data directory with `order-summary` in its folder as `orders`, and a log.
struct Fixture {
    dir: tempfile::TempDir,
    tokio: tokio::runtime::Runtime,
    log: Log,
    _writer: crate::log::WriterHandle,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("deploy")).unwrap();
    std::fs::write(
        dir.path().join("deploy/orders.wasm"),
        guest("order_summary"),
    )
    .unwrap();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (log, _writer) = Log::open(&dir.path().join("log")).unwrap();
    Fixture {
        dir,
        tokio,
        log,
        _writer,
    }
}

/// The serving view of `orders`, every document, and its checkpoint.
fn view_of(node: &Node) -> (BTreeMap<String, Vec<u8>>, Position) {
    let (documents, checkpoint) = node
        .projections
        .view("orders")
        .unwrap()
        .page("", None, usize::MAX)
        .unwrap();
    let view = documents.into_iter().map(|d| (d.key, d.value)).collect();
    (view, checkpoint)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn interrupted_runs_build_the_same_view(
        specs in prop::collection::vec((0u8..6, 0u8..6, any::<u8>()), 1..120),
        max_batch in 1usize..40,
        stops in prop::collection::vec((0usize..120, any::<bool>()), 0..4),
    ) {
        let Fixture { dir, tokio, log, _writer } = fixture();
        let mut reference = Harness::<OrderSummaryProjection>::new();
        let mut node = Some(start(dir.path(), &log, max_batch, &tokio));
        for (i, spec) in specs.iter().enumerate() {
            let (stream, event_type, data) = event_of(*spec);
            reference.record(&stream, event_type, data.clone());
            append(&log, &tokio, stream, event_type, &data);
            for (at, clean) in &stops {
                if *at == i {
                    let stopped = node.take().unwrap();
                    if *clean {
                        stopped.projections.shutdown();
                    }
                    drop(stopped);
                    node = Some(start(dir.path(), &log, max_batch, &tokio));
                }
            }
        }
        reference.catch_up(usize::MAX).unwrap();
        let node = node.unwrap();
        let head = *log.head().borrow();
        prop_assert!(tokio.block_on(node.projections.wait_for("orders", head, Duration::from_secs(30))));
        let (view, checkpoint) = view_of(&node);
        prop_assert_eq!(checkpoint, head);
        prop_assert_eq!(&view, &reference.view().0);
        node.projections.shutdown();
    }

    /// The whole log is stored before the projection starts, so its catch-up runs many batches
    /// in a turn, each read against the batches not committed yet. An `ItemAdded` without its
    /// quantity, if any, faults it: every event before that one is committed, none after.
    /// Without one, a rebuild follows, whose batches are merged into sets.
    #[test]
    fn a_catch_up_commits_exactly_the_events_before_a_fault(
        specs in prop::collection::vec((0u8..6, 0u8..6, any::<u8>()), 1..400),
        max_batch in 1usize..24,
        bad_at in prop::option::of(0usize..400),
    ) {
        let Fixture { dir, tokio, log, _writer } = fixture();
        let mut reference = Harness::<OrderSummaryProjection>::new();
        let mut fault_at = None;
        for (i, spec) in specs.iter().enumerate() {
            if bad_at == Some(i) {
                append(&log, &tokio, "order-1".into(), "ItemAdded", &serde_json::json!({"orderId": "1", "sku": "x"}));
                fault_at = Some(*log.head().borrow());
            }
            let (stream, event_type, data) = event_of(*spec);
            if fault_at.is_none() {
                reference.record(&stream, event_type, data.clone());
            }
            append(&log, &tokio, stream, event_type, &data);
        }
        reference.catch_up(usize::MAX).unwrap();
        let head = *log.head().borrow();
        let node = start(dir.path(), &log, max_batch, &tokio);
        let expected = fault_at.map_or(head, |at| at - 1);
        if let Some(at) = fault_at {
            let deadline = Instant::now() + Duration::from_secs(30);
            while node.projections.status("orders").unwrap().state != State::Faulted {
                prop_assert!(Instant::now() < deadline, "never faulted");
                std::thread::sleep(Duration::from_millis(5));
            }
            let status = node.projections.status("orders").unwrap();
            prop_assert_eq!(status.last_error.unwrap().position, at);
        } else {
            prop_assert!(tokio.block_on(node.projections.wait_for("orders", head, Duration::from_secs(30))));
        }
        let (view, checkpoint) = view_of(&node);
        prop_assert_eq!(checkpoint, expected);
        prop_assert_eq!(&view, &reference.view().0);
        if fault_at.is_none() {
            // A rebuild merges its batches into sets that grow: it must build the same view.
            node.projections.rebuild("orders").unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while node.projections.status("orders").unwrap().rebuild.is_some() {
                prop_assert!(Instant::now() < deadline, "the rebuild was never swapped in");
                std::thread::sleep(Duration::from_millis(5));
            }
            let (rebuilt, checkpoint) = view_of(&node);
            prop_assert_eq!(checkpoint, head);
            prop_assert_eq!(&rebuilt, &reference.view().0);
        }
        node.projections.shutdown();
    }
}
