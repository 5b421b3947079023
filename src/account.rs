//! Accounts: the tenants of one server. Each has its own streams, positions, `$all`,
//! categories, projections and views; the log keeps them apart as partitions of one file
//! (`log::store`), the server runs a set of projections per account (`tenants`), and the HTTP
//! API serves a request from its key's account only.

/// The account of the data a server had before accounts existed: its log partition uses the
/// original table names, its projections sit at the top of the projections folder and its
/// views in `<data>/views`. It is also the administering account, and the one every request
/// acts as with `--auth none`.
pub const DEFAULT: &str = "root";

/// Account names appear in table names, folder names and URLs: 1 to 64 of `a-z`, `0-9`, `-`
/// and `_` (no `/`, which separates an account from a table name in the log).
pub fn valid_name(name: &str) -> bool {
    crate::scheduler::valid_name(name)
}

/// Live subscriptions an account may hold at once, unless set otherwise.
pub const DEFAULT_LIVE_SUBSCRIPTIONS: u32 = 256;

/// What one account may hold. Over a limit, a request gets 429 with `Retry-After`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Live subscriptions (`/live` routes) open at once.
    #[serde(default = "default_live")]
    pub live_subscriptions: u32,
    /// Bytes of view storage all the account's projections may take together; `None` is
    /// unlimited. Over it, projections stop with a `quota` fault (retried with backoff, so
    /// they resume once the limit is raised) and deploys and rebuilds are refused.
    #[serde(default)]
    pub view_bytes: Option<u64>,
}

fn default_live() -> u32 {
    DEFAULT_LIVE_SUBSCRIPTIONS
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            live_subscriptions: DEFAULT_LIVE_SUBSCRIPTIONS,
            view_bytes: None,
        }
    }
}

/// An account as stored and shown.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Account {
    pub name: String,
    /// Seconds since the Unix epoch; 0 for the default account of an older data directory.
    pub created_at: u64,
    pub limits: Limits,
}
