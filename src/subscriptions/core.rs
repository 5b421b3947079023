//! One subscription's delivery state, in memory: what is read from the log and not yet
//! resolved, what is in flight to which consumer, the acknowledged floor. No I/O here: the
//! [`Subscription`](super::Subscription) reads the log and makes changes durable around it.
//!
//! Invariants:
//! - every event of the source at a position in `(floor, cursor]` that the settings admit is
//!   pending, acknowledged (`acked`) or parked: none is forgotten;
//! - `floor` only grows, and every admitted event at or below it was acknowledged, skipped or
//!   parked (durably: the floor stored is never ahead of what was made durable);
//! - at most `max_in_flight` events are in flight.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::settings::{Settings, Strategy};
use super::store::{Delta, Parked};
use crate::log::{Position, RecordedEvent};
use crate::scheduler::Rate;

/// Who takes events: named by the client, or one per request or connection.
pub type ConsumerId = Arc<str>;

/// Events read ahead of the consumers beyond `max_in_flight`, at most.
pub const READ_AHEAD: usize = 1024;

/// One event handed to a consumer.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub event: Arc<RecordedEvent>,
    /// 1 for the first delivery.
    pub attempt: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    Ready,
    InFlight {
        consumer: ConsumerId,
        deadline: Instant,
    },
    /// Its acknowledgement or parking is being made durable.
    Resolving,
}

struct Pending {
    event: Arc<RecordedEvent>,
    /// Deliveries so far.
    attempts: u32,
    stage: Stage,
    /// Delivered again from the parked set (its position may be below the floor).
    replay: bool,
}

struct Consumer {
    /// Requests or connections taking events now.
    open: u32,
    last_seen: Instant,
}

/// How a resolved event ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Ack,
    Park(String),
}

/// A nack's choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NackAction {
    Retry,
    Park,
    Skip,
}

/// A set of positions being resolved: made durable by [`Delta`], then applied.
#[derive(Debug)]
pub struct Plan {
    pub resolved: Vec<(Position, Resolution)>,
    pub delta: Delta,
}

pub struct Core {
    pub settings: Settings,
    floor: Position,
    cursor: Position,
    pending: BTreeMap<Position, Pending>,
    ready: BTreeSet<Position>,
    in_flight: usize,
    acked: BTreeSet<Position>,
    parked: BTreeMap<Position, Parked>,
    consumers: HashMap<ConsumerId, Consumer>,
    pins: HashMap<String, ConsumerId>,
    /// Events resolved so far (this run), for a rate.
    resolved: u64,
    rate: Rate,
}

/// What status shows of the state.
#[derive(Clone, Debug, PartialEq)]
pub struct Counts {
    pub floor: Position,
    pub cursor: Position,
    pub in_flight: usize,
    pub ready: usize,
    pub parked: usize,
    pub consumers: usize,
    pub events_per_second: f64,
}

impl Core {
    pub fn new(
        settings: Settings,
        floor: Position,
        acked: BTreeSet<Position>,
        parked: BTreeMap<Position, Parked>,
    ) -> Self {
        Core {
            settings,
            floor,
            cursor: floor,
            pending: BTreeMap::new(),
            ready: BTreeSet::new(),
            in_flight: 0,
            acked,
            parked,
            consumers: HashMap::new(),
            pins: HashMap::new(),
            resolved: 0,
            rate: Rate::default(),
        }
    }

    pub fn cursor(&self) -> Position {
        self.cursor
    }

    /// Whether the log should be read further.
    pub fn wants_events(&self) -> bool {
        self.pending.len() < self.settings.max_in_flight as usize + READ_AHEAD
    }

    /// Takes events read from the log after the cursor; `through` is the position every event
    /// of the source up to which has now been read.
    pub fn accept(&mut self, events: Vec<RecordedEvent>, through: Position) {
        for event in events {
            let p = event.position;
            if p <= self.cursor
                || !self.settings.admits(&event.event_type)
                || self.acked.contains(&p)
                || self.parked.contains_key(&p)
            {
                continue;
            }
            self.pending.insert(
                p,
                Pending {
                    event: Arc::new(event),
                    attempts: 0,
                    stage: Stage::Ready,
                    replay: false,
                },
            );
            self.ready.insert(p);
        }
        self.cursor = self.cursor.max(through);
    }

