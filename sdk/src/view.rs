//! The view as a projection sees it: JSON documents under string keys, typed with serde.
//!
//! A batch's reads and writes go through an in-guest overlay. A document read or updated as a
//! type stays decoded for the rest of the batch, and every changed key is encoded and written
//! to the host once, when the batch ends. A projection that updates the same few documents
//! for thousands of events therefore pays for JSON and for host calls per key, not per event.

use std::any::{Any, TypeId};

use hashbrown::HashMap;
use hashbrown::hash_map::EntryRef;
use rustc_hash::FxBuildHasher;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// Where documents live between batches: the host's view in a component, a map in the native
/// test harness.
pub trait Backend {
    fn get(&mut self, key: &str) -> Option<Vec<u8>>;
    fn put(&mut self, key: &str, value: &[u8]);
    fn delete(&mut self, key: &str);
}

/// One document as the overlay holds it.
enum Entry {
    /// Not changed in this batch.
    Clean(Option<Vec<u8>>),
    /// Written as bytes, or deleted (`None`), in this batch.
    Written(Option<Vec<u8>>),
    /// Read or written as a type in this batch; encoded when the batch ends.
    Typed(Typed),
}

struct Typed {
    /// `value`'s type, kept beside it so that the hot path compares ids without a virtual
    /// call.
    type_id: TypeId,
    value: Box<dyn Any>,
    encode: fn(&dyn Any) -> Result<Vec<u8>, serde_json::Error>,
    changed: bool,
}

impl Typed {
    fn new<T: Serialize + 'static>(value: T, changed: bool) -> Self {
        Typed {
            type_id: TypeId::of::<T>(),
            value: Box::new(value),
            encode: encode::<T>,
            changed,
        }
    }

    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        (self.encode)(self.value.as_ref())
    }
}

/// The documents of a projection, for the length of one batch.
pub struct View<'b> {
    backend: &'b mut dyn Backend,
    /// Keyed with Fx hashing and looked up by `&str` through `entry_ref`: a batch looks keys
    /// up several times per event, each access costs one hash and one probe, and SipHash's
    /// resistance to chosen keys buys nothing inside one projection's own sandbox.
    overlay: HashMap<String, Entry, FxBuildHasher>,
}

impl<'b> View<'b> {
    pub fn new(backend: &'b mut dyn Backend) -> Self {
        View {
            backend,
            overlay: HashMap::default(),
        }
    }

    /// The document under `key`, decoded as `T`; `None` when there is none.
    pub fn get<T: Serialize + DeserializeOwned + Clone + 'static>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>, Error> {
        let entry = self.entry(key);
        Ok(typed::<T>(entry, key, false)?.map(|doc| doc.clone()))
    }

    /// Stores `doc` under `key` as JSON.
    pub fn put<T: Serialize + 'static>(&mut self, key: &str, doc: T) -> Result<(), Error> {
        // A key written again in the same batch keeps its entry: no new key, no new box.
        match self.overlay.entry_ref(key) {
            EntryRef::Occupied(mut entry) => match entry.get_mut() {
                Entry::Typed(typed) if typed.type_id == TypeId::of::<T>() => {
                    *typed
                        .value
                        .downcast_mut::<T>()
                        .expect("typed entry holds its own type") = doc;
                    typed.changed = true;
                }
                other => *other = Entry::Typed(Typed::new(doc, true)),
            },
            EntryRef::Vacant(entry) => {
                entry.insert(Entry::Typed(Typed::new(doc, true)));
            }
        }
        Ok(())
    }

    /// Changes the document under `key` in place, starting from `T::default()` when there is
    /// none, and stores it.
    pub fn update<T, R>(&mut self, key: &str, change: impl FnOnce(&mut T) -> R) -> Result<R, Error>
    where
        T: Serialize + DeserializeOwned + Default + 'static,
    {
        let entry = self.entry(key);
        if typed::<T>(entry, key, true)?.is_none() {
            *entry = Entry::Typed(Typed::new(T::default(), true));
        }
        let doc = typed::<T>(entry, key, true)?.expect("the document was just stored");
        Ok(change(doc))
    }

    /// Changes the document under `key` in place if there is one; `None` when there is not.
    pub fn update_existing<T, R>(
        &mut self,
        key: &str,
        change: impl FnOnce(&mut T) -> R,
    ) -> Result<Option<R>, Error>
    where
        T: Serialize + DeserializeOwned + 'static,
    {
        let entry = self.entry(key);
        Ok(typed::<T>(entry, key, true)?.map(change))
    }

    /// Removes the document under `key`, if any.
    pub fn delete(&mut self, key: &str) {
        self.overlay.insert(key.to_owned(), Entry::Written(None));
    }

    /// The raw bytes under `key`.
    pub fn get_bytes(&mut self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(match self.entry(key) {
            Entry::Clean(bytes) | Entry::Written(bytes) => bytes.clone(),
            Entry::Typed(typed) => Some(typed.encode()?),
        })
    }

    /// Stores raw bytes under `key`.
    pub fn put_bytes(&mut self, key: &str, value: Vec<u8>) {
        self.overlay
            .insert(key.to_owned(), Entry::Written(Some(value)));
    }

    /// Writes every document changed in this batch to the backend. The runtime calls it when
    /// the batch ends.
    pub fn flush(mut self) -> Result<(), Error> {
        self.flush_pending()
    }

    /// Sends the changes made so far to the backend and forgets them, so that a batch that
    /// touches very many documents does not hold them all in guest memory. Later reads fetch
    /// them again from the backend, which sees them.
    pub fn flush_pending(&mut self) -> Result<(), Error> {
        for (key, entry) in self.overlay.drain() {
            match entry {
                Entry::Clean(_) => {}
                Entry::Written(Some(bytes)) => self.backend.put(&key, &bytes),
                Entry::Written(None) => self.backend.delete(&key),
                Entry::Typed(typed) if typed.changed => self.backend.put(&key, &typed.encode()?),
                Entry::Typed(_) => {}
            }
        }
        Ok(())
    }

    /// The overlay's entry for `key`, fetched from the backend on first use.
    fn entry(&mut self, key: &str) -> &mut Entry {
        match self.overlay.entry_ref(key) {
            EntryRef::Occupied(entry) => entry.into_mut(),
            EntryRef::Vacant(entry) => {
                let bytes = self.backend.get(key);
                entry.insert(Entry::Clean(bytes))
            }
        }
    }
}

