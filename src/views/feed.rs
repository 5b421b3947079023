//! A view's change feed: the changes of a serving version's recent commits, kept in memory
//! so that a client following the view (`GET /projections/{name}/changes`) can resume.
//!
//! The commit thread publishes each commit's changes after it committed; readers copy what
//! they have not seen under the lock and wait on a `watch` for more. The feed keeps the last
//! `retention` changes (whole commits): a reader resuming from a position older than that,
//! or from before the version started serving (a restart, a swap), is told to start over by
//! reading the view again (`Gap`).

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::log::Position;
use crate::runtime::Changes;

/// Changes kept by default, per projection.
pub const DEFAULT_RETENTION: usize = 100_000;

/// One commit's changes.
#[derive(Clone)]
pub struct Commit {
    pub position: Position,
    pub changes: Arc<Changes>,
}

pub struct ChangeFeed {
    /// The retained commits. Held briefly (a push, or a copy of `Arc`s); never across I/O.
    state: Mutex<FeedState>,
    /// Bumped after each publish, and when the feed closes.
    published: watch::Sender<u64>,
    retention: usize,
}

struct FeedState {
    /// `None` until the version serves, and again once it is retired.
    since: Option<Position>,
    /// The position of the last commit published (or `since`).
    position: Position,
    commits: VecDeque<Commit>,
    /// Changes in `commits`.
    count: usize,
    closed: bool,
}

/// Why a reader cannot go on from where it stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Gap {
    /// Changes after the reader's position are no longer retained (or were never seen by
    /// this version): read the view again, then follow from its position.
    TooOld { position: Position },
    /// The version no longer serves (swapped out or removed).
    Closed,
}

impl ChangeFeed {
    pub fn new(retention: usize) -> Self {
        ChangeFeed {
            state: Mutex::new(FeedState {
                since: None,
                position: 0,
                commits: VecDeque::new(),
                count: 0,
                closed: false,
            }),
            published: watch::Sender::new(0),
            retention,
        }
    }

    /// The version starts serving at `checkpoint`: every later commit is published.
    pub fn open(&self, checkpoint: Position) {
        let mut state = self.state.lock();
        if state.since.is_none() && !state.closed {
            state.since = Some(checkpoint);
            state.position = checkpoint;
        }
    }

    /// The version no longer serves: readers are told.
    pub fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        state.since = None;
        state.commits.clear();
        state.count = 0;
        drop(state);
        self.published.send_modify(|n| *n += 1);
    }

    /// Publishes a commit that reached `position` (a no-op unless serving).
    pub fn publish(&self, position: Position, changes: &Arc<Changes>) {
        let mut state = self.state.lock();
        if state.since.is_none() {
            return;
        }
        state.position = position;
        if changes.is_empty() {
            return;
        }
        state.count += changes.len();
        state.commits.push_back(Commit {
            position,
            changes: changes.clone(),
        });
        while state.count > self.retention {
            let Some(oldest) = state.commits.pop_front() else {
                break;
            };
            state.count -= oldest.changes.len();
            state.since = Some(oldest.position);
        }
        drop(state);
        self.published.send_modify(|n| *n += 1);
    }

    /// Where the feed starts: changes after it are retained.
    pub fn since(&self) -> Result<Position, Gap> {
        self.state.lock().since.ok_or(Gap::Closed)
    }

    /// The position of the last commit published.
    pub fn position(&self) -> Result<Position, Gap> {
        let state = self.state.lock();
        match state.since {
            Some(_) => Ok(state.position),
            None => Err(Gap::Closed),
        }
    }

    /// Commits after `after` (exclusive), oldest first, up to `max` of them.
    pub fn after(&self, after: Position, max: usize) -> Result<Vec<Commit>, Gap> {
        let state = self.state.lock();
        let Some(since) = state.since else {
            return Err(Gap::Closed);
        };
        if after < since {
            return Err(Gap::TooOld {
                position: state.position,
            });
        }
        let start = state.commits.partition_point(|c| c.position <= after);
        Ok(state.commits.range(start..).take(max).cloned().collect())
    }

    /// Changes each time something is published, and when the feed closes.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: &[&str]) -> Arc<Changes> {
        Arc::new(
            keys.iter()
                .map(|k| (k.to_string(), Some(b"1".to_vec())))
                .collect(),
        )
    }

    #[test]
    fn retains_whole_commits_and_tells_old_readers_to_start_over() {
        let feed = ChangeFeed::new(3);
        feed.publish(5, &set(&["a"]));
        assert_eq!(
            feed.after(0, 10).err(),
            Some(Gap::Closed),
            "not serving yet"
        );
        feed.open(10);
        assert_eq!(feed.after(9, 10).err(), Some(Gap::TooOld { position: 10 }));
        feed.publish(11, &set(&["a", "b"]));
        feed.publish(12, &Arc::default());
        feed.publish(13, &set(&["c"]));
        let got: Vec<Position> = feed
            .after(10, 10)
            .unwrap()
            .iter()
            .map(|c| c.position)
            .collect();
        assert_eq!(got, vec![11, 13]);
        assert_eq!(feed.after(11, 10).unwrap()[0].position, 13);
        feed.publish(14, &set(&["d"]));
        // Four changes, three kept: commit 11 went, so a reader at 10 starts over.
        assert_eq!(feed.after(10, 10).err(), Some(Gap::TooOld { position: 14 }));
        assert_eq!(feed.after(11, 10).unwrap().len(), 2);
        feed.close();
        assert_eq!(feed.after(14, 10).err(), Some(Gap::Closed));
    }
}
