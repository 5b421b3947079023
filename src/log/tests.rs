use std::collections::BTreeMap;

use proptest::prelude::*;
use uuid::Uuid;

use super::*;

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

#[test]
fn stream_and_category_reads_walk_extents_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let (log, _writer) = Log::open(dir.path()).unwrap();
        // Interleave batches of different sizes over two streams of one category.
        for (stream, size) in [
            ("order-1", 3),
            ("order-2", 1),
            ("user-1", 2),
            ("order-1", 2),
        ] {
            let events = (0..size).map(|n| event(None, n)).collect();
            log.append(request(stream, ExpectedRevision::Any, events))
                .await
                .unwrap();
        }
        let reader = log.reader();
        let positions = |source: &Source, from, direction, limit| {
            reader
                .read(source, from, direction, limit, u64::MAX)
                .unwrap()
                .map(|events| events.iter().map(|e| e.position).collect::<Vec<_>>())
        };
        let order_1 = Source::Stream(StreamName::new("order-1").unwrap());
        let order = Source::Category("order".into());
        assert_eq!(
            positions(&order_1, None, Direction::Forward, 10),
            Some(vec![1, 2, 3, 7, 8])
        );
        assert_eq!(
            positions(&order_1, Some(2), Direction::Forward, 2),
            Some(vec![3, 7])
        );
        assert_eq!(
            positions(&order_1, Some(3), Direction::Backward, 3),
            Some(vec![7, 3, 2])
        );
        assert_eq!(
            positions(&order_1, None, Direction::Backward, 1),
            Some(vec![8])
        );
        assert_eq!(
            positions(&order, Some(2), Direction::Forward, 10),
            Some(vec![2, 3, 4, 7, 8])
        );
        assert_eq!(
            positions(&order, Some(6), Direction::Backward, 10),
            Some(vec![4, 3, 2, 1])
        );
        assert_eq!(
            positions(
                &Source::Category("nope".into()),
                None,
                Direction::Forward,
                10
            ),
            None
        );
        assert_eq!(
            positions(&Source::All, Some(7), Direction::Forward, 10),
            Some(vec![7, 8])
        );
        assert_eq!(
            positions(&Source::All, Some(9), Direction::Forward, 10),
            Some(vec![])
        );
        let revisions: Vec<u64> = read_all(&log, &order_1, Direction::Forward)
            .iter()
            .map(|e| e.revision)
            .collect();
        assert_eq!(revisions, vec![0, 1, 2, 3, 4]);
        assert_eq!(reader.locate(4).unwrap(), Some(("order-2".into(), 0)));
        assert_eq!(reader.locate(9).unwrap(), None);
    });
}

#[test]
fn the_log_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let written = rt.block_on(async {
        let (log, writer) = Log::open(dir.path()).unwrap();
        for n in 0..5 {
            log.append(request("s-1", ExpectedRevision::Any, vec![event(None, n)]))
                .await
                .unwrap();
        }
        let events = read_all(&log, &Source::All, Direction::Forward);
        drop(log);
        writer.join();
        events
    });
    rt.block_on(async {
        let (log, _writer) = Log::open(dir.path()).unwrap();
        assert_eq!(*log.head().borrow(), 5);
        assert_eq!(read_all(&log, &Source::All, Direction::Forward), written);
        let next = log
            .append(request(
                "s-1",
                ExpectedRevision::Exact(4),
                vec![event(None, 5)],
            ))
            .await
            .unwrap();
        assert_eq!((next.first_position, next.first_revision), (6, 5));
    });
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
fn a_lost_index_is_rebuilt_from_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let policy = FlushPolicy {
        extents: 3,
        events: 1_000,
    };
    let written = rt.block_on(async {
        let (log, writer) = Log::open_with(dir.path(), policy).unwrap();
        for n in 0..20u64 {
            let stream = ["order-1", "order-2", "user-1"][n as usize % 3];
            let events = (0..1 + n % 3).map(|i| event(None, i)).collect();
            log.append(request(stream, ExpectedRevision::Any, events))
                .await
                .unwrap();
        }
        let all = read_all(&log, &Source::All, Direction::Forward);
        drop(log);
        writer.join();
        all
    });
    store::forget_index(&dir.path().join(LOG_FILE)).unwrap();
    rt.block_on(async {
        let (log, _writer) = Log::open_with(dir.path(), policy).unwrap();
        assert_indexes_match_the_log(&log, &written);
        // Appends continue at the right revisions on top of the rebuilt tail.
        let next = log
            .append(request(
                "order-1",
                ExpectedRevision::Any,
                vec![event(None, 0)],
            ))
            .await
            .unwrap();
        let order_1 = written.iter().filter(|e| e.stream == "order-1").count() as u64;
        assert_eq!(
            (next.first_position, next.first_revision),
            (written.len() as u64 + 1, order_1)
        );
    });
}

