use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::*;
use crate::subscriptions::settings::{Named, StartFrom};

fn settings(strategy: Strategy) -> Settings {
    Settings {
        source: "$all".into(),
        event_types: vec![],
        from: StartFrom::Named(Named::Start),
        max_in_flight: 3,
        ack_timeout_ms: 1000,
        max_deliveries: 2,
        strategy,
    }
}

fn event(position: Position, stream: &str) -> RecordedEvent {
    RecordedEvent {
        position,
        stream: stream.into(),
        revision: 0,
        event_type: "T".into(),
        id: uuid::Uuid::from_u128(position as u128),
        recorded_at: 0,
        data: b"{}".to_vec(),
        metadata: Vec::new(),
    }
}

fn ids(d: &[Delivery]) -> Vec<Position> {
    d.iter().map(|d| d.event.position).collect()
}

fn settle(core: &mut Core, resolutions: Vec<(Position, Resolution)>) -> Plan {
    let begun = core.begin(resolutions);
    let plan = core.plan(begun);
    core.apply(&plan);
    plan
}

#[test]
fn back_pressure_floor_and_out_of_order_acks() {
    let mut core = Core::new(
        settings(Strategy::RoundRobin),
        0,
        BTreeSet::new(),
        BTreeMap::new(),
    );
    core.accept((1..=5).map(|p| event(p, "s-1")).collect(), 5);
    let a: ConsumerId = "a".into();
    let now = Instant::now();
    assert_eq!(
        ids(&core.take(&a, 10, now)),
        vec![1, 2, 3],
        "max_in_flight holds"
    );
    assert!(core.take(&a, 10, now).is_empty());
    assert_eq!(core.not_in_flight(&[2, 4]), vec![4]);
    let plan = settle(&mut core, vec![(2, Resolution::Ack)]);
    assert_eq!(plan.delta.floor, None, "1 is still out");
    assert_eq!(plan.delta.ack, vec![2]);
    let plan = settle(&mut core, vec![(1, Resolution::Ack)]);
    assert_eq!(plan.delta.floor, Some(2));
    assert_eq!(plan.delta.unack, vec![2], "2 is below the floor now");
    assert_eq!(ids(&core.take(&a, 10, now)), vec![4, 5]);
}

#[test]
fn timeouts_redeliver_then_park() {
    let mut core = Core::new(
        settings(Strategy::RoundRobin),
        0,
        BTreeSet::new(),
        BTreeMap::new(),
    );
    core.accept(vec![event(1, "s-1")], 1);
    let a: ConsumerId = "a".into();
    let t0 = Instant::now();
    assert_eq!(core.take(&a, 1, t0)[0].attempt, 1);
    assert_eq!(core.expire(t0 + Duration::from_millis(500)).0, 0);
    assert_eq!(
        core.expire(t0 + Duration::from_millis(1000)),
        (1, vec![]),
        "back to ready"
    );
    let again = core.take(&a, 1, t0 + Duration::from_millis(1001));
    assert_eq!(again[0].attempt, 2);
    let (_, parks) = core.expire(t0 + Duration::from_secs(3));
    assert_eq!(parks.len(), 1, "the second timeout parks it");
    let plan = core.plan(parks);
    assert_eq!(plan.delta.park[0].0, 1);
    assert!(plan.delta.park[0].1.reason.contains("not acknowledged"));
    assert_eq!(plan.delta.floor, Some(1));
    core.apply(&plan);
    assert_eq!(core.counts(t0).parked, 1);
    // Delivered again from the parked set; its ack unparks it.
    core.replay(vec![event(1, "s-1")]);
    assert_eq!(ids(&core.take(&a, 1, t0)), vec![1]);
    let plan = settle(&mut core, vec![(1, Resolution::Ack)]);
    assert_eq!(plan.delta.unpark, vec![1]);
    assert_eq!(core.counts(t0).parked, 0);
}

#[test]
fn restart_skips_acked_and_parked() {
    let parked = BTreeMap::from([(
        3,
        Parked {
            reason: "r".into(),
            deliveries: 1,
            parked_at: 0,
        },
    )]);
    let mut core = Core::new(
        settings(Strategy::RoundRobin),
        1,
        BTreeSet::from([2]),
        parked,
    );
    core.accept((2..=4).map(|p| event(p, "s-1")).collect(), 4);
    assert_eq!(ids(&core.take(&"a".into(), 10, Instant::now())), vec![4]);
}

#[test]
fn pinned_keeps_a_stream_with_one_consumer() {
    let mut core = Core::new(
        settings(Strategy::Pinned),
        0,
        BTreeSet::new(),
        BTreeMap::new(),
    );
    core.settings.max_in_flight = 10;
    core.accept(
        vec![event(1, "x"), event(2, "y"), event(3, "x"), event(4, "y")],
        4,
    );
    let (a, b): (ConsumerId, ConsumerId) = ("a".into(), "b".into());
    let now = Instant::now();
    core.enter(&a, now);
    core.enter(&b, now);
    assert_eq!(ids(&core.take(&a, 1, now)), vec![1]);
    assert_eq!(ids(&core.take(&b, 10, now)), vec![2, 4], "x stays with a");
    assert_eq!(ids(&core.take(&a, 10, now)), vec![3]);
}

#[test]
fn filtered_events_move_the_floor() {
    let mut s = settings(Strategy::RoundRobin);
    s.event_types = vec!["Wanted".into()];
    let mut core = Core::new(s, 0, BTreeSet::new(), BTreeMap::new());
    core.accept(vec![event(1, "s"), event(2, "s")], 10);
    let plan = core.plan(Vec::new());
    assert_eq!(plan.delta.floor, Some(10));
}
