//! The byte framing of an event batch, shared by the host (which encodes) and guests (which
//! decode). The layout is documented on `apply` in `wit/projection.wit`.

use crate::Event;

/// Fixed part of a frame after its length prefix: position, revision, recorded-at, id.
const FIXED: usize = 8 + 8 + 8 + 16;

/// Appends one event's frame to `out`.
pub fn encode(out: &mut Vec<u8>, event: &Event<'_>) {
    let rest = FIXED
        + 4 * 4
        + event.stream.len()
        + event.event_type.len()
        + event.data.len()
        + event.metadata.len();
    out.reserve(4 + rest);
    out.extend_from_slice(&(rest as u32).to_le_bytes());
    out.extend_from_slice(&event.position.to_le_bytes());
    out.extend_from_slice(&event.revision.to_le_bytes());
    out.extend_from_slice(&event.recorded_at.to_le_bytes());
    out.extend_from_slice(&event.id);
    for part in [
        event.stream.as_bytes(),
        event.event_type.as_bytes(),
        event.data,
        event.metadata,
    ] {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
}

/// Why a batch could not be decoded: the host and the guest disagree on the format.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameError(&'static str);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed event batch: {}", self.0)
    }
}

impl std::error::Error for FrameError {}

/// The events of a batch, decoded lazily and borrowing from it.
pub fn decode(batch: &[u8]) -> impl Iterator<Item = Result<Event<'_>, FrameError>> {
    let mut rest = batch;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let event = next(&mut rest);
        if event.is_err() {
            rest = &[];
        }
        Some(event)
    })
}

fn next<'a>(input: &mut &'a [u8]) -> Result<Event<'a>, FrameError> {
    let len = u32_at(input)? as usize;
    if input.len() < len {
        return Err(FrameError("a frame runs past the end of the batch"));
    }
    let (mut frame, rest) = input.split_at(len);
    *input = rest;
    if frame.len() < FIXED {
        return Err(FrameError("a frame is shorter than its fixed part"));
    }
    let position = u64_at(&frame[0..8]);
    let revision = u64_at(&frame[8..16]);
    let recorded_at = u64_at(&frame[16..24]);
    let id: [u8; 16] = frame[24..40].try_into().expect("16 bytes");
    frame = &frame[FIXED..];
    let stream = text(bytes(&mut frame)?)?;
    let event_type = text(bytes(&mut frame)?)?;
    let data = bytes(&mut frame)?;
    let metadata = bytes(&mut frame)?;
    if !frame.is_empty() {
        return Err(FrameError("a frame has bytes after its last field"));
    }
    Ok(Event {
        position,
        revision,
        recorded_at,
        id,
        stream,
        event_type,
        data,
        metadata,
    })
}

fn u32_at(input: &mut &[u8]) -> Result<u32, FrameError> {
    if input.len() < 4 {
        return Err(FrameError("a length prefix is cut short"));
    }
    let (head, rest) = input.split_at(4);
    *input = rest;
    Ok(u32::from_le_bytes(head.try_into().expect("4 bytes")))
}

fn u64_at(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

fn bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], FrameError> {
    let len = u32_at(input)? as usize;
    if input.len() < len {
        return Err(FrameError("a field runs past the end of its frame"));
    }
    let (field, rest) = input.split_at(len);
    *input = rest;
    Ok(field)
}

fn text(bytes: &[u8]) -> Result<&str, FrameError> {
    std::str::from_utf8(bytes).map_err(|_| FrameError("a name is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(position: u64, metadata: &'static [u8]) -> Event<'static> {
        Event {
            position,
            revision: position - 1,
            recorded_at: 1_764_000_000_000_000 + position,
            id: [position as u8; 16],
            stream: "order-ü",
            event_type: "ItemAdded",
            data: br#"{"sku":"tea"}"#,
            metadata,
        }
    }

    #[test]
    fn round_trips_a_batch() {
        let events = [sample(1, b""), sample(2, br#"{"user":"ann"}"#)];
        let mut batch = Vec::new();
        for e in &events {
            encode(&mut batch, e);
        }
        let decoded: Vec<Event<'_>> = decode(&batch).collect::<Result<_, _>>().unwrap();
        assert_eq!(decoded, events);
    }

    #[test]
    fn refuses_truncated_batches() {
        let mut batch = Vec::new();
        encode(&mut batch, &sample(1, b""));
        for cut in 1..batch.len() {
            let decoded: Result<Vec<_>, _> = decode(&batch[..cut]).collect();
            assert!(decoded.is_err(), "cut at {cut}");
        }
    }
}