/// Accounts are partitions of one log: each has its own positions from 1, streams, categories
/// and event ids, appends to several commit together, and all of it survives a reopen with a
/// small flush policy (so tails are flushed per partition).
#[test]
fn accounts_are_partitions_with_their_own_positions_streams_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let policy = FlushPolicy {
        extents: 2,
        events: 1_000,
    };
    let shared_id = Uuid::new_v4();
    rt.block_on(async {
        let (root, writer) = Log::open_with(dir.path(), policy).unwrap();
        let acme = root.account("acme").unwrap();
        let appends: Vec<_> = (0..30u64)
            .map(|n| {
                let log = if n % 3 == 0 {
                    root.clone()
                } else {
                    acme.clone()
                };
                let stream = ["order-1", "order-2"][n as usize % 2];
                async move {
                    log.append(request(stream, ExpectedRevision::Any, vec![event(None, n)]))
                        .await
                        .unwrap()
                }
            })
            .collect();
        futures_util::future::join_all(appends).await;
        // The same client id in two accounts is two events, not a conflict.
        for log in [&root, &acme] {
            let outcome = log
                .append(request(
                    "solo-1",
                    ExpectedRevision::NoStream,
                    vec![event(Some(shared_id), 0)],
                ))
                .await
                .unwrap();
            assert!(!outcome.deduplicated);
        }
        assert_eq!((*root.head().borrow(), *acme.head().borrow()), (11, 21));
        drop((root, acme));
        writer.join();
    });
    rt.block_on(async {
        let (root, _writer) = Log::open_with(dir.path(), policy).unwrap();
        let acme = root.account("acme").unwrap();
        for (log, count) in [(&root, 11u64), (&acme, 21)] {
            let all = read_all(log, &Source::All, Direction::Forward);
            let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
            assert_eq!(positions, (1..=count).collect::<Vec<_>>());
            assert_indexes_match_the_log(log, &all);
            assert_eq!(*log.head().borrow(), count);
        }
        let category = read_all(&acme, &Source::Category("order".into()), Direction::Forward);
        assert_eq!(category.len(), 20);
        // A new account starts empty, at position 0.
        let fresh = root.account("fresh").unwrap();
        assert_eq!(*fresh.head().borrow(), 0);
        assert!(
            fresh
                .reader()
                .read(
                    &Source::Stream(StreamName::new("order-1").unwrap()),
                    None,
                    Direction::Forward,
                    10,
                    u64::MAX
                )
                .unwrap()
                .is_none()
        );
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Under random concurrent appends, positions are gap-free, each stream's revisions are
    /// 0..n in append order, and every index read agrees with a filter of the whole log,
    /// whenever the index tail happens to be flushed, and again after a reopen.
    #[test]
    fn concurrent_appends_keep_the_log_dense(
        plans in proptest::collection::vec(
            proptest::collection::vec((0..4usize, 1..6usize, any::<bool>()), 1..12),
            1..8,
        ),
        flush_after in 1..8usize,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let streams = ["order-1", "order-2", "user-1", "solo"];
        let policy = FlushPolicy { extents: flush_after, events: 1_000_000 };
        let accepted = runtime().block_on(async {
            let (log, writer) = Log::open_with(dir.path(), policy).unwrap();
            let tasks: Vec<_> = plans.into_iter().enumerate().map(|(task, plan)| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut accepted = Vec::new();
                    for (step, (stream, size, guess)) in plan.into_iter().enumerate() {
                        // Some appends guess a revision and may lose the race.
                        let expected = if guess { ExpectedRevision::Exact(step as u64) } else { ExpectedRevision::Any };
                        let events: Vec<_> = (0..size).map(|i| event(None, (task * 1000 + step * 10 + i) as u64)).collect();
                        let ids: Vec<Uuid> = events.iter().map(|e| e.id.uuid()).collect();
                        match log.append(request(streams[stream], expected, events)).await {
                            Ok(outcome) => accepted.push((streams[stream], outcome, ids)),
                            Err(AppendError::WrongExpectedRevision { .. }) => {}
                            Err(e) => panic!("unexpected error: {e}"),
                        }
                    }
                    accepted
                })
            }).collect();
            let mut accepted = Vec::new();
            for task in tasks {
                accepted.extend(task.await.unwrap());
            }
            (accepted, read_all(&log, &Source::All, Direction::Forward), log, writer)
        });
        let (accepted, all, log, writer) = accepted;

        let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
        prop_assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>());
        prop_assert_eq!(all.len(), accepted.iter().map(|(_, _, ids)| ids.len()).sum::<usize>());
        for (stream, outcome, ids) in &accepted {
            for (i, id) in ids.iter().enumerate() {
                let stored = &all[(outcome.first_position - 1) as usize + i];
                prop_assert_eq!(&stored.id, id);
                prop_assert_eq!(stored.stream.as_str(), *stream);
                prop_assert_eq!(stored.revision, outcome.first_revision + i as u64);
            }
        }
        let mut by_stream: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for e in &all {
            by_stream.entry(e.stream.as_str()).or_default().push(e.revision);
        }
        for revisions in by_stream.values() {
            prop_assert_eq!(revisions, &(0..revisions.len() as u64).collect::<Vec<_>>());
        }
        assert_indexes_match_the_log(&log, &all);
        drop(log);
        writer.join();
        runtime().block_on(async {
            let (log, _writer) = Log::open_with(dir.path(), policy).unwrap();
            assert_indexes_match_the_log(&log, &all);
        });
    }
}

