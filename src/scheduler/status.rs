//! What the API reports about a projection.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::log::Position;
use crate::runtime::FaultKind;

/// A projection's state as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Applying events; behind the head.
    Running,
    /// Has applied everything up to the head.
    CaughtUp,
    /// Stopped at an event it failed on; retried with backoff.
    Faulted,
    /// Stopped by an operator until resumed.
    Paused,
    /// Its file could not be loaded; nothing runs.
    Invalid,
    /// Its file is being compiled (a large component takes seconds); nothing runs yet.
    Compiling,
}

/// Why a projection stopped.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FaultReport {
    pub kind: FaultKind,
    /// The reason, first and alone: the guest's error, the trap's cause, or the limit hit.
    pub message: String,
    /// Where in the guest it trapped (wasm frames), when it did.
    pub backtrace: Option<String>,
    /// The event it failed on.
    pub position: Position,
    pub event_id: String,
    pub stream: String,
    /// How many times in a row this event failed.
    pub attempts: u32,
}

/// An event an operator skipped after the projection faulted on it. Kept in the view, with the
/// checkpoint that steps past it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkipRecord {
    pub position: Position,
    pub event_id: String,
    pub stream: String,
    pub kind: FaultKind,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionReport {
    pub streams: Vec<String>,
    pub categories: Vec<String>,
    pub event_types: Vec<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    pub name: String,
    pub state: State,
    /// SHA-256 of the `.wasm` the version was loaded from.
    pub version: Option<String>,
    pub position: Position,
    pub head: Position,
    pub lag: u64,
    pub events_per_second: f64,
    pub subscription: Option<SubscriptionReport>,
    pub last_error: Option<FaultReport>,
    /// Why the file's current content could not be loaded: the projection is `invalid`, or
    /// its previous version keeps running.
    pub load_error: Option<String>,
    /// Events skipped by an operator.
    pub skipped: Vec<SkipRecord>,
    /// The version rebuilding from position 0 beside this one, swapped in when it reaches the
    /// head.
    pub rebuild: Option<RebuildStatus>,
    /// SHA-256 of the file's new content while it is compiled, before it runs.
    pub compiling: Option<String>,
}

/// Progress of a version rebuilding beside the serving one.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct RebuildStatus {
    pub state: State,
    pub version: String,
    pub position: Position,
    pub head: Position,
    pub lag: u64,
    pub events_per_second: f64,
    /// Seconds until it reaches the head at the current rate; `None` while there is no rate.
    pub eta_seconds: Option<f64>,
    pub last_error: Option<FaultReport>,
}

/// Positions reached over the last few seconds, for a rate.
#[derive(Default)]
pub struct Rate {
    samples: VecDeque<(Instant, Position)>,
}

const WINDOW: Duration = Duration::from_secs(5);

impl Rate {
    pub fn record(&mut self, position: Position) {
        let now = Instant::now();
        self.samples.push_back((now, position));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Events per second over the window; 0 when idle for longer than it.
    pub fn per_second(&self) -> f64 {
        let (Some((t0, p0)), Some((t1, p1))) = (self.samples.front(), self.samples.back()) else {
            return 0.0;
        };
        let span = t1.duration_since(*t0).as_secs_f64();
        if span <= 0.0 || t1.elapsed() > WINDOW {
            return 0.0;
        }
        (p1 - p0) as f64 / span
    }
}
