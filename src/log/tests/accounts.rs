//! Accounts as partitions of one log.

use super::*;

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