/// Readers racing the writer's flushes never see a gap, a duplicate, or a stream shrink.
#[test]
fn reads_racing_flushes_stay_consistent() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let policy = FlushPolicy {
            extents: 2,
            events: 1_000,
        };
        let (log, _writer) = Log::open_with(dir.path(), policy).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = ["order-1", "order-2"]
            .into_iter()
            .map(|stream| {
                let (log, stop) = (log.clone(), stop.clone());
                tokio::task::spawn_blocking(move || {
                    let source = Source::Stream(StreamName::new(stream).unwrap());
                    let category = Source::Category("order".into());
                    let (mut longest, mut reads) = (0, 0);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let until = *log.head().borrow();
                        let events = log
                            .reader()
                            .read(&source, None, Direction::Forward, usize::MAX, until)
                            .unwrap()
                            .unwrap_or_default();
                        let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
                        assert_eq!(revisions, (0..events.len() as u64).collect::<Vec<_>>());
                        assert!(events.len() >= longest, "{stream} shrank");
                        longest = events.len();
                        let in_category = log
                            .reader()
                            .read(&category, None, Direction::Forward, usize::MAX, until)
                            .unwrap()
                            .unwrap_or_default();
                        assert!(
                            in_category
                                .windows(2)
                                .all(|w| w[0].position < w[1].position)
                        );
                        assert!(
                            in_category.iter().filter(|e| e.stream == stream).count()
                                >= events.len()
                        );
                        reads += 1;
                    }
                    (longest, reads)
                })
            })
            .collect();
        for n in 0..400u64 {
            let stream = ["order-1", "order-2", "user-1"][n as usize % 3];
            log.append(request(stream, ExpectedRevision::Any, vec![event(None, n)]))
                .await
                .unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for reader in readers {
            let (longest, reads) = reader.await.unwrap();
            assert!(reads > 0 && longest <= 134);
        }
    });
}

