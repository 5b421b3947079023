//! Where subscriptions' state is durable: `subscriptions.redb` in the data directory, beside
//! the log. Per subscription (keyed by account and name): its settings, its acknowledged
//! floor, the positions acknowledged above the floor, and its parked events. The AMQP fanout's
//! published-through position (its outbox mark) lives here too.
//!
//! Every write is one redb transaction committed with fsync before its caller answers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::settings::Settings;
use crate::log::Position;

/// The file's name inside the data directory.
pub const FILE: &str = "subscriptions.redb";

/// (account, name) -> settings as JSON.
const SETTINGS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("settings");
/// (account, name) -> the acknowledged floor.
const FLOORS: TableDefinition<(&str, &str), u64> = TableDefinition::new("floors");
/// (account, name, position) acknowledged above the floor.
const ACKED: TableDefinition<(&str, &str, u64), ()> = TableDefinition::new("acked");
/// (account, name, position) -> why it was parked, as JSON.
const PARKED: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("parked");
/// Outbox name -> the position published through.
const OUTBOX: TableDefinition<&str, u64> = TableDefinition::new("outbox");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("subscription storage: {0}")]
    Redb(#[from] redb::Error),
    #[error("a stored subscription record does not decode: {0}")]
    Decode(#[from] serde_json::Error),
}

from_redb!(
    StoreError:
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A parked event's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    pub reason: String,
    pub deliveries: u32,
    /// Milliseconds since the Unix epoch.
    pub parked_at: u64,
}

/// One subscription as stored.
pub struct Stored {
    pub account: String,
    pub name: String,
    pub settings: Settings,
    pub floor: Position,
    pub acked: BTreeSet<Position>,
    pub parked: BTreeMap<Position, Parked>,
}

/// One durable change of a subscription's state.
#[derive(Default, Debug)]
pub struct Delta {
    pub floor: Option<Position>,
    pub ack: Vec<Position>,
    /// Acknowledged positions the floor passed: no longer needed.
    pub unack: Vec<Position>,
    pub park: Vec<(Position, Parked)>,
    pub unpark: Vec<Position>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.floor.is_none()
            && self.ack.is_empty()
            && self.unack.is_empty()
            && self.park.is_empty()
            && self.unpark.is_empty()
    }
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the file in `dir`. Blocking.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = Database::create(dir.join(FILE))?;
        let txn = db.begin_write()?;
        txn.open_table(SETTINGS)?;
        txn.open_table(FLOORS)?;
        txn.open_table(ACKED)?;
        txn.open_table(PARKED)?;
        txn.open_table(OUTBOX)?;
        txn.commit()?;
        Ok(Store { db })
    }

    /// Every subscription stored.
    pub fn load(&self) -> Result<Vec<Stored>, StoreError> {
        let txn = self.db.begin_read()?;
        let floors = txn.open_table(FLOORS)?;
        let acked = txn.open_table(ACKED)?;
        let parked = txn.open_table(PARKED)?;
        let mut all = Vec::new();
        for item in txn.open_table(SETTINGS)?.iter()? {
            let (key, value) = item?;
            let (account, name) = key.value();
            let settings: Settings = serde_json::from_slice(value.value())?;
            let floor = floors.get((account, name))?.map_or(0, |v| v.value());
            let range = (account, name, 0)..=(account, name, u64::MAX);
            let mut acks = BTreeSet::new();
            for item in acked.range(range.clone())? {
                acks.insert(item?.0.value().2);
            }
            let mut parks = BTreeMap::new();
            for item in parked.range(range)? {
                let (key, value) = item?;
                parks.insert(key.value().2, serde_json::from_slice(value.value())?);
            }
            all.push(Stored {
                account: account.to_owned(),
                name: name.to_owned(),
                settings,
                floor,
                acked: acks,
                parked: parks,
            });
        }
        Ok(all)
    }

    /// Stores the settings; for a new subscription also its floor, and clears whatever a
    /// deleted one of the same name may have left (an ack that was being stored as it was
    /// deleted).
    pub fn put(
        &self,
        (account, name): (&str, &str),
        settings: &Settings,
        floor: Option<Position>,
    ) -> Result<(), StoreError> {
        let encoded = serde_json::to_vec(settings)?;
        let txn = self.db.begin_write()?;
        txn.open_table(SETTINGS)?
            .insert((account, name), encoded.as_slice())?;
        if let Some(floor) = floor {
            txn.open_table(FLOORS)?.insert((account, name), floor)?;
            let range = (account, name, 0)..=(account, name, u64::MAX);
            txn.open_table(ACKED)?
                .retain_in(range.clone(), |_, _| false)?;
            txn.open_table(PARKED)?.retain_in(range, |_, _| false)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes the subscription and all its state.
    pub fn delete(&self, (account, name): (&str, &str)) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(SETTINGS)?.remove((account, name))?;
        txn.open_table(FLOORS)?.remove((account, name))?;
        let range = (account, name, 0)..=(account, name, u64::MAX);
        txn.open_table(ACKED)?
            .retain_in(range.clone(), |_, _| false)?;
        txn.open_table(PARKED)?.retain_in(range, |_, _| false)?;
        txn.commit()?;
        Ok(())
    }

    /// Makes `delta` durable.
    pub fn write(&self, (account, name): (&str, &str), delta: &Delta) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        if let Some(floor) = delta.floor {
            txn.open_table(FLOORS)?.insert((account, name), floor)?;
        }
        {
            let mut acked = txn.open_table(ACKED)?;
            for &p in &delta.ack {
                acked.insert((account, name, p), ())?;
            }
            for &p in &delta.unack {
                acked.remove((account, name, p))?;
            }
        }
        {
            let mut parked = txn.open_table(PARKED)?;
            for (p, record) in &delta.park {
                parked.insert((account, name, *p), serde_json::to_vec(record)?.as_slice())?;
            }
            for &p in &delta.unpark {
                parked.remove((account, name, p))?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The outbox `name`'s published-through position (0 when it never published).
    pub fn outbox(&self, name: &str) -> Result<Position, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(OUTBOX)?.get(name)?.map_or(0, |v| v.value()))
    }

    pub fn set_outbox(&self, name: &str, position: Position) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(OUTBOX)?.insert(name, position)?;
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        serde_json::from_str(r#"{"source": "$all"}"#).unwrap()
    }

    #[test]
    fn state_round_trips_and_a_new_subscription_starts_clean() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put(("a", "s"), &settings(), Some(3)).unwrap();
        store.put(("b", "s"), &settings(), Some(0)).unwrap();
        let parked = Parked {
            reason: "bad".into(),
            deliveries: 2,
            parked_at: 1,
        };
        let delta = Delta {
            floor: Some(5),
            ack: vec![7, 9],
            park: vec![(6, parked.clone())],
            ..Delta::default()
        };
        store.write(("a", "s"), &delta).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let all = store.load().unwrap();
        let a = all.iter().find(|s| s.account == "a").unwrap();
        assert_eq!(a.floor, 5);
        assert_eq!(a.acked, BTreeSet::from([7, 9]));
        assert_eq!(a.parked, BTreeMap::from([(6, parked)]));
        let b = all.iter().find(|s| s.account == "b").unwrap();
        assert!(
            b.acked.is_empty(),
            "another account's subscription of the same name"
        );
        // Deleted, and a late write of its acks lands; a new one of the same name is clean.
        store.delete(("a", "s")).unwrap();
        store.write(("a", "s"), &delta).unwrap();
        store.put(("a", "s"), &settings(), Some(0)).unwrap();
        let a = store
            .load()
            .unwrap()
            .into_iter()
            .find(|s| s.account == "a")
            .unwrap();
        assert_eq!((a.floor, a.acked.len(), a.parked.len()), (0, 0, 0));
        store.set_outbox("x", 42).unwrap();
        assert_eq!(store.outbox("x").unwrap(), 42);
        assert_eq!(store.outbox("y").unwrap(), 0);
    }
}
