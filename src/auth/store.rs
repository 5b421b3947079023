//! The key store: accounts and their API keys in `<data>/auth.redb`, with every key held in
//! memory too, so that checking a request's token takes no lock and no I/O.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::token;
use super::{AuthError, Principal, ROOT, Scope};
use crate::account::{Account, Limits};

const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
/// Account name → `Account` (JSON).
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");

/// The file, in the data directory.
pub const AUTH_FILE: &str = "auth.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key storage: {0}")]
    Redb(#[from] redb::Error),
    #[error("no account named {0:?}")]
    UnknownAccount(String),
    #[error("an account named {0:?} exists already")]
    AccountExists(String),
    #[error("an account name is 1 to 64 of a-z, 0-9, - and _")]
    InvalidAccountName,
    #[error("only keys of the root account may hold the admin scope")]
    AdminOutsideRoot,
    #[error("a key needs at least one scope")]
    NoScope,
    #[error("no key with id {0:?}")]
    UnknownKey(String),
    #[error("no randomness for a new key: {0}")]
    Random(String),
    #[error("encoding a key record: {0}")]
    Encode(#[from] serde_json::Error),
}

from_redb!(
    StoreError:
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A key as stored: never its secret, only the secret's hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct KeyRecord {
    id: String,
    account: String,
    scopes: Vec<Scope>,
    label: Option<String>,
    /// Seconds since the Unix epoch.
    created_at: u64,
    expires_at: Option<u64>,
    revoked_at: Option<u64>,
    /// SHA-256 of the secret, hex.
    hash: String,
}

/// What the API shows of a key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct KeyInfo {
    pub id: String,
    pub account: String,
    pub scopes: Vec<Scope>,
    pub label: Option<String>,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub revoked_at: Option<u64>,
}

/// What a new key is asked to be.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct NewKey {
    pub account: String,
    pub scopes: Vec<Scope>,
    pub expires_in_days: Option<u64>,
    pub label: Option<String>,
}

/// A key as a request's check needs it: the record, its hash decoded, and the principal a
/// request made with it carries (shared, not rebuilt per request).
struct LiveKey {
    record: KeyRecord,
    hash: [u8; 32],
    principal: Arc<Principal>,
}

impl LiveKey {
    fn new(record: KeyRecord) -> Self {
        LiveKey {
            hash: decode_hash(&record.hash).unwrap_or_default(),
            principal: Arc::new(Principal {
                key_id: record.id.clone(),
                account: record.account.clone(),
                scopes: record.scopes.clone(),
            }),
            record,
        }
    }
}

pub struct KeyStore {
    db: Database,
    /// Every account by name, replaced whole by each change; read without a lock.
    accounts: ArcSwap<BTreeMap<String, Account>>,
    /// Every key by id, replaced whole by each change; read without a lock.
    keys: ArcSwap<HashMap<String, Arc<LiveKey>>>,
    /// Held by a change (of a key or an account) across its write: one at a time. Taken
    /// first: `set_limits` applies new limits to the tenant under it (which takes the
    /// tenant's quota lock, and nothing else).
    writing: Mutex<()>,
    /// Bumped by each revocation, so that open live subscriptions check their key again.
    revocations: watch::Sender<u64>,
}

impl KeyStore {
    /// Opens (or creates) the store in `dir`. Blocking.
    pub fn open(dir: &Path) -> Result<Arc<Self>, StoreError> {
        let db = Database::create(dir.join(AUTH_FILE))?;
        let txn = db.begin_write()?;
        txn.open_table(KEYS)?;
        {
            // The default account exists from the start (and in data made before accounts).
            let mut accounts = txn.open_table(ACCOUNTS)?;
            if accounts.get(ROOT)?.is_none() {
                let root = Account {
                    name: ROOT.to_owned(),
                    created_at: 0,
                    limits: Limits::default(),
                };
                accounts.insert(ROOT, serde_json::to_vec(&root)?.as_slice())?;
            }
        }
        txn.commit()?;
        let mut keys = HashMap::new();
        let mut accounts = BTreeMap::new();
        {
            let txn = db.begin_read()?;
            for item in txn.open_table(ACCOUNTS)?.iter()? {
                let (name, account) = item?;
                let account: Account = serde_json::from_slice(account.value())?;
                accounts.insert(name.value().to_owned(), account);
            }
            for item in txn.open_table(KEYS)?.iter()? {
                let (id, record) = item?;
                let record: KeyRecord = serde_json::from_slice(record.value())?;
                keys.insert(id.value().to_owned(), Arc::new(LiveKey::new(record)));
            }
        }
        Ok(Arc::new(KeyStore {
            db,
            accounts: ArcSwap::from_pointee(accounts),
            keys: ArcSwap::from_pointee(keys),
            writing: Mutex::new(()),
            revocations: watch::Sender::new(0),
        }))
    }