#[test]
fn bounded_reads_stop_after_the_event_that_passes_the_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let (log, _writer) = Log::open(dir.path()).unwrap();
        let events = (0..6).map(|n| event(None, 1000 + n)).collect();
        log.append(request("order-1", ExpectedRevision::Any, events))
            .await
            .unwrap();
        let size = r#"{"n":1000}"#.len();
        let reader = log.reader();
        for source in [
            Source::All,
            Source::Category("order".into()),
            Source::Stream(StreamName::new("order-1").unwrap()),
        ] {
            // Two events fit in 2.5 events' bytes; the third passes the budget and ends it.
            let read = reader
                .read_bounded(
                    &source,
                    None,
                    Direction::Forward,
                    100,
                    u64::MAX,
                    size * 5 / 2,
                )
                .unwrap()
                .unwrap();
            assert_eq!(read.len(), 3, "{source:?}");
            let after = reader
                .read_after(&source, 0, (100, size * 5 / 2), u64::MAX)
                .unwrap();
            assert_eq!(after.len(), 3, "{source:?}");
            // At least one event, whatever the budget.
            let one = reader
                .read_bounded(&source, None, Direction::Backward, 100, u64::MAX, 0)
                .unwrap()
                .unwrap();
            assert_eq!(one.len(), 1, "{source:?}");
        }
    });
}

/// A crash as the disk sees it: the files copied while the writer runs (redb's header on disk
/// names its last durable commit only). Every acknowledged append is in the copy, through the
/// write-ahead segment; the file alone lacks them, so the segment is what kept them.
#[test]
fn a_crash_keeps_every_acknowledged_append_through_the_write_ahead_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (crashed, file_only) = (dir.path().join("crashed"), dir.path().join("file-only"));
    let rt = runtime();
    let policy = FlushPolicy {
        extents: 3,
        events: 1_000,
    };
    let ids: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    let (root_events, acme_events) = rt.block_on(async {
        let (root, _writer) = Log::open_with(&dir.path().join("live"), policy).unwrap();
        let acme = root.account("acme").unwrap();
        for (n, id) in ids.iter().enumerate() {
            let log = if n % 4 == 0 { &acme } else { &root };
            // Two appends in a row to each stream; the second of every other pair with an id
            // generated by the log, so that its group's frame is written before redb's
            // transaction begins (the writer's staged path), where the others' come after.
            let stream = format!("order-{}", (n / 2) % 5);
            let id = (n % 4 != 3).then_some(*id);
            log.append(request(
                &stream,
                ExpectedRevision::Any,
                vec![event(id, n as u64)],
            ))
            .await
            .unwrap();
        }
        for (to, files) in [
            (&crashed, &["log.redb", "log.wal"][..]),
            (&file_only, &["log.redb"]),
        ] {
            std::fs::create_dir_all(to).unwrap();
            for file in files {
                std::fs::copy(dir.path().join("live").join(file), to.join(file)).unwrap();
            }
        }
        let all = |log: &Log| read_all(log, &Source::All, Direction::Forward);
        (all(&root), all(&acme))
    });
    assert_eq!((root_events.len(), acme_events.len()), (30, 10));

    rt.block_on(async {
        let (root, _writer) = Log::open_with(&file_only, policy).unwrap();
        assert!(
            *root.head().borrow() < 30,
            "the appends were committed to redb durably: this test shows nothing"
        );
    });
    rt.block_on(async {
        let (root, writer) = Log::open_with(&crashed, policy).unwrap();
        let acme = root.account("acme").unwrap();
        assert_eq!(
            read_all(&root, &Source::All, Direction::Forward),
            root_events
        );
        assert_eq!(
            read_all(&acme, &Source::All, Direction::Forward),
            acme_events
        );
        assert_indexes_match_the_log(&root, &root_events);
        assert_indexes_match_the_log(&acme, &acme_events);
        // Ids came back too: a retry is recognised, and the log goes on from its head.
        let retry = root
            .append(request(
                "order-0",
                ExpectedRevision::Any,
                vec![event(Some(ids[1]), 1)],
            ))
            .await
            .unwrap();
        assert!(retry.deduplicated);
        let next = root
            .append(request(
                "order-1",
                ExpectedRevision::Any,
                vec![event(None, 99)],
            ))
            .await
            .unwrap();
        assert_eq!(next.first_position, 31);
        drop((root, acme));
        writer.join();
    });
    // Recovered once: a second open replays nothing and finds the same log.
    rt.block_on(async {
        let (root, _writer) = Log::open_with(&crashed, policy).unwrap();
        assert_eq!(*root.head().borrow(), 31);
    });
}

/// Appends event `n` alone to `stream`; returns where it landed, with what was appended.
async fn append_one(log: &Log, stream: &str, n: u64) -> (Position, String, u64) {
    let outcome = log
        .append(request(stream, ExpectedRevision::Any, vec![event(None, n)]))
        .await
        .unwrap();
    (outcome.first_position, stream.to_owned(), n)
}

