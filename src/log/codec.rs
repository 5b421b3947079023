//! The on-disk form of one event (the value of the `events` table; the position is its key).
//!
//! A fixed little-endian layout, led by a format byte so a later version can change it:
//!
//! ```text
//! u8 format=1 | u64 revision | u64 recorded_at | [16] id
//! | u16 len, stream | u16 len, type | u32 len, data | u32 len, metadata
//! ```
//!
//! Hand-written rather than serde-based because it is a storage format: its bytes must not
//! change when a dependency does, and decoding sits on the replay hot path.

use uuid::Uuid;

use super::error::StorageError;
use super::types::{EventRef, NewEvent, Position};

const FORMAT: u8 = 1;

/// Encodes `event` as stored at `revision` of `stream`, appending to `out`.
pub fn encode(out: &mut Vec<u8>, stream: &str, revision: u64, recorded_at: u64, event: &NewEvent) {
    let metadata = event.metadata.as_ref().map_or(&[][..], |m| m.as_bytes());
    let data = event.data.as_bytes();
    out.reserve(1 + 8 + 8 + 16 + 2 + stream.len() + 2 + event.event_type.len() + 8);
    out.push(FORMAT);
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(&recorded_at.to_le_bytes());
    out.extend_from_slice(event.id.uuid().as_bytes());
    // Lengths fit: names are capped at 256 bytes and payloads at 1 MiB when validated.
    out.extend_from_slice(&(stream.len() as u16).to_le_bytes());
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(&(event.event_type.len() as u16).to_le_bytes());
    out.extend_from_slice(event.event_type.as_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
    out.extend_from_slice(metadata);
}

/// Decodes the record stored at `position`, borrowing its strings and payloads from `bytes`.
pub fn decode(position: Position, bytes: &[u8]) -> Result<EventRef<'_>, StorageError> {
    let corrupt = |reason| StorageError::Corrupt { position, reason };
    let mut r = Reader(bytes);
    if r.take(1).ok_or_else(|| corrupt("empty record"))?[0] != FORMAT {
        return Err(corrupt("unknown record format"));
    }
    let truncated = || corrupt("truncated record");
    let revision = r.u64().ok_or_else(truncated)?;
    let recorded_at = r.u64().ok_or_else(truncated)?;
    let id = Uuid::from_slice(r.take(16).ok_or_else(truncated)?).map_err(|_| truncated())?;
    let stream = r.string(2).ok_or_else(truncated)?;
    let event_type = r.string(2).ok_or_else(truncated)?;
    let data = r.bytes(4).ok_or_else(truncated)?;
    let metadata = r.bytes(4).ok_or_else(truncated)?;
    if !r.0.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(EventRef {
        position,
        stream: stream.map_err(|_| corrupt("stream name is not UTF-8"))?,
        revision,
        event_type: event_type.map_err(|_| corrupt("event type is not UTF-8"))?,
        id,
        recorded_at,
        data,
        metadata,
    })
}

/// Reads just the stream name and revision, for checks that need no payload.
pub fn decode_stream_and_revision(
    position: Position,
    bytes: &[u8],
) -> Result<(&str, u64), StorageError> {
    let corrupt = |reason| StorageError::Corrupt { position, reason };
    let mut r = Reader(bytes);
    r.take(1 + 8 + 8 + 16)
        .ok_or_else(|| corrupt("truncated record"))?;
    let revision = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
    let stream = r.bytes(2).ok_or_else(|| corrupt("truncated record"))?;
    let stream = std::str::from_utf8(stream).map_err(|_| corrupt("stream name is not UTF-8"))?;
    Ok((stream, revision))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A length-prefixed run of bytes; the prefix is `width` (2 or 4) bytes.
    fn bytes(&mut self, width: usize) -> Option<&'a [u8]> {
        let mut len = [0u8; 4];
        len[..width].copy_from_slice(self.take(width)?);
        self.take(u32::from_le_bytes(len) as usize)
    }

    fn string(&mut self, width: usize) -> Option<Result<&'a str, std::str::Utf8Error>> {
        Some(std::str::from_utf8(self.bytes(width)?))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::log::types::{EventId, JsonPayload, RecordedEvent};

    proptest! {
        #[test]
        fn decode_inverts_encode(
            stream in "[a-z]{1,20}(-[0-9]{1,6})?",
            event_type in "[A-Za-z]{1,30}",
            revision in any::<u64>(),
            recorded_at in any::<u64>(),
            position in 1..u64::MAX,
            id in any::<u128>(),
            data in "\\{\"k\":[1-9][0-9]{0,20}\\}",
            metadata in proptest::option::of("\\[[1-9]{0,10}\\]"),
        ) {
            let event = NewEvent {
                id: EventId::Client(Uuid::from_u128(id)),
                event_type: event_type.clone(),
                data: JsonPayload::parse(&data).unwrap(),
                metadata: metadata.as_deref().map(|m| JsonPayload::parse(m).unwrap()),
            };
            let mut bytes = Vec::new();
            encode(&mut bytes, &stream, revision, recorded_at, &event);
            let decoded = decode(position, &bytes).unwrap().to_owned();
            prop_assert_eq!(decode_stream_and_revision(position, &bytes).unwrap(), (stream.as_str(), revision));
            prop_assert_eq!(decoded, RecordedEvent {
                position, stream, revision, event_type,
                id: Uuid::from_u128(id), recorded_at,
                data: data.into_bytes(),
                metadata: metadata.map(String::into_bytes).unwrap_or_default(),
            });
            for cut in 0..bytes.len() {
                prop_assert!(decode(position, &bytes[..cut]).is_err());
            }
        }
    }
}
