//! The vocabulary of the log: validated names, new and recorded events, expected revisions.
//!
//! Every value here is checked once, when it is built, so the writer and the storage layer can
//! rely on it: a `StreamName` is always a legal user stream, a `JsonPayload` always JSON text.

use std::fmt;

use serde_json::value::RawValue;
use uuid::Uuid;

use super::error::InvalidAppend;

/// Longest stream name, in bytes of UTF-8.
pub const MAX_STREAM_NAME_BYTES: usize = 256;
/// Longest event type, in bytes of UTF-8.
pub const MAX_EVENT_TYPE_BYTES: usize = 256;
/// Largest `data` plus `metadata` of one event, in bytes.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Deepest nesting of arrays and objects in an event's data or metadata. Many clients' JSON
/// parsers refuse deep documents (serde_json at 128 levels, counting the event around the
/// data), so deeper ones are refused on the way in.
pub const MAX_JSON_DEPTH: usize = 100;
/// Most events in one append request.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;

/// Global position of an event in the log: 1 for the first event, gap-free.
/// Position 0 means "before the first event" (an empty log's head).
pub type Position = u64;

/// The name of a user stream, such as `order-42`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

impl StreamName {
    /// Accepts a non-empty name of at most [`MAX_STREAM_NAME_BYTES`] bytes, with no control
    /// characters, that does not start with `$` (reserved for `$all` and `$ce-` categories).
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidAppend> {
        let name = name.into();
        if name.is_empty() {
            return Err(InvalidAppend::StreamName("stream name is empty".into()));
        }
        if name.len() > MAX_STREAM_NAME_BYTES {
            return Err(InvalidAppend::StreamName(format!(
                "stream name is {} bytes, the limit is {MAX_STREAM_NAME_BYTES}",
                name.len()
            )));
        }
        if name.starts_with('$') {
            return Err(InvalidAppend::StreamName(format!(
                "stream name {name:?} starts with '$', which is reserved for system streams"
            )));
        }
        if name.chars().any(char::is_control) {
            return Err(InvalidAppend::StreamName(
                "stream name contains a control character".into(),
            ));
        }
        Ok(Self(name))
    }

    /// The category: see [`category_of`].
    pub fn category(&self) -> Option<&str> {
        category_of(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The category of a stream: the part of its name before the first `-`, when there is a
/// non-empty one (`order-42` is in `order`; `order` and `-42` have none).
pub fn category_of(stream: &str) -> Option<&str> {
    match stream.split_once('-') {
        Some((category, _)) if !category.is_empty() => Some(category),
        _ => None,
    }
}

/// JSON text, checked to be one well-formed JSON value and stored without insignificant
/// white space. Readers (the HTTP API, projections) may rely on it being JSON on one line, so
/// NDJSON and SSE can carry it as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPayload(Vec<u8>);

impl JsonPayload {
    /// A payload as a client sent it; refused when nested deeper than [`MAX_JSON_DEPTH`].
    pub fn from_raw(raw: &RawValue) -> Result<Self, InvalidAppend> {
        let (bytes, depth) = minify(raw.get().as_bytes());
        if depth > MAX_JSON_DEPTH {
            return Err(InvalidAppend::TooDeep);
        }
        Ok(Self(bytes))
    }

    /// A payload from trusted text (tests, stored events).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(text)?;
        Ok(Self(minify(raw.get().as_bytes()).0))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Drops white space outside strings from valid JSON, keeping every token as written (numbers
/// keep their digits, objects their key order), and measures the deepest nesting. Raw
/// newlines cannot occur inside JSON strings, so the result is one line.
fn minify(json: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    let (mut depth, mut deepest) = (0usize, 0usize);
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        } else if matches!(b, b'[' | b'{') {
            depth += 1;
            deepest = deepest.max(depth);
        } else if matches!(b, b']' | b'}') {
            depth = depth.saturating_sub(1);
        }
        out.push(b);
    }
    (out, deepest)
}

/// What the writer must find before it appends (EventStoreDB's semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedRevision {
    /// No check.
    Any,
    /// The stream must have no events.
    NoStream,
    /// The stream must have at least one event.
    Exists,
    /// The stream's last event must have exactly this revision.
    Exact(u64),
}

impl ExpectedRevision {
    /// Whether a stream holding `len` events satisfies this expectation.
    pub fn admits(self, len: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => len == 0,
            Self::Exists => len > 0,
            // Checked: a client may send u64::MAX, which no stream reaches.
            Self::Exact(revision) => revision.checked_add(1) == Some(len),
        }
    }
}

impl std::str::FromStr for ExpectedRevision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(Self::Any),
            "no_stream" => Ok(Self::NoStream),
            "exists" => Ok(Self::Exists),
            n => n.parse().map(Self::Exact).map_err(|_| {
                format!(
                    "expected_revision {n:?} is not any, no_stream, exists or a revision number"
                )
            }),
        }
    }
}