/// Serial appends, a task's submitted request followed by its own append, and overlapping
/// appenders: positions stay gap-free, every answer is what the log holds, and a request a
/// task submitted (not yet answered) is never overtaken by that task's next append.
#[test]
fn serial_submitted_and_overlapping_appends_share_one_gap_free_log() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let (log, _writer) = Log::open(dir.path()).unwrap();
        let mut answered = Vec::new();
        // One task, one request at a time.
        for n in 0..20 {
            answered.push(append_one(&log, "lone-1", n).await);
        }
        // A submitted request, then the same task's append: in that order.
        let queued = log
            .submit(request(
                "mixed-1",
                ExpectedRevision::Any,
                vec![event(None, 100)],
            ))
            .await
            .unwrap();
        let next = log
            .append(request(
                "mixed-1",
                ExpectedRevision::Any,
                vec![event(None, 101)],
            ))
            .await
            .unwrap();
        let first = queued.await.unwrap();
        assert!(first.first_position < next.first_position);
        answered.push((first.first_position, "mixed-1".to_owned(), 100));
        answered.push((next.first_position, "mixed-1".to_owned(), 101));
        // Overlapping appenders.
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    let stream = format!("busy-{t}");
                    let mut answered = Vec::new();
                    for n in 0..50 {
                        answered.push(append_one(&log, &stream, n).await);
                        if n % 10 == 9 {
                            tokio::task::yield_now().await;
                        }
                    }
                    answered
                })
            })
            .collect();
        for task in tasks {
            answered.extend(task.await.unwrap());
        }
        // One appender alone again, after them.
        for n in 200..210 {
            answered.push(append_one(&log, "lone-1", n).await);
        }
        answered.sort();
        let all = read_all(&log, &Source::All, Direction::Forward);
        assert_eq!(all.len(), answered.len());
        assert_eq!(*log.head().borrow(), all.len() as u64);
        for (event, (position, stream, n)) in all.iter().zip(&answered) {
            assert_eq!(event.position, *position);
            assert_eq!(&event.stream, stream);
            assert_eq!(event.data, format!("{{\"n\":{n}}}").into_bytes());
        }
        for stream in ["lone-1", "mixed-1", "busy-3"] {
            let source = Source::Stream(StreamName::new(stream).unwrap());
            let revisions: Vec<u64> = read_all(&log, &source, Direction::Forward)
                .iter()
                .map(|e| e.revision)
                .collect();
            assert_eq!(revisions, (0..revisions.len() as u64).collect::<Vec<_>>());
        }
    });
}

/// Requests with client-chosen ids queued together with their retries and with id conflicts,
/// whichever path the writer checks them on (staged before the transaction when no id of the
/// group is stored or repeated in it, the transaction first otherwise): each original is
/// written once, each retry answered with its original's positions, each conflict refused.
#[test]
fn retries_queued_with_their_originals_are_recognised() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let (log, _writer) = Log::open(dir.path()).unwrap();
        // The streams exist, so the writer knows their lengths.
        for s in 0..4 {
            append_one(&log, &format!("pay-{s}"), 0).await;
        }
        let ids: Vec<Uuid> = (0..16).map(|_| Uuid::new_v4()).collect();
        let submit = |n: usize, stream: String| {
            log.submit(request(
                &stream,
                ExpectedRevision::Any,
                vec![event(Some(ids[n]), n as u64)],
            ))
        };
        // Originals alone, then originals with their retries and conflicts (the id in another
        // stream) and retries of the first ones, all queued before any is awaited.
        let mut queued = Vec::new();
        for n in 0..8 {
            queued.push((
                n,
                "original",
                submit(n, format!("pay-{}", n % 4)).await.unwrap(),
            ));
        }
        for n in 8..16 {
            queued.push((
                n,
                "original",
                submit(n, format!("pay-{}", n % 4)).await.unwrap(),
            ));
            queued.push((
                n,
                "retry",
                submit(n, format!("pay-{}", n % 4)).await.unwrap(),
            ));
            queued.push((
                n,
                "conflict",
                submit(n, format!("pay-{}", (n + 1) % 4)).await.unwrap(),
            ));
            let early = n - 8;
            queued.push((
                early,
                "retry",
                submit(early, format!("pay-{}", early % 4)).await.unwrap(),
            ));
        }
        let mut originals = BTreeMap::new();
        for (n, kind, answer) in queued {
            let answer = answer.await;
            match kind {
                "original" => {
                    let outcome = answer.unwrap();
                    assert!(!outcome.deduplicated, "{n}");
                    originals.insert(n, outcome.first_position);
                }
                "retry" => {
                    let outcome = answer.unwrap();
                    assert!(outcome.deduplicated, "{n}");
                    assert_eq!(Some(&outcome.first_position), originals.get(&n), "{n}");
                }
                _ => assert!(
                    matches!(answer, Err(AppendError::IdConflict { .. })),
                    "{n}: {answer:?}"
                ),
            }
        }
        let all = read_all(&log, &Source::All, Direction::Forward);
        assert_eq!(all.len(), 4 + ids.len());
        let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
        assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>());
        for (n, position) in originals {
            assert_eq!(all[position as usize - 1].id, ids[n], "{n}");
        }
    });
}