/// The document in `entry` as a `T`, decoding it on first use; `None` when there is none.
/// `mark` records that the caller may change it.
fn typed<'e, T>(entry: &'e mut Entry, key: &str, mark: bool) -> Result<Option<&'e mut T>, Error>
where
    T: Serialize + DeserializeOwned + 'static,
{
    let is_t = matches!(entry, Entry::Typed(typed) if typed.type_id == TypeId::of::<T>());
    if !is_t {
        let (bytes, was_written) = match entry {
            Entry::Clean(bytes) => (bytes.take(), false),
            Entry::Written(bytes) => (bytes.take(), true),
            Entry::Typed(typed) => (Some(typed.encode()?), typed.changed),
        };
        let Some(bytes) = bytes else {
            *entry = if was_written {
                Entry::Written(None)
            } else {
                Entry::Clean(None)
            };
            return Ok(None);
        };
        let doc: T = serde_json::from_slice(&bytes)
            .map_err(|e| Error::new(format!("document {key:?} is not the expected shape: {e}")))?;
        *entry = Entry::Typed(Typed::new(doc, was_written));
    }
    let Entry::Typed(typed) = entry else {
        unreachable!("made typed above")
    };
    typed.changed |= mark;
    Ok(typed.value.downcast_mut::<T>())
}

fn encode<T: Serialize + 'static>(value: &dyn Any) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(
        value
            .downcast_ref::<T>()
            .expect("typed entry holds its own type"),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Default)]
    struct Map {
        docs: BTreeMap<String, Vec<u8>>,
        calls: usize,
    }

    impl Backend for Map {
        fn get(&mut self, key: &str) -> Option<Vec<u8>> {
            self.calls += 1;
            self.docs.get(key).cloned()
        }
        fn put(&mut self, key: &str, value: &[u8]) {
            self.calls += 1;
            self.docs.insert(key.into(), value.to_vec());
        }
        fn delete(&mut self, key: &str) {
            self.calls += 1;
            self.docs.remove(key);
        }
    }

    #[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
    struct Counter {
        n: u64,
    }

    #[test]
    fn updates_are_written_once_per_key() {
        let mut map = Map::default();
        let mut view = View::new(&mut map);
        for _ in 0..1000 {
            view.update("c", |c: &mut Counter| c.n += 1).unwrap();
        }
        view.flush().unwrap();
        assert_eq!(map.docs["c"], br#"{"n":1000}"#);
        assert_eq!(map.calls, 2, "one get, one put");
    }

    #[test]
    fn reads_see_earlier_writes_and_deletes() {
        let mut map = Map::default();
        map.docs.insert("a".into(), br#"{"n":1}"#.to_vec());
        let mut view = View::new(&mut map);
        assert_eq!(view.get::<Counter>("a").unwrap(), Some(Counter { n: 1 }));
        view.delete("a");
        assert_eq!(view.get::<Counter>("a").unwrap(), None);
        view.put_bytes("b", br#"{"n":5}"#.to_vec());
        assert_eq!(
            view.update_existing("b", |c: &mut Counter| c.n).unwrap(),
            Some(5)
        );
        assert_eq!(
            view.update_existing("z", |c: &mut Counter| c.n).unwrap(),
            None
        );
        view.flush().unwrap();
        assert!(!map.docs.contains_key("a"));
        assert_eq!(map.docs["b"], br#"{"n":5}"#);
        assert!(!map.docs.contains_key("z"));
    }

    #[test]
    fn a_key_put_again_keeps_the_last_document_of_any_type() {
        let mut map = Map::default();
        let mut view = View::new(&mut map);
        for n in 0..3 {
            view.put("a", Counter { n }).unwrap();
        }
        view.put_bytes("b", b"[]".to_vec());
        view.put("b", Counter { n: 7 }).unwrap();
        view.put("c", Counter { n: 1 }).unwrap();
        view.put("c", "text").unwrap();
        view.flush().unwrap();
        assert_eq!(map.docs["a"], br#"{"n":2}"#);
        assert_eq!(map.docs["b"], br#"{"n":7}"#);
        assert_eq!(map.docs["c"], br#""text""#);
        assert_eq!(map.calls, 3, "one put per key, no gets");
    }

    #[test]
    fn unread_unchanged_documents_are_not_rewritten() {
        let mut map = Map::default();
        map.docs.insert("a".into(), br#"{"n":1}"#.to_vec());
        let mut view = View::new(&mut map);
        view.get::<Counter>("a").unwrap();
        view.flush().unwrap();
        assert_eq!(map.calls, 1);
    }

    #[test]
    fn a_document_of_the_wrong_shape_is_an_error() {
        let mut map = Map::default();
        map.docs.insert("a".into(), b"[1,2]".to_vec());
        let mut view = View::new(&mut map);
        let error = view.get::<Counter>("a").unwrap_err();
        assert!(error.to_string().contains("\"a\""), "{error}");
    }
}
