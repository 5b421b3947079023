//! Events as JSON text, written by hand into one buffer: reads of the whole log are bounded by
//! this encoder, and the stored payloads are already JSON, so they are copied, not re-parsed.
//!
//! ```json
//! {"position":1,"stream":"order-1","revision":0,"type":"OrderPlaced","id":"…",
//!  "recorded_at":1764000000000000,"data":{…},"metadata":null}
//! ```

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::log::RecordedEvent;

/// A 200 whose body is JSON text written by hand (or stored as JSON).
pub fn json_response(body: impl Into<axum::body::Body>) -> Response {
    let body: axum::body::Body = body.into();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

pub fn event(out: &mut Vec<u8>, e: &RecordedEvent) {
    let mut numbers = itoa::Buffer::new();
    out.extend_from_slice(b"{\"position\":");
    out.extend_from_slice(numbers.format(e.position).as_bytes());
    out.extend_from_slice(b",\"stream\":");
    string(out, &e.stream);
    out.extend_from_slice(b",\"revision\":");
    out.extend_from_slice(numbers.format(e.revision).as_bytes());
    out.extend_from_slice(b",\"type\":");
    string(out, &e.event_type);
    out.extend_from_slice(b",\"id\":\"");
    out.extend_from_slice(
        e.id.hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .as_bytes(),
    );
    out.extend_from_slice(b"\",\"recorded_at\":");
    out.extend_from_slice(numbers.format(e.recorded_at).as_bytes());
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(&e.data);
    out.extend_from_slice(b",\"metadata\":");
    if e.metadata.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        out.extend_from_slice(&e.metadata);
    }
    out.push(b'}');
}

fn string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn encodes_valid_json_with_escapes() {
        let e = RecordedEvent {
            position: 7,
            stream: "order-\"1\"".into(),
            revision: 2,
            event_type: "Item\nAdded".into(),
            id: Uuid::from_u128(1),
            recorded_at: 99,
            data: br#"{"sku":"a"}"#.to_vec(),
            metadata: Vec::new(),
        };
        let mut out = Vec::new();
        event(&mut out, &e);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "position": 7, "stream": "order-\"1\"", "revision": 2, "type": "Item\nAdded",
                "id": "00000000-0000-0000-0000-000000000001", "recorded_at": 99,
                "data": {"sku": "a"}, "metadata": null,
            })
        );
    }
}