/// New streams, and streams whose lengths the writer dropped at a flush of the tail (read from
/// the index tables), get the right revisions and expected-revision checks beside streams whose
/// lengths it holds: groups of queued requests, some to one new stream twice, some with a wrong
/// expected revision.
#[test]
fn new_streams_and_streams_past_a_flush_are_checked_against_their_lengths() {
    let dir = tempfile::tempdir().unwrap();
    // A flush every three extents: most streams' next append finds its length in the tables.
    let policy = FlushPolicy {
        extents: 3,
        events: 1_000,
    };
    runtime().block_on(async {
        let (log, _writer) = Log::open_with(dir.path(), policy).unwrap();
        let mut model: BTreeMap<String, u64> = BTreeMap::new();
        let mut fresh = 0;
        for round in 0..40u64 {
            // Two old streams (if any), a new one twice, and a wrong expectation.
            // (stream, expected revision, whether it holds when the request's turn comes).
            let mut plan: Vec<(String, ExpectedRevision, bool)> = Vec::new();
            let old: Vec<String> = model.keys().cloned().collect();
            let mut planned = model.clone();
            for k in 0..2 {
                if let Some(stream) = old.get((round as usize * 7 + k * 3) % old.len().max(1)) {
                    let len = planned.get_mut(stream).unwrap();
                    plan.push((stream.clone(), ExpectedRevision::Exact(*len - 1), true));
                    *len += 1;
                }
            }
            fresh += 1;
            let new = format!("acct-{fresh}");
            plan.push((new.clone(), ExpectedRevision::NoStream, true));
            plan.push((new.clone(), ExpectedRevision::Exact(0), true));
            if let Some(stream) = old.first() {
                plan.push((stream.clone(), ExpectedRevision::NoStream, false));
            }
            let mut queued = Vec::new();
            for (stream, expected, _) in &plan {
                let answer = log
                    .submit(request(stream, *expected, vec![event(None, round)]))
                    .await
                    .unwrap();
                queued.push(answer);
            }
            for ((stream, expected, succeeds), answer) in plan.into_iter().zip(queued) {
                let answer = answer.await;
                let len = model.entry(stream.clone()).or_default();
                if succeeds {
                    let outcome = answer.unwrap_or_else(|e| panic!("{stream} {expected:?}: {e}"));
                    assert_eq!(outcome.first_revision, *len, "{stream}");
                    *len += 1;
                } else {
                    match answer {
                        Err(AppendError::WrongExpectedRevision { current, .. }) => {
                            assert_eq!(current, len.checked_sub(1), "{stream}")
                        }
                        other => panic!("{stream}: {other:?}"),
                    }
                }
            }
        }
        // What the log holds agrees: each stream's revisions run 0, 1, 2, … and the indexes match.
        let all = read_all(&log, &Source::All, Direction::Forward);
        for (stream, len) in &model {
            let name = StreamName::new(stream).unwrap();
            let events = read_all(&log, &Source::Stream(name), Direction::Forward);
            let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
            assert_eq!(revisions, (0..*len).collect::<Vec<_>>(), "{stream}");
        }
        assert_indexes_match_the_log(&log, &all);
    });
}