    /// Parked events to deliver again (those not already pending).
    pub fn replay(&mut self, events: Vec<RecordedEvent>) -> usize {
        let mut added = 0;
        for event in events {
            let p = event.position;
            if !self.parked.contains_key(&p) || self.pending.contains_key(&p) {
                continue;
            }
            self.pending.insert(
                p,
                Pending {
                    event: Arc::new(event),
                    attempts: 0,
                    stage: Stage::Ready,
                    replay: true,
                },
            );
            self.ready.insert(p);
            added += 1;
        }
        added
    }

    pub fn parked(&self) -> &BTreeMap<Position, Parked> {
        &self.parked
    }

    /// A consumer starts taking events (a poll or a connection).
    pub fn enter(&mut self, consumer: &ConsumerId, now: Instant) {
        let c = self.consumers.entry(consumer.clone()).or_insert(Consumer {
            open: 0,
            last_seen: now,
        });
        c.open += 1;
        c.last_seen = now;
    }

    pub fn leave(&mut self, consumer: &ConsumerId, now: Instant) {
        if let Some(c) = self.consumers.get_mut(consumer) {
            c.open = c.open.saturating_sub(1);
            c.last_seen = now;
        }
    }

    /// A consumer stays connected while it has a request open, and for the ack timeout after
    /// its last one.
    fn connected(&self, consumer: &ConsumerId, now: Instant) -> bool {
        self.consumers.get(consumer).is_some_and(|c| {
            c.open > 0 || now.duration_since(c.last_seen) < self.settings.ack_timeout()
        })
    }

    /// Up to `max` events for `consumer`, oldest first; none while `max_in_flight` are out.
    pub fn take(&mut self, consumer: &ConsumerId, max: usize, now: Instant) -> Vec<Delivery> {
        let room = (self.settings.max_in_flight as usize).saturating_sub(self.in_flight);
        let max = max.min(room);
        let mut taken = Vec::new();
        let mut skipped_streams: Vec<&str> = Vec::new();
        let deadline = now + self.settings.ack_timeout();
        let pinned = self.settings.strategy == Strategy::Pinned;
        let mut chosen = Vec::new();
        for &p in &self.ready {
            if chosen.len() >= max {
                break;
            }
            let stream = self.pending[&p].event.stream.as_str();
            if pinned {
                if skipped_streams.contains(&stream) {
                    continue;
                }
                match self.pins.get(stream) {
                    Some(owner) if owner != consumer && self.connected(owner, now) => {
                        skipped_streams.push(stream);
                        continue;
                    }
                    _ => {}
                }
                // Per-stream order: nothing of a stream goes out while an earlier event of it
                // is with another consumer.
            }
            chosen.push(p);
        }
        for p in chosen {
            self.ready.remove(&p);
            let pending = self.pending.get_mut(&p).expect("ready events are pending");
            pending.attempts += 1;
            pending.stage = Stage::InFlight {
                consumer: consumer.clone(),
                deadline,
            };
            self.in_flight += 1;
            if pinned {
                self.pins
                    .insert(pending.event.stream.clone(), consumer.clone());
            }
            taken.push(Delivery {
                event: pending.event.clone(),
                attempt: pending.attempts,
            });
        }
        taken
    }

    /// Positions of `positions` that are not in flight (an ack or nack of them is refused).
    pub fn not_in_flight(&self, positions: &[Position]) -> Vec<Position> {
        positions
            .iter()
            .copied()
            .filter(|p| {
                !matches!(
                    self.pending.get(p).map(|e| &e.stage),
                    Some(Stage::InFlight { .. })
                )
            })
            .collect()
    }

    /// Starts resolving in-flight events (the caller checked [`Core::not_in_flight`]).
    pub fn begin(
        &mut self,
        resolutions: Vec<(Position, Resolution)>,
    ) -> Vec<(Position, Resolution)> {
        let mut begun = Vec::new();
        for (p, resolution) in resolutions {
            if let Some(pending) = self.pending.get_mut(&p)
                && matches!(pending.stage, Stage::InFlight { .. })
            {
                pending.stage = Stage::Resolving;
                self.in_flight -= 1;
                begun.push((p, resolution));
            }
        }
        begun
    }