impl fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no_stream"),
            Self::Exists => f.write_str("exists"),
            Self::Exact(n) => write!(f, "{n}"),
        }
    }
}

/// Where an event's id came from. Only client-supplied ids can repeat, so only they are
/// looked up for idempotency; server ids are fresh UUIDv7s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventId {
    Client(Uuid),
    Generated(Uuid),
}

impl EventId {
    /// Whether the client chose the id (so that a retry can be recognised by it).
    pub fn is_client(self) -> bool {
        matches!(self, Self::Client(_))
    }

    pub fn uuid(self) -> Uuid {
        match self {
            Self::Client(id) | Self::Generated(id) => id,
        }
    }
}

/// An event as a client proposes it.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub id: EventId,
    pub event_type: String,
    pub data: JsonPayload,
    pub metadata: Option<JsonPayload>,
}

impl NewEvent {
    /// Checks the type and size limits; `id: None` gets a fresh UUIDv7.
    pub fn new(
        id: Option<Uuid>,
        event_type: impl Into<String>,
        data: JsonPayload,
        metadata: Option<JsonPayload>,
    ) -> Result<Self, InvalidAppend> {
        let event_type = event_type.into();
        if event_type.is_empty() || event_type.len() > MAX_EVENT_TYPE_BYTES {
            return Err(InvalidAppend::EventType(format!(
                "event type must be 1 to {MAX_EVENT_TYPE_BYTES} bytes, got {}",
                event_type.len()
            )));
        }
        let size = data.as_bytes().len() + metadata.as_ref().map_or(0, |m| m.as_bytes().len());
        if size > MAX_EVENT_BYTES {
            return Err(InvalidAppend::EventTooLarge { size });
        }
        let id = id.map_or_else(|| EventId::Generated(Uuid::now_v7()), EventId::Client);
        Ok(Self {
            id,
            event_type,
            data,
            metadata,
        })
    }
}

/// A batch for one stream, appended atomically.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    pub stream: StreamName,
    pub expected: ExpectedRevision,
    pub events: Vec<NewEvent>,
}

impl AppendRequest {
    /// The bytes the request holds in memory, about: its payloads and types.
    pub fn bytes(&self) -> usize {
        self.events
            .iter()
            .map(|e| {
                e.data.as_bytes().len()
                    + e.metadata.as_ref().map_or(0, |m| m.as_bytes().len())
                    + e.event_type.len()
                    + 64
            })
            .sum()
    }

    /// Checks the batch as a whole: not empty, not too many events, no id twice.
    pub fn new(
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<Self, InvalidAppend> {
        if events.is_empty() {
            return Err(InvalidAppend::Empty);
        }
        if events.len() > MAX_EVENTS_PER_APPEND {
            return Err(InvalidAppend::TooManyEvents {
                count: events.len(),
            });
        }
        let mut ids: Vec<Uuid> = events.iter().map(|e| e.id.uuid()).collect();
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(InvalidAppend::RepeatedId(pair[0]));
        }
        Ok(Self {
            stream,
            expected,
            events,
        })
    }
}

/// Where an accepted batch landed. Its events hold consecutive positions and revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    pub first_position: Position,
    pub first_revision: u64,
    pub ids: Vec<Uuid>,
    /// True when the batch had been appended before (a retried request) and nothing was written.
    pub deduplicated: bool,
}

/// An event as stored in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: Position,
    pub stream: String,
    pub revision: u64,
    pub event_type: String,
    pub id: Uuid,
    /// Server time of the append, in microseconds since the Unix epoch.
    pub recorded_at: u64,
    /// JSON text.
    pub data: Vec<u8>,
    /// JSON text, or empty when the event has no metadata.
    pub metadata: Vec<u8>,
}

/// An event as stored, borrowing the stored bytes: what a reader that only copies events on
/// (the framing of a projection's batch) looks at, with nothing allocated per event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub position: Position,
    pub stream: &'a str,
    pub revision: u64,
    pub event_type: &'a str,
    pub id: Uuid,
    pub recorded_at: u64,
    pub data: &'a [u8],
    pub metadata: &'a [u8],
}

impl EventRef<'_> {
    pub fn to_owned(&self) -> RecordedEvent {
        RecordedEvent {
            position: self.position,
            stream: self.stream.to_owned(),
            revision: self.revision,
            event_type: self.event_type.to_owned(),
            id: self.id,
            recorded_at: self.recorded_at,
            data: self.data.to_vec(),
            metadata: self.metadata.to_vec(),
        }
    }
}

