//! Example projection: how many events each stream has and where its last one sits, plus a
//! total over the whole log.
//!
//! Documents: `stream/<stream>` → `{"events", "lastPosition", "lastRevision"}` and `total` →
//! `{"events", "streams", "lastPosition"}`.

use projector_sdk::{Error, Event, Projection, Subscription, View};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamStats {
    pub events: u64,
    pub last_position: u64,
    pub last_revision: u64,
}

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Total {
    pub events: u64,
    pub streams: u64,
    pub last_position: u64,
}

pub struct StreamStatsProjection;

impl Projection for StreamStatsProjection {
    fn subscription() -> Subscription {
        Subscription::all()
    }

    fn apply(view: &mut View, event: &Event) -> Result<(), Error> {
        let first = view.update(
            &["stream/", event.stream].concat(),
            |s: &mut StreamStats| {
                s.events += 1;
                s.last_position = event.position;
                s.last_revision = event.revision;
                s.events == 1
            },
        )?;
        view.update("total", |t: &mut Total| {
            t.events += 1;
            t.streams += u64::from(first);
            t.last_position = event.position;
        })
    }
}

projector_sdk::export!(StreamStatsProjection);

#[cfg(test)]
mod tests {
    use projector_sdk::harness::Harness;
    use serde_json::json;

    use super::*;

    #[test]
    fn counts_per_stream_and_in_total() {
        let mut run = Harness::<StreamStatsProjection>::new();
        for stream in ["order-1", "order-2", "order-1", "user-7"] {
            run.append(stream, "Anything", json!({}));
        }
        assert_eq!(
            run.document("stream/order-1"),
            Some(json!({"events": 2, "lastPosition": 3, "lastRevision": 1}))
        );
        assert_eq!(
            run.document("total"),
            Some(json!({"events": 4, "streams": 3, "lastPosition": 4}))
        );
    }

    #[test]
    fn batch_size_does_not_change_the_view() {
        let mut whole = Harness::<StreamStatsProjection>::new();
        let mut pieces = Harness::<StreamStatsProjection>::new();
        for n in 0..50 {
            let stream = format!("s-{}", n % 7);
            whole.record(&stream, "E", json!(n));
            pieces.record(&stream, "E", json!(n));
        }
        whole.catch_up(usize::MAX).unwrap();
        pieces.catch_up(3).unwrap();
        assert_eq!(whole.view(), pieces.view());
    }
}