    /// Whether no key was ever created (the server then makes the root key).
    pub fn is_empty(&self) -> bool {
        self.keys.load().is_empty()
    }

    /// Every account, by name.
    pub fn accounts(&self) -> Vec<Account> {
        self.accounts.load().values().cloned().collect()
    }

    pub fn account(&self, name: &str) -> Option<Account> {
        self.accounts.load().get(name).cloned()
    }

    /// Creates an account. Blocking: it commits.
    pub fn create_account(&self, name: &str, limits: Limits) -> Result<Account, StoreError> {
        if !crate::account::valid_name(name) {
            return Err(StoreError::InvalidAccountName);
        }
        let _writing = self.writing.lock();
        if self.accounts.load().contains_key(name) {
            return Err(StoreError::AccountExists(name.to_owned()));
        }
        let account = Account {
            name: name.to_owned(),
            created_at: now_secs(),
            limits,
        };
        self.write_account(&account)?;
        Ok(account)
    }

    /// Replaces an account's limits and hands the stored account to `apply` before the next
    /// change may start, so that whoever applies limits applies them in the order they were
    /// stored. Blocking: it commits.
    pub fn set_limits(
        &self,
        name: &str,
        limits: Limits,
        apply: impl FnOnce(&Account),
    ) -> Result<Account, StoreError> {
        let _writing = self.writing.lock();
        let mut account = self
            .account(name)
            .ok_or_else(|| StoreError::UnknownAccount(name.to_owned()))?;
        account.limits = limits;
        self.write_account(&account)?;
        apply(&account);
        Ok(account)
    }

    /// Stores `account`; the caller holds `writing`.
    fn write_account(&self, account: &Account) -> Result<(), StoreError> {
        let encoded = serde_json::to_vec(account)?;
        let txn = self.db.begin_write()?;
        txn.open_table(ACCOUNTS)?
            .insert(account.name.as_str(), encoded.as_slice())?;
        txn.commit()?;
        let mut accounts = BTreeMap::clone(&self.accounts.load());
        accounts.insert(account.name.clone(), account.clone());
        self.accounts.store(Arc::new(accounts));
        Ok(())
    }

    /// Creates a key and returns it with its token, which is not stored and never shown
    /// again. Blocking: it commits.
    pub fn create(&self, new: &NewKey) -> Result<(KeyInfo, String), StoreError> {
        if !self.accounts.load().contains_key(&new.account) {
            return Err(StoreError::UnknownAccount(new.account.clone()));
        }
        if new.scopes.is_empty() {
            return Err(StoreError::NoScope);
        }
        if new.scopes.contains(&Scope::Admin) && new.account != ROOT {
            return Err(StoreError::AdminOutsideRoot);
        }
        let minted = token::mint().map_err(|e| StoreError::Random(e.to_string()))?;
        let now = now_secs();
        let mut scopes = new.scopes.clone();
        scopes.sort();
        scopes.dedup();
        let record = KeyRecord {
            id: minted.id.clone(),
            account: new.account.clone(),
            scopes,
            label: new.label.clone(),
            created_at: now,
            expires_at: new
                .expires_in_days
                .map(|days| now.saturating_add(days.saturating_mul(86_400))),
            revoked_at: None,
            hash: minted.hash.iter().map(|b| format!("{b:02x}")).collect(),
        };
        self.write(record.clone())?;
        Ok((info(&record), minted.token))
    }

    /// Every key (of `account`), oldest first; never a secret.
    pub fn list(&self, account: Option<&str>) -> Vec<KeyInfo> {
        let keys = self.keys.load();
        let mut out: Vec<KeyInfo> = keys
            .values()
            .map(|k| &k.record)
            .filter(|k| account.is_none_or(|a| k.account == a))
            .map(info)
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        out
    }