/// Which events a read or a subscription covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The whole log, by position.
    All,
    /// One stream, by revision.
    Stream(StreamName),
    /// Every stream of a category, by position.
    Category(String),
}

impl Source {
    /// A source by name: `$all`, `$ce-<category>`, or a stream.
    pub fn parse(name: &str) -> Result<Source, InvalidAppend> {
        if name == "$all" {
            return Ok(Source::All);
        }
        if let Some(category) = name.strip_prefix("$ce-") {
            if category.is_empty() || category.contains('-') {
                return Err(InvalidAppend::StreamName(format!(
                    "{name:?} does not name a category: use $ce-<category>, the part of a stream name before its first '-'"
                )));
            }
            return Ok(Source::Category(category.to_owned()));
        }
        if name.starts_with('$') {
            return Err(InvalidAppend::StreamName(format!(
                "unknown system stream {name:?}: the system streams are $all and $ce-<category>"
            )));
        }
        Ok(Source::Stream(StreamName::new(name)?))
    }

    /// The name [`Source::parse`] reads.
    pub fn name(&self) -> String {
        match self {
            Self::All => "$all".to_owned(),
            Self::Stream(s) => s.as_str().to_owned(),
            Self::Category(c) => format!("$ce-{c}"),
        }
    }

    /// Where `event` stands in this source: its revision in a stream, its position otherwise.
    pub fn coordinate(&self, event: &RecordedEvent) -> u64 {
        match self {
            Self::Stream(_) => event.revision,
            Self::All | Self::Category(_) => event.position,
        }
    }

    /// The coordinate after `event` when reading in `direction`; `None` past the start.
    pub fn next_after(&self, event: &RecordedEvent, direction: Direction) -> Option<u64> {
        let at = self.coordinate(event);
        match direction {
            Direction::Forward => Some(at + 1),
            Direction::Backward => at.checked_sub(1),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Forward,
    Backward,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Backward => "backward",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_split_at_the_first_dash() {
        let category = |s: &str| StreamName::new(s).unwrap().category().map(str::to_owned);
        assert_eq!(category("order-42"), Some("order".into()));
        assert_eq!(category("order-42-b"), Some("order".into()));
        assert_eq!(category("order"), None);
        assert_eq!(category("-42"), None);
    }

    #[test]
    fn stream_names_are_checked() {
        assert!(StreamName::new("").is_err());
        assert!(StreamName::new("$all").is_err());
        assert!(StreamName::new("a\nb").is_err());
        assert!(StreamName::new("x".repeat(MAX_STREAM_NAME_BYTES + 1)).is_err());
        assert!(StreamName::new("x".repeat(MAX_STREAM_NAME_BYTES)).is_ok());
        assert!(StreamName::new("ordér-1").is_ok());
    }

    #[test]
    fn expected_revisions_parse_and_admit() {
        let parse = |s: &str| s.parse::<ExpectedRevision>();
        assert_eq!(parse("any"), Ok(ExpectedRevision::Any));
        assert_eq!(parse("7"), Ok(ExpectedRevision::Exact(7)));
        assert!(parse("-1").is_err());
        assert!(ExpectedRevision::NoStream.admits(0));
        assert!(!ExpectedRevision::NoStream.admits(1));
        assert!(ExpectedRevision::Exists.admits(1));
        assert!(!ExpectedRevision::Exists.admits(0));
        assert!(ExpectedRevision::Exact(2).admits(3));
        assert!(!ExpectedRevision::Exact(2).admits(2));
        assert!(!ExpectedRevision::Exact(u64::MAX).admits(0));
    }

    #[test]
    fn payloads_are_stored_on_one_line_as_written() {
        let text = "{ \"a\" : [1, 2.50,\n 1e400],\r\n\t\"s\": \"x y\\\" \\\\\" , \"z\":null }";
        let payload = JsonPayload::parse(text).unwrap();
        assert_eq!(
            std::str::from_utf8(payload.as_bytes()).unwrap(),
            "{\"a\":[1,2.50,1e400],\"s\":\"x y\\\" \\\\\",\"z\":null}"
        );
        assert!(JsonPayload::parse("{\"a\":").is_err());
        assert!(JsonPayload::parse("1 2").is_err());
    }

    #[test]
    fn a_batch_may_not_repeat_an_id() {
        let id = Uuid::new_v4();
        let event =
            || NewEvent::new(Some(id), "T", JsonPayload::parse("{}").unwrap(), None).unwrap();
        let stream = StreamName::new("s").unwrap();
        let err = AppendRequest::new(stream, ExpectedRevision::Any, vec![event(), event()]);
        assert!(matches!(err, Err(InvalidAppend::RepeatedId(i)) if i == id));
    }
}
