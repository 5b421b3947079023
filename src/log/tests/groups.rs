//! Groups: appends queued together, concurrent and overlapping appends, retries among them.

use std::collections::BTreeMap;

use super::*;

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
