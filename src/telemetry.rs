//! Prometheus metrics (`GET /metrics`), through the `metrics` facade and its Prometheus
//! exporter. Counters and histograms are recorded where things happen (the HTTP layer, the log
//! writer, the projection workers); gauges of state (heads, positions, lags, states, rebuild
//! progress, live subscriptions) are set from the tenants at each scrape, so they are never
//! stale, and a projection that is gone drops out of the output.
//!
//! The names are listed in README.md; every per-projection series carries `account`,
//! `projection` and `role` (`serving` or `building`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use metrics::{Counter, Histogram};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use crate::scheduler::{State, Status};
use crate::tenants::Tenants;

/// Latency buckets, in seconds: from a cached read to a slow fsync under load.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Events per group commit.
const EVENTS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0, 16384.0, 50000.0,
];

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the process-wide recorder; `None` if one is installed already (a second server in
/// one process, as in unit tests, then records into the first one's).
pub fn install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .ok()?
        .set_buckets_for_metric(
            Matcher::Full("projector_group_commit_events".into()),
            EVENTS,
        )
        .ok()?
        // Gauges are set at every scrape: one that was not is of a projection that is gone.
        .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_millis(1)));
    let handle = builder.install_recorder().ok()?;
    describe();
    // Histograms keep their samples until upkeep folds them in: without a scrape they would
    // grow with every request. The upkeep thread lives as long as the process.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        })
        .ok()?;
    Some(handle)
}

/// The exposition: scrape-time gauges set from `tenants`, then everything rendered.
pub fn render(handle: &PrometheusHandle, tenants: &Tenants) -> String {
    let mut live = 0u64;
    for tenant in tenants.all() {
        let account = tenant.account.clone();
        let head = *tenant.log.head().borrow();
        metrics::gauge!("projector_log_head_position", "account" => account.clone())
            .set(head as f64);
        live += u64::from(tenant.live_count());
        for status in tenant.projections.statuses() {
            projection_gauges(&account, &status);
        }
    }
    metrics::gauge!("projector_live_subscriptions").set(live as f64);
    handle.render()
}

fn projection_gauges(account: &str, status: &Status) {
    let labels = |role: &'static str| {
        [
            ("account", account.to_owned()),
            ("projection", status.name.clone()),
            ("role", role.to_owned()),
        ]
    };
    let serving = labels("serving");
    metrics::gauge!("projector_projection_position", &serving).set(status.position as f64);
    metrics::gauge!("projector_projection_lag_events", &serving).set(status.lag as f64);
    state_gauges(&serving, status.state);
    if let Some(rebuild) = &status.rebuild {
        let building = labels("building");
        metrics::gauge!("projector_projection_position", &building).set(rebuild.position as f64);
        metrics::gauge!("projector_projection_lag_events", &building).set(rebuild.lag as f64);
        state_gauges(&building, rebuild.state);
        let ratio = if rebuild.head == 0 {
            1.0
        } else {
            rebuild.position as f64 / rebuild.head as f64
        };
        let projection = [
            ("account", account.to_owned()),
            ("projection", status.name.clone()),
        ];
        metrics::gauge!("projector_rebuild_progress_ratio", &projection).set(ratio.min(1.0));
    }
}