    /// Revokes a key: the next request with it is refused, and live subscriptions opened with
    /// it are closed. Blocking: it commits.
    pub fn revoke(&self, id: &str) -> Result<KeyInfo, StoreError> {
        let mut record = self
            .keys
            .load()
            .get(id)
            .map(|k| k.record.clone())
            .ok_or_else(|| StoreError::UnknownKey(id.to_owned()))?;
        if record.revoked_at.is_none() {
            record.revoked_at = Some(now_secs());
            self.write(record.clone())?;
            self.revocations.send_modify(|n| *n += 1);
        }
        Ok(info(&record))
    }

    /// Who presents `token`, if it is a live key.
    pub fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let presented = token::parse(token).ok_or(AuthError::Malformed)?;
        let keys = self.keys.load();
        let key = keys.get(presented.id).ok_or(AuthError::Unknown)?;
        if !presented.matches(&key.hash) {
            return Err(AuthError::Unknown);
        }
        if key.record.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if key.record.expires_at.is_some_and(|at| at <= now_secs()) {
            return Err(AuthError::Expired);
        }
        Ok(key.principal.clone())
    }

    /// Whether the key is still live (not revoked, not expired).
    pub fn is_live(&self, key_id: &str) -> bool {
        self.keys.load().get(key_id).is_some_and(|k| {
            k.record.revoked_at.is_none() && k.record.expires_at.is_none_or(|at| at > now_secs())
        })
    }

    /// Changes when a key is revoked.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    fn write(&self, record: KeyRecord) -> Result<(), StoreError> {
        let _writing = self.writing.lock();
        let encoded = serde_json::to_vec(&record)?;
        let txn = self.db.begin_write()?;
        txn.open_table(KEYS)?
            .insert(record.id.as_str(), encoded.as_slice())?;
        txn.commit()?;
        let mut keys = HashMap::clone(&self.keys.load());
        keys.insert(record.id.clone(), Arc::new(LiveKey::new(record)));
        self.keys.store(Arc::new(keys));
        Ok(())
    }
}

fn info(record: &KeyRecord) -> KeyInfo {
    KeyInfo {
        id: record.id.clone(),
        account: record.account.clone(),
        scopes: record.scopes.clone(),
        label: record.label.clone(),
        created_at: record.created_at,
        expires_at: record.expires_at,
        revoked_at: record.revoked_at,
    }
}

fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_key(scopes: &[Scope], expires_in_days: Option<u64>) -> NewKey {
        NewKey {
            account: ROOT.into(),
            scopes: scopes.to_vec(),
            expires_in_days,
            label: Some("test".into()),
        }
    }

    #[test]
    fn keys_verify_until_revoked_or_expired_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        assert!(store.is_empty());
        let (key, token) = store.create(&new_key(&[Scope::Read], None)).unwrap();
        let principal = store.verify(&token).unwrap();
        assert_eq!(
            (principal.key_id.as_str(), principal.scopes.as_slice()),
            (key.id.as_str(), &[Scope::Read][..])
        );
        let (_, expired) = store.create(&new_key(&[Scope::Read], Some(0))).unwrap();
        assert!(matches!(store.verify(&expired), Err(AuthError::Expired)));
        // Another secret for the same key id: the first character of the secret changed.
        let at = "pk_0123456789abcdef_".len();
        let other = if token.as_bytes()[at] == b'A' {
            "B"
        } else {
            "A"
        };
        let wrong = format!("{}{other}{}", &token[..at], &token[at + 1..]);
        assert!(matches!(store.verify(&wrong), Err(AuthError::Unknown)));
        drop(store);
        let store = KeyStore::open(dir.path()).unwrap();
        assert!(store.verify(&token).is_ok(), "keys survive a reopen");
        store.revoke(&key.id).unwrap();
        assert!(matches!(store.verify(&token), Err(AuthError::Revoked)));
        drop(store);
        let store = KeyStore::open(dir.path()).unwrap();
        assert!(matches!(store.verify(&token), Err(AuthError::Revoked)));
        assert_eq!(store.list(None).len(), 2);
    }

    #[test]
    fn admin_is_for_root_only_and_a_key_needs_a_scope() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        assert!(matches!(
            store.create(&new_key(&[], None)),
            Err(StoreError::NoScope)
        ));
        let elsewhere = NewKey {
            account: "shop".into(),
            ..new_key(&[Scope::Admin], None)
        };
        assert!(matches!(
            store.create(&elsewhere),
            Err(StoreError::UnknownAccount(_))
        ));
    }
}
