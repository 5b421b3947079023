//! SIGKILL at random moments under mixed load: 16 appending clients, the three example
//! projections following, a blue/green rebuild under way, an SSE reader. After each kill the
//! data directory is checked as the next start finds it: every append that got a 2xx is in
//! the log once, at its position; each serving view (the storage `CURRENT` names) equals a
//! native run of its projection over the log up to its checkpoint; and after the restart's
//! reconciliation no other storage is left.
//!
//! 30 kills here; `scripts/kill-loop.sh 100` runs the same test with more
//! (`PROJECTOR_KILLS`), in release.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use projector::log::{Direction, Log, Source};
use projector::views::ViewDir;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::{EXAMPLES, LoggedEvent, Server, Sse, client, native_view};

/// An append that got a 2xx: its events' ids, and where the server said they landed.
struct Acked {
    ids: Vec<Uuid>,
    first_position: u64,
}

#[derive(Default)]
struct Totals {
    kills: usize,
    acked_appends: usize,
    acked_events: usize,
    views: usize,
    documents: usize,
}

fn random(below: u64) -> u64 {
    (Uuid::new_v4().as_u128() % below as u128) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_loses_nothing_and_views_match_native_runs() {
    let kills: usize = std::env::var("PROJECTOR_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let mut totals = Totals::default();
    for round in 0..kills {
        let server = Server::start(dir.path());
        assert_no_orphan_storage(dir.path());
        let load = start_load(&server, round, acked.clone());
        // An operator's rebuild of one of the examples, under way when the kill comes (or
        // swapped in already, for a short log).
        let name = EXAMPLES[round % EXAMPLES.len()];
        let rebuild = client()
            .post(server.url(&format!("/projections/{name}/rebuild")))
            .send()
            .await
            .unwrap();
        assert!(
            [StatusCode::ACCEPTED, StatusCode::CONFLICT].contains(&rebuild.status()),
            "{}",
            rebuild.status()
        );
        tokio::time::sleep(Duration::from_millis(100 + random(1200))).await;
        server.kill();
        for task in load {
            task.abort();
            let _ = task.await;
        }
        totals.kills += 1;
        let dir = dir.path().to_owned();
        let acked = acked.clone();
        let checked = tokio::task::spawn_blocking(move || check(&dir, &acked.lock().unwrap()))
            .await
            .unwrap();
        totals.acked_appends = checked.acked_appends;
        totals.acked_events = checked.acked_events;
        totals.views += checked.views;
        totals.documents += checked.documents;
    }
    // The last reconciliation, too.
    let server = Server::start(dir.path());
    assert_no_orphan_storage(dir.path());
    server.terminate();
    println!(
        "{} kills; {} acknowledged appends ({} events) checked after the last; \
         {} views ({} documents) compared with native runs",
        totals.kills, totals.acked_appends, totals.acked_events, totals.views, totals.documents
    );
    assert!(totals.acked_appends > 0);
}

/// 16 clients appending orders (placed, then items) to streams of their own, and an SSE
/// reader of `$all`; every 2xx is recorded in `acked`.
fn start_load(
    server: &Server,
    round: usize,
    acked: Arc<Mutex<Vec<Acked>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks: Vec<_> = (0..16)
        .map(|w| {
            let (client, url) = (client(), server.url("/streams/"));
            let acked = acked.clone();
            tokio::spawn(async move {
                for n in 0u64.. {
                    let order = format!("r{round}w{w}n{}", n / 4);
                    let ids: Vec<Uuid> = (0..1 + n % 3).map(|_| Uuid::new_v4()).collect();
                    let events: Vec<Value> = ids
                        .iter()
                        .enumerate()
                        .map(|(i, id)| {
                            if n % 4 == 0 && i == 0 {
                                json!({"type": "OrderPlaced", "id": id,
                                    "data": {"orderId": order, "customerId": format!("c{w}")}})
                            } else {
                                json!({"type": "ItemAdded", "id": id, "data": {"orderId": order,
                                    "sku": format!("s{i}"), "quantity": 1 + n % 5, "unitPriceCents": 125}})
                            }
                        })
                        .collect();
                    let Ok(response) = client
                        .post(format!("{url}order-{order}"))
                        .json(&events)
                        .send()
                        .await
                    else {
                        return;
                    };
                    if response.status() != StatusCode::CREATED {
                        return;
                    }
                    let Ok(body) = response.json::<Value>().await else {
                        return;
                    };
                    acked.lock().unwrap().push(Acked {
                        ids,
                        first_position: body["first_position"].as_u64().unwrap(),
                    });
                }
            })
        })
        .collect();
    let live = server.url("/streams/$all/live?from=1");
    tasks.push(tokio::spawn(async move {
        let mut sse = Sse::connect(&live, None).await;
        let mut last = 0;
        while let Some(event) = sse.next_or_end(Duration::from_secs(30)).await {
            assert!(event.id > last, "SSE ids increase");
            last = event.id;
        }
    }));
    tasks
}

struct Checked {
    acked_appends: usize,
    acked_events: usize,
    views: usize,
    documents: usize,
}

/// Checks the data directory of a killed server, as the next start will find it.
fn check(dir: &Path, acked: &[Acked]) -> Checked {
    let (log, writer) = Log::open(dir).unwrap();
    let stored = log
        .reader()
        .read(
            &Source::All,
            Some(1),
            Direction::Forward,
            usize::MAX,
            u64::MAX,
        )
        .unwrap()
        .unwrap_or_default();
    drop(log);
    writer.join();
    let mut seen = HashSet::new();
    for (n, e) in stored.iter().enumerate() {
        assert_eq!(e.position, n as u64 + 1, "positions have no gap");
        assert!(seen.insert(e.id), "event {} is stored twice", e.id);
    }
    let mut acked_events = 0;
    for append in acked {
        for (i, id) in append.ids.iter().enumerate() {
            let position = append.first_position + i as u64;
            let event = stored
                .get(position as usize - 1)
                .unwrap_or_else(|| panic!("acknowledged position {position} is lost"));
            assert_eq!(event.id, *id, "the event acknowledged at {position}");
            acked_events += 1;
        }
    }
    let events: Vec<LoggedEvent> = stored
        .iter()
        .map(|e| LoggedEvent {
            position: e.position,
            stream: e.stream.clone(),
            event_type: e.event_type.clone(),
            data: serde_json::from_slice(&e.data).unwrap(),
        })
        .collect();
    let views = ViewDir::new(&dir.join("views"));
    let mut documents = 0;
    for name in EXAMPLES {
        let current = views
            .current(name)
            .unwrap_or_else(|| panic!("{name} has no CURRENT"));
        let file = dir.join(format!("views/{name}/{current}.redb"));
        assert!(file.exists(), "CURRENT of {name} names a missing storage");
        let view = views.open(name, &current).unwrap();
        let (served, checkpoint) = view.page("", None, usize::MAX).unwrap();
        assert!(checkpoint <= events.len() as u64, "{name} is past the head");
        let served: BTreeMap<String, Value> = served
            .into_iter()
            .map(|d| (d.key, serde_json::from_slice(&d.value).unwrap()))
            .collect();
        let native = native_view(name, &events[..checkpoint as usize]);
        assert!(
            served == native,
            "{name} at {checkpoint} differs from a native run"
        );
        documents += served.len();
    }
    Checked {
        acked_appends: acked.len(),
        acked_events,
        views: EXAMPLES.len(),
        documents,
    }
}

/// After a start's reconciliation, each example keeps only the storage `CURRENT` names: a
/// rebuild the kill interrupted was of the same file, so it is not resumed.
fn assert_no_orphan_storage(dir: &Path) {
    let views = ViewDir::new(&dir.join("views"));
    for name in EXAMPLES {
        let current = views.current(name).unwrap();
        assert_eq!(views.storages(name), [current], "{name}: orphan storage");
    }
}
