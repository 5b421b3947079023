//! A persistent subscription's settings, as a client gives them and as they are stored.

use serde::{Deserialize, Serialize};

use crate::log::Source;

/// Longest subscription name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Most events delivered and not yet acknowledged, per subscription, at most.
pub const MAX_IN_FLIGHT: u32 = 100_000;
/// Most event types a subscription may filter on.
pub const MAX_EVENT_TYPES: usize = 256;

/// Where a new subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum StartFrom {
    /// `"start"` or `"end"`.
    Named(Named),
    /// The first position delivered (inclusive).
    Position(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Named {
    Start,
    End,
}

/// How events are spread over the connected consumers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Whoever asks next gets the next events.
    #[default]
    RoundRobin,
    /// Every event of a stream goes to the same consumer while it stays connected.
    Pinned,
}

/// The settings of a subscription: `PUT /subscriptions/{name}`'s body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `$all`, a stream, or `$ce-<category>`.
    pub source: String,
    /// Only events of these types (all when empty).
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Where a new subscription starts: `"start"`, `"end"` (events appended after it is made)
    /// or a position. Fixed once made.
    #[serde(default = "default_from")]
    #[schema(value_type = Object)]
    pub from: StartFrom,
    /// Events delivered and not yet acknowledged, at most (1 to 100,000).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
    /// An event not acknowledged within this many milliseconds is delivered again (100 ms to
    /// 1 hour).
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_ms: u64,
    /// Deliveries of an event before it is parked (1 to 1,000).
    #[serde(default = "default_deliveries")]
    pub max_deliveries: u32,
    #[serde(default)]
    pub strategy: Strategy,
}

fn default_from() -> StartFrom {
    StartFrom::Named(Named::Start)
}
fn default_in_flight() -> u32 {
    1000
}
fn default_ack_timeout() -> u64 {
    30_000
}
fn default_deliveries() -> u32 {
    10
}

/// Why settings were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidSettings {
    #[error(
        "a subscription name is 1 to {MAX_NAME_BYTES} bytes of letters, digits, '-', '_' and '.'"
    )]
    Name,
    #[error("source: {0}")]
    Source(String),
    #[error("max_in_flight must be 1 to {MAX_IN_FLIGHT}")]
    InFlight,
    #[error("ack_timeout_ms must be 100 to 3600000")]
    AckTimeout,
    #[error("max_deliveries must be 1 to 1000")]
    Deliveries,
    #[error("event_types holds at most {MAX_EVENT_TYPES} non-empty types")]
    EventTypes,
}

pub fn valid_name(name: &str) -> Result<(), InvalidSettings> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(InvalidSettings::Name)
    }
}

impl Settings {
    /// The settings checked, and their source.
    pub fn check(&self) -> Result<Source, InvalidSettings> {
        let source =
            Source::parse(&self.source).map_err(|e| InvalidSettings::Source(e.to_string()))?;
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return Err(InvalidSettings::InFlight);
        }
        if !(100..=3_600_000).contains(&self.ack_timeout_ms) {
            return Err(InvalidSettings::AckTimeout);
        }
        if !(1..=1000).contains(&self.max_deliveries) {
            return Err(InvalidSettings::Deliveries);
        }
        if self.event_types.len() > MAX_EVENT_TYPES || self.event_types.iter().any(|t| t.is_empty())
        {
            return Err(InvalidSettings::EventTypes);
        }
        Ok(source)
    }

    pub fn ack_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ack_timeout_ms)
    }

    pub fn admits(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let s: Settings = serde_json::from_str(r#"{"source":"$ce-order"}"#).unwrap();
        assert_eq!(s.max_in_flight, 1000);
        assert_eq!(s.from, StartFrom::Named(Named::Start));
        assert_eq!(s.strategy, Strategy::RoundRobin);
        assert!(s.check().is_ok());
        let s: Settings =
            serde_json::from_str(r#"{"source":"x","from":42,"strategy":"pinned"}"#).unwrap();
        assert_eq!(s.from, StartFrom::Position(42));
        let bad = Settings {
            max_in_flight: 0,
            ..s.clone()
        };
        assert_eq!(bad.check().unwrap_err(), InvalidSettings::InFlight);
        let bad = Settings {
            source: "$nope".into(),
            ..s
        };
        assert!(matches!(bad.check(), Err(InvalidSettings::Source(_))));
        assert!(serde_json::from_str::<Settings>(r#"{"source":"x","from":"middle"}"#).is_err());
        assert!(valid_name("orders.v2_a-b").is_ok());
        assert!(valid_name("a/b").is_err());
    }
}
