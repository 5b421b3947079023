//! The accounts being served. Each account is a tenant: its partition of the log, its own set
//! of projections (its own folder, views and worker threads, on the one shared engine), and
//! its limits. The HTTP API serves a request from its key's account's tenant only, which is
//! how one account never sees another's events, projections or views.
//!
//! Where an account's files live ([`Layout`]): the default account keeps the layout a server
//! had before accounts (projections at the top of the projections folder, views in
//! `<data>/views`), so an older data directory is served unchanged; any other account has
//! `<projections>/<account>/` and `<data>/accounts/<account>/views`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::account::{self, Account, Limits};
use crate::log::{Log, StorageError};
use crate::runtime::Runtime;
use crate::scheduler::{Projections, SchedulerConfig, SchedulerError};
use crate::views::Quota;

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("creating {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
}

/// Where each account's files live.
#[derive(Clone, Debug)]
pub struct Layout {
    pub data: PathBuf,
    pub projections: PathBuf,
}

impl Layout {
    /// The folder of the account's `<name>.wasm` files.
    pub fn projections(&self, account: &str) -> PathBuf {
        if account == account::DEFAULT {
            self.projections.clone()
        } else {
            self.projections.join(account)
        }
    }

    /// Where the account's view databases live.
    pub fn views(&self, account: &str) -> PathBuf {
        if account == account::DEFAULT {
            self.data.join("views")
        } else {
            self.data.join("accounts").join(account).join("views")
        }
    }

    /// The compiled-component cache, shared: a component is compiled once whoever deploys it.
    pub fn cache(&self) -> PathBuf {
        self.data.join("cache")
    }
}

/// What starting a tenant needs besides its account.
pub struct TenantConfig {
    pub layout: Layout,
    pub workers: usize,
    pub runtime: Arc<Runtime>,
    pub max_batch: usize,
    /// Changes each serving projection version keeps for its change feed.
    pub change_retention: usize,
    pub tokio: tokio::runtime::Handle,
}

/// One account being served.
pub struct Tenant {
    pub account: String,
    pub log: Log,
    pub projections: Arc<Projections>,
    pub quota: Arc<Quota>,
    limits: ArcSwap<Limits>,
    /// Live subscriptions open, held against `limits.live_subscriptions` by [`LiveSlot`]s
    /// (which hold the count, not the tenant and its log).
    live: Arc<AtomicU32>,
}

impl Tenant {
    pub fn limits(&self) -> Limits {
        **self.limits.load()
    }

    pub fn set_limits(&self, limits: Limits) {
        self.limits.store(Arc::new(limits));
        self.quota.set_limit(limits.view_bytes);
    }

    /// Live subscriptions open.
    pub fn live_count(&self) -> u32 {
        self.live.load(Ordering::Acquire)
    }

    /// A place for one more live subscription, if the account has one free.
    pub fn live_slot(&self) -> Option<LiveSlot> {
        let max = self.limits().live_subscriptions;
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| LiveSlot(self.live.clone()))
    }
}

/// One of an account's live subscriptions; freed when dropped.
pub struct LiveSlot(Arc<AtomicU32>);

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every account being served.
pub struct Tenants {
    /// By account; replaced whole when one is added, read without a lock.
    map: ArcSwap<HashMap<String, Arc<Tenant>>>,
    /// Held across an addition (starting a tenant compiles its projections): one at a time.
    /// Taken alone.
    adding: Mutex<()>,
    /// Any account's handle, from which the others are made.
    log: Log,
    config: TenantConfig,
}

impl Tenants {
    /// Starts a tenant for each account. Blocking (it compiles projections). An account whose
    /// tenant fails to start stops the server from starting: its data would be unreachable.
    pub fn start(
        log: &Log,
        accounts: &[Account],
        config: TenantConfig,
    ) -> Result<Self, TenantError> {
        let tenants = Tenants {
            map: ArcSwap::from_pointee(HashMap::new()),
            adding: Mutex::new(()),
            log: log.clone(),
            config,
        };
        for account in accounts {
            tenants.add(account)?;
        }
        Ok(tenants)
    }

    pub fn get(&self, account: &str) -> Option<Arc<Tenant>> {
        self.map.load().get(account).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Tenant>> {
        self.map.load().values().cloned().collect()
    }

    /// Starts serving `account` (already stored), or returns its tenant if it is served.
    /// Blocking.
    pub fn add(&self, account: &Account) -> Result<Arc<Tenant>, TenantError> {
        let _adding = self.adding.lock();
        if let Some(tenant) = self.get(&account.name) {
            return Ok(tenant);
        }
        let tenant = Arc::new(self.start_one(account)?);
        let mut map = HashMap::clone(&self.map.load());
        map.insert(account.name.clone(), tenant.clone());
        self.map.store(Arc::new(map));
        tracing::info!(account = %account.name, "account served");
        Ok(tenant)
    }

    fn start_one(&self, account: &Account) -> Result<Tenant, TenantError> {
        let layout = &self.config.layout;
        let (folder, views) = (
            layout.projections(&account.name),
            layout.views(&account.name),
        );
        for dir in [&folder, &views] {
            create_dir(dir)?;
        }
        let log = if account.name == self.log.account_name() {
            self.log.clone()
        } else {
            self.log.account(&account.name)?
        };
        let quota = Arc::new(Quota::new(&views, account.limits.view_bytes));
        let scheduler = SchedulerConfig {
            projections: folder,
            views,
            workers: self.config.workers,
            max_batch: self.config.max_batch,
            watch: true,
            quota: Some(quota.clone()),
            account: account.name.clone(),
            change_retention: self.config.change_retention,
        };
        let projections = Projections::start(
            scheduler,
            self.config.runtime.clone(),
            &log,
            self.config.tokio.clone(),
        )?;
        Ok(Tenant {
            account: account.name.clone(),
            log,
            projections: Arc::new(projections),
            quota,
            limits: ArcSwap::from_pointee(account.limits),
            live: Arc::new(AtomicU32::new(0)),
        })
    }

    /// Stops every account's projections, their checkpoints made durable. Blocking.
    pub fn shutdown(&self) {
        for tenant in self.all() {
            tenant.projections.shutdown();
        }
    }
}

fn create_dir(dir: &Path) -> Result<(), TenantError> {
    std::fs::create_dir_all(dir).map_err(|source| TenantError::Folder {
        path: dir.display().to_string(),
        source,
    })
}