    /// Sends in-flight events back to be delivered again; one delivered `max_deliveries`
    /// times is parked instead (returned, already begun).
    pub fn retry(&mut self, positions: &[Position], reason: &str) -> Vec<(Position, Resolution)> {
        let mut parks = Vec::new();
        for &p in positions {
            let Some(pending) = self.pending.get_mut(&p) else {
                continue;
            };
            if !matches!(pending.stage, Stage::InFlight { .. }) {
                continue;
            }
            self.in_flight -= 1;
            if pending.attempts >= self.settings.max_deliveries {
                pending.stage = Stage::Resolving;
                parks.push((
                    p,
                    Resolution::Park(format!("{reason} (after {} deliveries)", pending.attempts)),
                ));
            } else {
                pending.stage = Stage::Ready;
                self.ready.insert(p);
            }
        }
        parks
    }

    /// In-flight events past their deadline go back to be delivered again (or are parked:
    /// returned, already begun); how many were late. Consumers gone for longer than the ack
    /// timeout lose their pins.
    pub fn expire(&mut self, now: Instant) -> (usize, Vec<(Position, Resolution)>) {
        let late: Vec<Position> = self
            .pending
            .iter()
            .filter(
                |(_, e)| matches!(&e.stage, Stage::InFlight { deadline, .. } if *deadline <= now),
            )
            .map(|(p, _)| *p)
            .collect();
        let timeout = self.settings.ack_timeout_ms;
        let parks = self.retry(&late, &format!("not acknowledged within {timeout} ms"));
        let gone: Vec<ConsumerId> = self
            .consumers
            .iter()
            .filter(|(_, c)| {
                c.open == 0 && now.duration_since(c.last_seen) >= self.settings.ack_timeout()
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.consumers.remove(&id);
            self.pins.retain(|_, owner| *owner != id);
        }
        (late.len(), parks)
    }

    /// What making `resolving` durable takes: the floor it allows, the acknowledgements
    /// above it, the parks. Nothing changes until [`Core::apply`].
    pub fn plan(&self, resolving: Vec<(Position, Resolution)>) -> Plan {
        let ending: BTreeSet<Position> = resolving.iter().map(|(p, _)| *p).collect();
        let floor = self
            .pending
            .iter()
            .find(|(p, e)| !e.replay && !ending.contains(p))
            .map_or(self.cursor, |(p, _)| p - 1)
            .max(self.floor);
        let mut delta = Delta::default();
        if floor != self.floor {
            delta.floor = Some(floor);
        }
        delta.unack = self.acked.range(..=floor).copied().collect();
        let now = now_millis();
        for (p, resolution) in &resolving {
            let pending = &self.pending[p];
            match resolution {
                Resolution::Ack if pending.replay => delta.unpark.push(*p),
                Resolution::Ack if *p > floor => delta.ack.push(*p),
                Resolution::Ack => {}
                Resolution::Park(reason) => delta.park.push((
                    *p,
                    Parked {
                        reason: reason.clone(),
                        deliveries: pending.attempts,
                        parked_at: now,
                    },
                )),
            }
        }
        Plan {
            resolved: resolving,
            delta,
        }
    }

    /// Applies a plan made durable.
    pub fn apply(&mut self, plan: &Plan) {
        for (p, _) in &plan.resolved {
            self.pending.remove(p);
        }
        for p in &plan.delta.unpark {
            self.parked.remove(p);
        }
        for (p, record) in &plan.delta.park {
            self.parked.insert(*p, record.clone());
        }
        if let Some(floor) = plan.delta.floor {
            self.floor = floor;
        }
        for p in &plan.delta.unack {
            self.acked.remove(p);
        }
        self.acked.extend(plan.delta.ack.iter().copied());
        self.resolved += plan.resolved.len() as u64;
        self.rate.record(self.resolved);
    }

    /// A plan that could not be made durable: its events go back to be delivered again.
    pub fn abandon(&mut self, plan: &Plan) {
        for (p, _) in &plan.resolved {
            if let Some(pending) = self.pending.get_mut(p) {
                pending.stage = Stage::Ready;
                self.ready.insert(*p);
            }
        }
    }

    pub fn counts(&self, now: Instant) -> Counts {
        Counts {
            floor: self.floor,
            cursor: self.cursor,
            in_flight: self.in_flight,
            ready: self.ready.len(),
            parked: self.parked.len(),
            consumers: self
                .consumers
                .keys()
                .filter(|c| self.connected(c, now))
                .count(),
            events_per_second: self.rate.per_second(),
        }
    }
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long to wait at most before looking at deadlines again.
pub const TICK: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests;
