//! Hot documents of one view in memory, so that a point read of one needs no read
//! transaction and no hop to a blocking thread.
//!
//! The cache holds only what was read from the file (a read fills it), never what a batch
//! wrote: a rebuild writes every document once and nobody reads it until the swap. A commit
//! removes the keys it changed (or everything, for a large batch) and bumps the cache's
//! *version*; a read fills the cache only if no commit came between the version it saw
//! before its snapshot and the fill, so a value read from an older snapshot never lands after
//! the commit that replaced it.

use std::collections::HashMap;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::runtime::Changes;

/// Bytes of documents a view keeps in memory: a hot set of thousands of documents, while a
/// server with a hundred projections holds at most 400 MiB in these caches.
const CAPACITY: usize = 4 * 1024 * 1024;
/// A commit that changes more keys than this empties the cache instead of looking each up.
const LARGE_BATCH: usize = 1024;

#[derive(Default)]
pub struct DocumentCache {
    /// Guards the documents, their size and the version. Held for one lookup, one fill or one
    /// commit's removals (at most [`LARGE_BATCH`] of them), never across I/O, with no other
    /// lock taken inside; the HTTP handlers take it on the reactor for that long.
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    documents: HashMap<Box<str>, Bytes>,
    bytes: usize,
    /// Commits (and reopens) so far.
    version: u64,
}

impl DocumentCache {
    /// The document under `key`, if the cache holds it.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.inner.lock().documents.get(key).cloned()
    }

    /// The version to pass to [`DocumentCache::fill`]: taken before the read's snapshot.
    pub fn version(&self) -> u64 {
        self.inner.lock().version
    }

    /// Keeps `value`, read under `key` from a snapshot begun after [`DocumentCache::version`]
    /// returned `version`, unless a commit came since.
    pub fn fill(&self, version: u64, key: &str, value: Bytes) {
        if value.len() > CAPACITY / 64 {
            return;
        }
        let mut inner = self.inner.lock();
        if inner.version != version {
            return;
        }
        if inner.bytes + value.len() > CAPACITY {
            // Make room: drop about a quarter, in the map's (arbitrary) order.
            let target = CAPACITY * 3 / 4;
            let Inner {
                documents, bytes, ..
            } = &mut *inner;
            documents.retain(|k, v| {
                if *bytes <= target {
                    return true;
                }
                *bytes -= k.len() + v.len();
                false
            });
        }
        let added = key.len() + value.len();
        if let Some(old) = inner.documents.insert(key.into(), value) {
            inner.bytes -= key.len() + old.len();
        }
        inner.bytes += added;
    }

    /// After a commit of `changes`: forgets what they changed.
    pub fn committed(&self, changes: &Changes) {
        let mut inner = self.inner.lock();
        inner.version += 1;
        if inner.documents.is_empty() {
            return;
        }
        if changes.len() > LARGE_BATCH {
            inner.documents.clear();
            inner.bytes = 0;
            return;
        }
        for key in changes.keys() {
            if let Some(old) = inner.documents.remove(key.as_str()) {
                inner.bytes -= key.len() + old.len();
            }
        }
    }

    /// After the file was reopened (rolled back to its last durable commit): forgets all.
    pub fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.version += 1;
        inner.documents.clear();
        inner.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str) -> Changes {
        [(key.to_owned(), Some(b"new".to_vec()))]
            .into_iter()
            .collect()
    }

    #[test]
    fn a_fill_from_before_a_commit_is_dropped() {
        let cache = DocumentCache::default();
        let before = cache.version();
        cache.fill(before, "a", Bytes::from_static(b"1"));
        assert_eq!(cache.get("a").as_deref(), Some(&b"1"[..]));

        // A read that began before a commit of "a" must not put its old value back.
        let stale = cache.version();
        cache.committed(&change("a"));
        assert_eq!(cache.get("a"), None);
        cache.fill(stale, "a", Bytes::from_static(b"1"));
        assert_eq!(cache.get("a"), None);
        cache.fill(cache.version(), "a", Bytes::from_static(b"2"));
        assert_eq!(cache.get("a").as_deref(), Some(&b"2"[..]));

        // A commit leaves other keys; a reopen drops everything.
        cache.fill(cache.version(), "b", Bytes::from_static(b"3"));
        cache.committed(&change("a"));
        assert_eq!(cache.get("b").as_deref(), Some(&b"3"[..]));
        cache.clear();
        assert_eq!(cache.get("b"), None);
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = DocumentCache::default();
        let value = Bytes::from(vec![b'x'; 10_000]);
        for n in 0..1000 {
            cache.fill(cache.version(), &format!("k{n}"), value.clone());
            assert!(cache.inner.lock().bytes <= CAPACITY);
        }
        let inner = cache.inner.lock();
        let counted: usize = inner.documents.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!(counted, inner.bytes);
        assert!(inner.documents.len() > 100);
    }

    #[test]
    fn a_large_batch_empties_the_cache() {
        let cache = DocumentCache::default();
        cache.fill(cache.version(), "a", Bytes::from_static(b"1"));
        let large: Changes = (0..=LARGE_BATCH).map(|n| (format!("x{n}"), None)).collect();
        cache.committed(&large);
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.inner.lock().bytes, 0);
    }
}
