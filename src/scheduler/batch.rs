//! One batch of a projection: the events after its checkpoint that its subscription selects,
//! framed for the guest, and the checkpoint the batch reaches (past the events the
//! subscription skipped, too).

use crate::log::{LogReader, Position, RecordedEvent, Source, StorageError, StreamName};
use crate::runtime::Subscription;

/// A batch stops growing past this many framed bytes.
const MAX_BYTES: usize = 8 * 1024 * 1024;

pub struct Batch {
    pub frame: Vec<u8>,
    /// The events in `frame`, for locating a fault.
    pub events: Vec<RecordedEvent>,
    /// Where the projection stands once the batch is applied.
    pub checkpoint: Position,
}

/// Where a subscription reads from: the whole log, or the streams and categories it names.
/// A stream that no event could ever be appended to is an error, not an empty source.
pub fn sources(subscription: &Subscription) -> Result<Vec<Source>, String> {
    if subscription.streams.is_empty() && subscription.categories.is_empty() {
        return Ok(vec![Source::All]);
    }
    let mut sources = Vec::new();
    for stream in &subscription.streams {
        let name = StreamName::new(stream.clone())
            .map_err(|e| format!("the subscription names stream {stream:?}: {e}"))?;
        sources.push(Source::Stream(name));
    }
    sources.extend(
        subscription
            .categories
            .iter()
            .map(|c| Source::Category(c.clone())),
    );
    Ok(sources)
}

/// Reads the next batch after `after`, up to `head`.
pub fn next(
    reader: &LogReader,
    sources: &[Source],
    subscription: &Subscription,
    after: Position,
    head: Position,
    limit: usize,
) -> Result<Batch, StorageError> {
    // Each source is read up to `limit` events; the batch may only reach as far as every source
    // has been read, or an event of a source cut short could be skipped.
    let mut checkpoint = head;
    let mut events = Vec::new();
    for source in sources {
        // Bounded in bytes too: a batch of large events must not hold gigabytes.
        let read = reader.read_after(source, after, (limit, MAX_BYTES), head)?;
        let bytes: usize = read.iter().map(|e| e.data.len() + e.metadata.len()).sum();
        if let Some(last) = read.last()
            && (read.len() == limit || bytes > MAX_BYTES)
        {
            checkpoint = checkpoint.min(last.position);
        }
        events.extend(read);
    }
    if sources.len() > 1 {
        events.sort_unstable_by_key(|e| e.position);
        // A stream named in `streams` may also be in a named category.
        events.dedup_by_key(|e| e.position);
    }
    let mut frame = Vec::new();
    let mut selected = Vec::new();
    for event in events {
        if event.position > checkpoint {
            break;
        }
        if frame.len() >= MAX_BYTES {
            checkpoint = event.position - 1;
            break;
        }
        if subscription.matches(&event.stream, &event.event_type) {
            encode(&mut frame, &event);
            selected.push(event);
        }
    }
    Ok(Batch {
        frame,
        events: selected,
        checkpoint,
    })
}

pub fn encode(frame: &mut Vec<u8>, event: &RecordedEvent) {
    projector_sdk::frame::encode(
        frame,
        &projector_sdk::Event {
            position: event.position,
            revision: event.revision,
            recorded_at: event.recorded_at,
            id: *event.id.as_bytes(),
            stream: &event.stream,
            event_type: &event.event_type,
            data: &event.data,
            metadata: &event.metadata,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_to_an_impossible_stream_is_refused() {
        let error = sources(&Subscription::streams(["order-1", "$all"])).unwrap_err();
        assert!(error.contains("\"$all\""), "{error}");
        let ok = sources(&Subscription::streams(["order-1"])).unwrap();
        assert!(matches!(&ok[..], [Source::Stream(s)] if s.as_str() == "order-1"));
        assert!(matches!(
            &sources(&Subscription::all()).unwrap()[..],
            [Source::All]
        ));
    }
}
