//! Example projection: for each category, its streams and how many events each has.
//!
//! Documents: `category/<category>` → `{"events": n, "streams": {"<stream>": n, ...}}`.
//! Streams without a category (no `-` in the name) are not listed.

use std::collections::BTreeMap;

use projector_sdk::{Error, Event, Projection, Subscription, View};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
pub struct Category {
    pub events: u64,
    pub streams: BTreeMap<String, u64>,
}

pub struct CategoryIndex;

impl Projection for CategoryIndex {
    fn subscription() -> Subscription {
        Subscription::all()
    }

    fn apply(view: &mut View, event: &Event) -> Result<(), Error> {
        let Some(category) = event.category() else {
            return Ok(());
        };
        view.update(&format!("category/{category}"), |c: &mut Category| {
            c.events += 1;
            *c.streams.entry(event.stream.to_owned()).or_default() += 1;
        })
    }
}

projector_sdk::export!(CategoryIndex);

#[cfg(test)]
mod tests {
    use projector_sdk::harness::Harness;
    use serde_json::json;

    use super::*;

    #[test]
    fn lists_streams_per_category() {
        let mut run = Harness::<CategoryIndex>::new();
        for stream in ["order-1", "order-2", "order-1", "user-7", "lonely"] {
            run.append(stream, "Anything", json!({}));
        }
        assert_eq!(
            run.document("category/order"),
            Some(json!({"events": 3, "streams": {"order-1": 2, "order-2": 1}}))
        );
        assert_eq!(
            run.document("category/user"),
            Some(json!({"events": 1, "streams": {"user-7": 1}}))
        );
        assert_eq!(
            run.view().0.len(),
            2,
            "no document for streams without a category"
        );
    }
}
