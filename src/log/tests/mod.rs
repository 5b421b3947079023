//! The log's unit and property tests, by what they exercise: appends and their checks here;
//! reads (`reads`), reopening and recovery (`recovery`), accounts (`accounts`), and groups of
//! queued and concurrent appends (`groups`).

use proptest::prelude::*;
use uuid::Uuid;

use super::*;

mod accounts;
mod groups;
mod reads;
mod recovery;

fn event(id: Option<Uuid>, n: u64) -> NewEvent {
    let data = JsonPayload::parse(&format!("{{\"n\":{n}}}")).unwrap();
    NewEvent::new(id, "Happened", data, None).unwrap()
}

fn request(stream: &str, expected: ExpectedRevision, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest::new(StreamName::new(stream).unwrap(), expected, events).unwrap()
}

fn read_all(log: &Log, source: &Source, direction: Direction) -> Vec<RecordedEvent> {
    log.reader()
        .read(source, None, direction, usize::MAX, u64::MAX)
        .unwrap()
        .unwrap_or_default()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

/// Every index read (each stream, each category, both directions, from every start) agrees
/// with a filter of the whole log.
fn assert_indexes_match_the_log(log: &Log, all: &[RecordedEvent]) {
    let reader = log.reader();
    let mut sources: Vec<(Source, Vec<&RecordedEvent>)> = Vec::new();
    let mut streams: Vec<&str> = all.iter().map(|e| e.stream.as_str()).collect();
    streams.sort_unstable();
    streams.dedup();
    for stream in streams {
        let events = all.iter().filter(|e| e.stream == stream).collect();
        sources.push((Source::Stream(StreamName::new(stream).unwrap()), events));
    }
    // "ord" is a prefix of a category, not one; "order-1" holds a `-`, so no stream is in it.
    for category in ["order", "user", "solo", "ord", "order-1"] {
        let events = all
            .iter()
            .filter(|e| e.stream.starts_with(&format!("{category}-")))
            .collect();
        sources.push((Source::Category(category.into()), events));
    }
    for (source, expected) in sources {
        let read = read_all(log, &source, Direction::Forward);
        assert_eq!(read.iter().collect::<Vec<_>>(), expected, "{source:?}");
        let mut backward = read_all(log, &source, Direction::Backward);
        backward.reverse();
        assert_eq!(backward, read, "{source:?} backward");
        if let Some(last) = expected.last() {
            // Past its last event the source still exists: an empty page, not `None`.
            let past = reader
                .read(
                    &source,
                    Some(source.coordinate(last) + 1),
                    Direction::Forward,
                    2,
                    u64::MAX,
                )
                .unwrap();
            assert_eq!(past.map(|p| p.len()), Some(0), "{source:?} past its end");
        }
        for (i, e) in expected.iter().enumerate() {
            let from = source.coordinate(e);
            let page = reader
                .read(&source, Some(from), Direction::Forward, 2, u64::MAX)
                .unwrap()
                .unwrap();
            assert_eq!(
                page.iter().collect::<Vec<_>>(),
                expected[i..expected.len().min(i + 2)].to_vec()
            );
            let page = reader
                .read(&source, Some(from), Direction::Backward, 2, u64::MAX)
                .unwrap()
                .unwrap();
            let want: Vec<&RecordedEvent> = expected[i.saturating_sub(1)..=i]
                .iter()
                .rev()
                .copied()
                .collect();
            assert_eq!(page.iter().collect::<Vec<_>>(), want);
        }
        for after in 0..=all.len() as u64 {
            let page = reader
                .read_after(&source, after, (2, usize::MAX), u64::MAX)
                .unwrap();
            let want: Vec<&RecordedEvent> = expected
                .iter()
                .filter(|e| e.position > after)
                .take(2)
                .copied()
                .collect();
            assert_eq!(
                page.iter().collect::<Vec<_>>(),
                want,
                "{source:?} after {after}"
            );
        }
    }
}

#[test]
fn expected_revisions_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let (log, _writer) = Log::open(dir.path()).unwrap();
        let append = |expected, n| log.append(request("order-1", expected, vec![event(None, n)]));
        assert!(matches!(
            append(ExpectedRevision::Exists, 0).await,
            Err(AppendError::WrongExpectedRevision { current: None, .. })
        ));
        assert_eq!(
            append(ExpectedRevision::NoStream, 0)
                .await
                .unwrap()
                .first_position,
            1
        );
        assert!(matches!(
            append(ExpectedRevision::NoStream, 1).await,
            Err(AppendError::WrongExpectedRevision {
                current: Some(0),
                ..
            })
        ));
        assert!(matches!(
            append(ExpectedRevision::Exact(5), 1).await,
            Err(AppendError::WrongExpectedRevision {
                current: Some(0),
                ..
            })
        ));
        let outcome = append(ExpectedRevision::Exact(0), 1).await.unwrap();
        assert_eq!((outcome.first_position, outcome.first_revision), (2, 1));
        let outcome = append(ExpectedRevision::Exists, 2).await.unwrap();
        assert_eq!((outcome.first_position, outcome.first_revision), (3, 2));
        assert_eq!(*log.head().borrow(), 3);
    });
}

