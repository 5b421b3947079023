//! Reads: streams and categories through their extents, reads racing flushes, byte budgets.

use super::*;

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
