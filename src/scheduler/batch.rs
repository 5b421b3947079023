//! One batch of a projection: the events after its checkpoint that its subscription selects,
//! framed for the guest, and the checkpoint the batch reaches (past the events the
//! subscription skipped, too).

use uuid::Uuid;

use crate::log::{EventRef, LogReader, Position, Source, StorageError, StreamName};
use crate::runtime::Subscription;

/// A batch stops growing past this many framed bytes.
const MAX_BYTES: usize = 8 * 1024 * 1024;

pub struct Batch {
    /// The selected events, framed straight from the stored records.
    pub frame: Vec<u8>,
    /// How many events `frame` holds.
    pub len: usize,
    /// Where the projection stands once the batch is applied.
    pub checkpoint: Position,
}

/// What a fault names of the event it happened at.
#[derive(Debug)]
pub struct FaultSite {
    pub position: Position,
    pub id: Uuid,
    pub stream: String,
}

impl Batch {
    /// The batch's events one at a time, each as its own one-event frame with what a fault
    /// at it names: how a failed batch is taken apart to find the failing event.
    pub fn events(&self) -> impl Iterator<Item = (&[u8], FaultSite)> {
        let mut rest = &self.frame[..];
        std::iter::from_fn(move || {
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let (one, tail) = rest.split_at(4 + len);
            rest = tail;
            Some((one, site(one)))
        })
    }
}

