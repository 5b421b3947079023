//! Write Projector projections in Rust.
//!
//! A projection is a type implementing [`Projection`]: it names the events it wants
//! ([`Subscription`]) and applies each of them to its [`View`], a store of JSON documents.
//! [`export!`] turns it into a WebAssembly component for `wasm32-wasip2`; [`harness`] runs the
//! same code natively under `cargo test`, with no wasm involved.
//!
//! ```
//! use projector_sdk::{Event, Error, Projection, Subscription, View};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Default)]
//! struct Count { events: u64 }
//!
//! pub struct Counter;
//!
//! impl Projection for Counter {
//!     fn subscription() -> Subscription {
//!         Subscription::categories(["order"])
//!     }
//!     fn apply(view: &mut View, event: &Event) -> Result<(), Error> {
//!         view.update(event.stream, |c: &mut Count| c.events += 1)
//!     }
//! }
//! projector_sdk::export!(Counter);
//!
//! let mut run = projector_sdk::harness::Harness::<Counter>::new();
//! run.append("order-1", "OrderPlaced", serde_json::json!({}));
//! run.append("user-1", "Registered", serde_json::json!({}));
//! assert_eq!(run.document("order-1"), Some(serde_json::json!({"events": 1})));
//! assert_eq!(run.document("user-1"), None);
//! ```

pub mod frame;
pub mod harness;
mod view;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod guest;

pub use serde_json;
pub use view::{Backend, View};

use serde::Deserialize;

/// One event of the log, as a projection receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// Global position in the log, from 1, gap-free.
    pub position: u64,
    /// Revision in its stream, from 0.
    pub revision: u64,
    /// Server time of the append, microseconds since the Unix epoch.
    pub recorded_at: u64,
    /// The event's id (a UUID), as its 16 bytes.
    pub id: [u8; 16],
    pub stream: &'a str,
    pub event_type: &'a str,
    /// The event's payload, JSON.
    pub data: &'a [u8],
    /// The event's metadata, JSON; empty when it has none.
    pub metadata: &'a [u8],
}

impl<'a> Event<'a> {
    /// The stream's category: the part of its name before the first `-`, if not empty.
    pub fn category(&self) -> Option<&str> {
        match self.stream.split_once('-') {
            Some((category, _)) if !category.is_empty() => Some(category),
            _ => None,
        }
    }

    /// The payload decoded as `T`. Unknown fields are ignored unless `T` denies them. `T` may
    /// borrow from the payload (`&'a str` fields fail on strings with escapes; `Cow<'a, str>`
    /// with `#[serde(borrow)]` borrows when it can and copies when it must).
    pub fn data<T: Deserialize<'a>>(&self) -> Result<T, Error> {
        serde_json::from_slice(self.data).map_err(|e| {
            Error::new(format!(
                "{} event at position {} has unexpected data: {e}",
                self.event_type, self.position
            ))
        })
    }

    /// The id in its usual text form.
    pub fn id_string(&self) -> String {
        let hex: String = self.id.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

/// Why a projection refused an event. The host records it, with the event, as the fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(e.to_string())
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error(message.to_owned())
    }
}

/// Which events a projection receives; see `types.subscription` in the WIT contract.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    pub streams: Vec<String>,
    pub categories: Vec<String>,
    pub event_types: Vec<String>,
}

impl Subscription {
    /// Every event of the log.
    pub fn all() -> Self {
        Self::default()
    }

    /// The events of these streams.
    pub fn streams<S: Into<String>>(streams: impl IntoIterator<Item = S>) -> Self {
        Self {
            streams: streams.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// The events of these categories.
    pub fn categories<S: Into<String>>(categories: impl IntoIterator<Item = S>) -> Self {
        Self {
            categories: categories.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Only events of these types, of whatever streams are selected.
    pub fn event_types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.event_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Whether an event of `stream` with type `event_type` is selected.
    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        let category = match stream.split_once('-') {
            Some((category, _)) if !category.is_empty() => Some(category),
            _ => None,
        };
        let by_source = (self.streams.is_empty() && self.categories.is_empty())
            || self.streams.iter().any(|s| s == stream)
            || category.is_some_and(|c| self.categories.iter().any(|s| s == c));
        let by_type =
            self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type);
        by_source && by_type
    }
}

/// A projection: a pure function from events to documents. It has no state of its own
/// (everything it remembers lives in its view), so the host can run it anywhere, restart it
/// from any checkpoint, and replay it with the same result.
pub trait Projection {
    /// The events this projection receives.
    fn subscription() -> Subscription;

    /// Applies one event. An error faults the projection at this event; nothing the batch
    /// wrote is kept.
    fn apply(view: &mut View, event: &Event) -> Result<(), Error>;
}

/// Exports a [`Projection`] as the component's implementation of the WIT world. Use it once,
/// in the crate built to `wasm32-wasip2` (with `crate-type = ["cdylib"]`). On other targets it
/// expands to nothing, so the same crate's native tests build too.
#[macro_export]
macro_rules! export {
    ($projection:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type ProjectorGuest = $crate::guest::Adapter<$projection>;
    $crate::guest::bindings::export!(ProjectorGuest with_types_in $crate::guest::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_select_by_source_and_type() {
        let all = Subscription::all();
        assert!(all.matches("order-1", "X") && all.matches("x", "Y"));
        let orders = Subscription::categories(["order"]).event_types(["OrderPlaced"]);
        assert!(orders.matches("order-1", "OrderPlaced"));
        assert!(!orders.matches("order-1", "ItemAdded"));
        assert!(!orders.matches("user-1", "OrderPlaced"));
        assert!(
            !orders.matches("order", "OrderPlaced"),
            "no category without a dash"
        );
        let mixed = Subscription {
            streams: vec!["user-1".into()],
            categories: vec!["order".into()],
            event_types: vec![],
        };
        assert!(mixed.matches("user-1", "A") && mixed.matches("order-9", "B"));
        assert!(!mixed.matches("user-2", "A"));
    }

    #[test]
    fn ids_print_as_uuids() {
        let event = Event {
            position: 1,
            revision: 0,
            recorded_at: 0,
            id: [
                0x01, 0x93, 0xa0, 0xc4, 0x5f, 0x3e, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 0x2a,
            ],
            stream: "s",
            event_type: "t",
            data: b"{}",
            metadata: b"",
        };
        assert_eq!(event.id_string(), "0193a0c4-5f3e-7000-8000-00000000002a");
    }
}