/// One gauge per state, 1 for the current one.
fn state_gauges(labels: &[(&'static str, String); 3], current: State) {
    for (state, name) in [
        (State::Running, "running"),
        (State::CaughtUp, "caught_up"),
        (State::Faulted, "faulted"),
        (State::Paused, "paused"),
        (State::Invalid, "invalid"),
        (State::Compiling, "compiling"),
    ] {
        let mut with_state: Vec<(&'static str, String)> = labels.to_vec();
        with_state.push(("state", name.to_owned()));
        metrics::gauge!("projector_projection_state", &with_state).set(if state == current {
            1.0
        } else {
            0.0
        });
    }
}

/// What a finished append records: its outcome, its events and its time to a durable answer.
/// The handles are looked up once per thread and outcome, as in [`http_request`].
pub fn append(outcome: &'static str, events: u64, elapsed: Duration) {
    thread_local! {
        static HANDLES: RefCell<HashMap<&'static str, (Counter, Counter, Histogram)>> =
            RefCell::new(HashMap::new());
    }
    HANDLES.with_borrow_mut(|handles| {
        let (appends, appended, duration) = handles.entry(outcome).or_insert_with(|| {
            (
                metrics::counter!("projector_appends_total", "outcome" => outcome),
                metrics::counter!("projector_append_events_total", "outcome" => outcome),
                metrics::histogram!("projector_append_duration_seconds", "outcome" => outcome),
            )
        });
        appends.increment(1);
        appended.increment(events);
        duration.record(elapsed.as_secs_f64());
    });
}

/// A group commit of `events` events.
pub fn group_commit(events: usize) {
    metrics::histogram!("projector_group_commit_events").record(events as f64);
}

/// An HTTP request answered. Its counter and histogram are looked up once per thread and
/// (route, method, status), then kept: a request costs two atomic updates and no allocation.
pub fn http_request(route: &str, method: &Method, status: StatusCode, elapsed: Duration) {
    type Handles = HashMap<String, HashMap<(Method, StatusCode), (Counter, Histogram)>>;
    thread_local! {
        static HANDLES: RefCell<Handles> = RefCell::new(HashMap::new());
    }
    HANDLES.with_borrow_mut(|handles| {
        if !handles.contains_key(route) {
            handles.insert(route.to_owned(), HashMap::new());
        }
        let by_answer = handles.get_mut(route).expect("inserted above");
        let (counter, histogram) = by_answer
            .entry((method.clone(), status))
            .or_insert_with(|| {
                let labels = [
                    ("route", route.to_owned()),
                    ("method", method.as_str().to_owned()),
                    ("status", status.as_u16().to_string()),
                ];
                (
                    metrics::counter!("projector_http_requests_total", &labels),
                    metrics::histogram!("projector_http_request_duration_seconds", &labels),
                )
            });
        counter.increment(1);
        histogram.record(elapsed.as_secs_f64());
    });
}

/// The labels of one projection version's series.
#[derive(Clone)]
pub struct ProjectionLabels(pub [(&'static str, String); 3]);

impl ProjectionLabels {
    pub fn new(account: &str, projection: &str, building: bool) -> Self {
        let role = if building { "building" } else { "serving" };
        ProjectionLabels([
            ("account", account.to_owned()),
            ("projection", projection.to_owned()),
            ("role", role.to_owned()),
        ])
    }

    /// A batch applied: its events, its time in the guest, the fuel it used.
    pub fn batch(&self, events: usize, elapsed: Duration, fuel: u64) {
        metrics::counter!("projector_projection_events_total", &self.0).increment(events as u64);
        metrics::histogram!("projector_projection_batch_duration_seconds", &self.0)
            .record(elapsed.as_secs_f64());
        metrics::counter!("projector_projection_fuel_consumed_total", &self.0).increment(fuel);
    }

    /// A fault of `kind` (snake case, as the status shows it).
    pub fn fault(&self, kind: &str) {
        let mut labels: Vec<(&'static str, String)> = self.0.to_vec();
        labels.push(("kind", kind.to_owned()));
        metrics::counter!("projector_projection_faults_total", &labels).increment(1);
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "projector_log_head_position",
        "Position of the last durable event of each account's log"
    );
    describe_counter!(
        "projector_appends_total",
        "Append requests answered, by outcome"
    );
    describe_counter!(
        "projector_append_events_total",
        "Events in append requests answered, by outcome"
    );
    describe_histogram!(
        "projector_append_duration_seconds",
        Unit::Seconds,
        "Time from an append request to its durable answer"
    );
    describe_histogram!(
        "projector_group_commit_events",
        "Events written by one group commit (one fsync)"
    );
    describe_counter!(
        "projector_http_requests_total",
        "HTTP requests answered, by route template, method and status"
    );
    describe_histogram!(
        "projector_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request (to its headers, for a stream)"
    );
    describe_gauge!(
        "projector_live_subscriptions",
        "Live (SSE) subscriptions open"
    );
    describe_gauge!(
        "projector_projection_position",
        "Last position a projection version applied"
    );
    describe_gauge!(
        "projector_projection_lag_events",
        "Events between a projection version's position and the head"
    );
    describe_counter!(
        "projector_projection_events_total",
        "Events a projection version applied (filtered-out events not counted)"
    );
    describe_histogram!(
        "projector_projection_batch_duration_seconds",
        Unit::Seconds,
        "Time a batch spent in the guest's apply"
    );
    describe_counter!(
        "projector_projection_fuel_consumed_total",
        "Fuel (about one wasm instruction per unit) a projection version used"
    );
    describe_counter!(
        "projector_projection_faults_total",
        "Faults of a projection version, by kind"
    );
    describe_gauge!(
        "projector_projection_state",
        "1 for a projection version's current state, 0 for the others"
    );
    describe_gauge!(
        "projector_rebuild_progress_ratio",
        "A rebuilding version's position over the head (1 at the swap)"
    );
}