/// The position, id and stream of a one-event frame this module wrote.
fn site(frame: &[u8]) -> FaultSite {
    let event = projector_sdk::frame::decode(frame)
        .next()
        .and_then(Result::ok)
        .expect("a frame this module wrote");
    FaultSite {
        position: event.position,
        id: Uuid::from_bytes(event.id),
        stream: event.stream.to_owned(),
    }
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

/// The events of one source that the subscription selects, framed, with where each starts.
#[derive(Default)]
struct Part {
    frame: Vec<u8>,
    /// (position, start in `frame`) of each framed event.
    starts: Vec<(Position, usize)>,
}

/// Reads the next batch after `after`, up to `head`, framing it into `buffer` (cleared first):
/// an applied batch's frame handed back, so that a catch-up does not map, fault in and zero a
/// fresh buffer of up to [`MAX_BYTES`] for every batch.
pub fn next(
    reader: &LogReader,
    sources: &[Source],
    subscription: &Subscription,
    (after, head): (Position, Position),
    limit: usize,
    mut buffer: Vec<u8>,
) -> Result<Batch, StorageError> {
    buffer.clear();
    // Each source is read up to `limit` events; the batch may only reach as far as every source
    // has been read, or an event of a source cut short could be skipped.
    let mut checkpoint = head;
    let mut parts = Vec::with_capacity(sources.len());
    for source in sources {
        let mut part = Part::default();
        if let [_] = sources {
            part.frame = std::mem::take(&mut buffer);
        }
        let (mut read, mut bytes, mut last) = (0usize, 0usize, None);
        // Bounded in bytes too: a batch of large events must not hold gigabytes.
        reader.visit_after(source, after, (limit, MAX_BYTES), head, &mut |event| {
            read += 1;
            bytes += event.data.len() + event.metadata.len();
            last = Some(event.position);
            if subscription.matches(event.stream, event.event_type) {
                part.starts.push((event.position, part.frame.len()));
                encode(&mut part.frame, &event);
            }
            part.frame.len() < MAX_BYTES
        })?;
        if let Some(last) = last
            && (read == limit || bytes > MAX_BYTES || part.frame.len() >= MAX_BYTES)
        {
            checkpoint = checkpoint.min(last);
        }
        parts.push(part);
    }
    if let [part] = &mut parts[..] {
        return Ok(Batch {
            len: part.starts.len(),
            frame: std::mem::take(&mut part.frame),
            checkpoint,
        });
    }
    // Several sources: their events in log order, each once (a stream named in `streams` may
    // also be in a named category), none past the checkpoint.
    let mut order: Vec<(Position, usize, usize)> = Vec::new();
    for (p, part) in parts.iter().enumerate() {
        order.extend(
            part.starts
                .iter()
                .enumerate()
                .map(|(i, (pos, _))| (*pos, p, i)),
        );
    }
    order.sort_unstable();
    order.dedup_by_key(|e| e.0);
    let mut frame = buffer;
    let mut len = 0;
    for (position, p, i) in order {
        if position > checkpoint {
            break;
        }
        if frame.len() >= MAX_BYTES {
            checkpoint = position - 1;
            break;
        }
        let part = &parts[p];
        let end = part.starts.get(i + 1).map_or(part.frame.len(), |s| s.1);
        frame.extend_from_slice(&part.frame[part.starts[i].1..end]);
        len += 1;
    }
    Ok(Batch {
        frame,
        len,
        checkpoint,
    })
}

fn encode(frame: &mut Vec<u8>, event: &EventRef<'_>) {
    projector_sdk::frame::encode(
        frame,
        &projector_sdk::Event {
            position: event.position,
            revision: event.revision,
            recorded_at: event.recorded_at,
            id: *event.id.as_bytes(),
            stream: event.stream,
            event_type: event.event_type,
            data: event.data,
            metadata: event.metadata,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{AppendRequest, ExpectedRevision, JsonPayload, NewEvent};

    /// A log of 30 events over `order-1`, `order-2` and `user-1`, every fourth of type
    /// `Skipped`, the rest `Placed`.
    fn log() -> (tempfile::TempDir, crate::log::Log, crate::log::WriterHandle) {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) = crate::log::Log::open(&dir.path().join("log")).unwrap();
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for i in 0..30 {
            let stream = ["order-1", "order-2", "user-1"][i % 3];
            let event_type = if i % 4 == 0 { "Skipped" } else { "Placed" };
            let event = NewEvent::new(
                None,
                event_type,
                JsonPayload::parse(&format!("{{\"n\":{i}}}")).unwrap(),
                (i % 2 == 0).then(|| JsonPayload::parse("{\"m\":1}").unwrap()),
            )
            .unwrap();
            let request = AppendRequest::new(
                StreamName::new(stream.to_owned()).unwrap(),
                ExpectedRevision::Any,
                vec![event],
            )
            .unwrap();
            tokio.block_on(log.append(request)).unwrap();
        }
        (dir, log, writer)
    }

    /// Batches framed straight from the stored records hold what the owned read of the same
    /// sources gives, in log order, each event once, none past the checkpoint; a batch taken
    /// apart gives each event's own frame and what a fault names. Each batch is framed into
    /// the previous one's buffer, as a catch-up does, so nothing of it may leak into the next.
    #[test]
    fn batches_frame_the_selected_events_of_every_source_once_in_log_order() {
        let (_dir, log, _writer) = log();
        let reader = log.reader();
        let head = *log.head().borrow();
        let several = Subscription {
            streams: vec!["order-1".into(), "user-1".into()],
            categories: vec!["order".into()],
            event_types: vec!["Placed".into()],
        };
        let one = Subscription {
            streams: vec![],
            categories: vec!["order".into()],
            event_types: vec!["Placed".into()],
        };
        for subscription in [several, one] {
            let sources = sources(&subscription).unwrap();
            for limit in [1, 2, 3, 7, 100] {
                let mut after = 0;
                let mut seen = Vec::new();
                let mut buffer = b"left over from an earlier batch".to_vec();
                while after < head {
                    let batch = next(
                        reader,
                        &sources,
                        &subscription,
                        (after, head),
                        limit,
                        buffer,
                    )
                    .unwrap();
                    assert!(
                        batch.checkpoint > after,
                        "limit {limit}: no progress after {after}"
                    );
                    let decoded: Vec<_> = projector_sdk::frame::decode(&batch.frame)
                        .map(Result::unwrap)
                        .map(|e| {
                            (
                                e.position,
                                e.stream.to_owned(),
                                e.data.to_vec(),
                                e.metadata.to_vec(),
                            )
                        })
                        .collect();
                    assert_eq!(decoded.len(), batch.len);
                    for (position, ..) in &decoded {
                        assert!(*position > after && *position <= batch.checkpoint);
                    }
                    let sites: Vec<_> = batch.events().collect();
                    assert_eq!(sites.len(), batch.len);
                    for ((frame, site), (position, stream, ..)) in sites.iter().zip(&decoded) {
                        let one: Vec<_> = projector_sdk::frame::decode(frame).collect();
                        assert_eq!(one.len(), 1);
                        assert_eq!(one[0].as_ref().unwrap().position, *position);
                        assert_eq!((site.position, &site.stream), (*position, stream));
                        assert_eq!(site.id.as_bytes(), &one[0].as_ref().unwrap().id);
                    }
                    seen.extend(decoded);
                    after = batch.checkpoint;
                    buffer = batch.frame;
                }
                let expected: Vec<_> = reader
                    .read_after(&Source::All, 0, (1000, usize::MAX), head)
                    .unwrap()
                    .into_iter()
                    .filter(|e| e.event_type == "Placed")
                    .filter(|e| e.stream.starts_with("order-") || !subscription.streams.is_empty())
                    .map(|e| (e.position, e.stream, e.data, e.metadata))
                    .collect();
                assert_eq!(seen, expected, "limit {limit}, {subscription:?}");
            }
        }
    }

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
