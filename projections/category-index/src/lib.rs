//! Example projection: for each category, how many events and streams it has, and its
//! streams with their event counts.
//!
//! Documents: `category/<category>` → `{"events": n, "streams": k}`, and for each stream with
//! a category, `stream/<stream>` → `{"events": n}`. A category's streams are the view's page
//! under the prefix `stream/<category>-` (a stream's category is the text before its first
//! `-`, so that prefix holds exactly that category's streams, in name order). Streams without
//! a category (no `-` in the name) are not listed.
//!
//! One small document per stream, rather than a category document listing its streams, keeps
//! an event's cost flat however many streams a category has: a document the projection reads
//! and writes back on every event should not grow with the log.

use projector_sdk::{Error, Event, Projection, Subscription, View};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
pub struct Category {
    pub events: u64,
    pub streams: u64,
}

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
pub struct Member {
    pub events: u64,
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
        let first = view.update(&["stream/", event.stream].concat(), |m: &mut Member| {
            m.events += 1;
            m.events == 1
        })?;
        view.update(&["category/", category].concat(), |c: &mut Category| {
            c.events += 1;
            c.streams += u64::from(first);
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
    fn counts_each_category_and_its_streams() {
        let mut run = Harness::<CategoryIndex>::new();
        for stream in [
            "order-1",
            "order-2",
            "order-1",
            "user-7",
            "lonely",
            "order-x-y",
        ] {
            run.append(stream, "Anything", json!({}));
        }
        assert_eq!(
            run.document("category/order"),
            Some(json!({"events": 4, "streams": 3}))
        );
        assert_eq!(
            run.document("category/user"),
            Some(json!({"events": 1, "streams": 1}))
        );
        assert_eq!(run.document("stream/order-1"), Some(json!({"events": 2})));
        assert_eq!(run.document("stream/order-x-y"), Some(json!({"events": 1})));
        assert_eq!(run.document("stream/lonely"), None);
        let keys: Vec<&str> = run.view().0.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "category/order",
                "category/user",
                "stream/order-1",
                "stream/order-2",
                "stream/order-x-y",
                "stream/user-7"
            ],
            "a category's streams sit together under `stream/<category>-`; none for `lonely`"
        );
    }
}