#[test]
fn a_retried_batch_is_not_written_twice() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let (log, _writer) = Log::open(dir.path()).unwrap();
        let ids = [Uuid::new_v4(), Uuid::new_v4()];
        let batch = |expected| {
            request(
                "cart-9",
                expected,
                vec![event(Some(ids[0]), 0), event(Some(ids[1]), 1)],
            )
        };
        let first = log.append(batch(ExpectedRevision::NoStream)).await.unwrap();
        log.append(request(
            "cart-9",
            ExpectedRevision::Any,
            vec![event(None, 2)],
        ))
        .await
        .unwrap();
        let retry = log.append(batch(ExpectedRevision::NoStream)).await.unwrap();
        assert!(retry.deduplicated);
        assert_eq!(
            (retry.first_position, retry.first_revision),
            (first.first_position, first.first_revision)
        );
        let retry = log.append(batch(ExpectedRevision::Any)).await.unwrap();
        assert!(retry.deduplicated);
        // Same ids, but the expectation shows it is not a retry of that append.
        assert!(matches!(
            log.append(batch(ExpectedRevision::Exact(0))).await,
            Err(AppendError::IdConflict { .. })
        ));
        // Same ids in another stream, or only part of the batch: a conflict, never a copy.
        let other = request(
            "cart-10",
            ExpectedRevision::Any,
            vec![event(Some(ids[0]), 0)],
        );
        assert!(matches!(
            log.append(other).await,
            Err(AppendError::IdConflict { .. })
        ));
        let reordered = request(
            "cart-9",
            ExpectedRevision::Any,
            vec![event(Some(ids[1]), 1), event(Some(ids[0]), 0)],
        );
        assert!(matches!(
            log.append(reordered).await,
            Err(AppendError::IdConflict { .. })
        ));
        // A retry of the tail of a batch is still a retry: the event is there, in sequence.
        let tail = request(
            "cart-9",
            ExpectedRevision::Any,
            vec![event(Some(ids[1]), 1)],
        );
        let tail = log.append(tail).await.unwrap();
        assert!(tail.deduplicated);
        assert_eq!((tail.first_position, tail.first_revision), (2, 1));
        let mixed = request(
            "cart-9",
            ExpectedRevision::Any,
            vec![event(Some(ids[0]), 0), event(Some(Uuid::new_v4()), 1)],
        );
        assert!(matches!(
            log.append(mixed).await,
            Err(AppendError::IdConflict { .. })
        ));
        assert_eq!(read_all(&log, &Source::All, Direction::Forward).len(), 3);
    });
}
