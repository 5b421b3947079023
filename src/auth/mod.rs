//! Who may do what. With `--auth keys` every request but `GET /health` carries an API key
//! (`Authorization: Bearer pk_<id>_<secret>`) that belongs to an account and holds scopes;
//! `http::auth` checks it against the scope each route needs. Keys live in the key store
//! (`store.rs`); tokens are minted and checked in `token.rs`.
//! The store keeps the accounts too (`crate::account`): a key belongs to one, and a
//! request acts as its key's account only.

mod store;
mod token;

use serde::{Deserialize, Serialize};

pub use store::{AUTH_FILE, KeyInfo, KeyStore, NewKey, StoreError};

/// The account that administers the server; only its keys may hold `admin`.
pub const ROOT: &str = crate::account::DEFAULT;

/// Whether requests must carry a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Every route is open (the default on a loopback address).
    None,
    /// Every route but `GET /health` needs a key with the route's scope.
    Keys,
}

impl std::fmt::Display for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMode::None => "none",
            AuthMode::Keys => "keys",
        })
    }
}

/// What a key may do.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read streams, `$all`, categories, live subscriptions, projection status and views.
    Read,
    /// Append to streams.
    Append,
    /// Deploy, remove, rebuild, pause, resume, retry and skip projections.
    Deploy,
    /// Manage accounts and keys (root's keys only).
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Append => "append",
            Scope::Deploy => "deploy",
            Scope::Admin => "admin",
        }
    }
}

/// The key a request was made with.
#[derive(Clone, Debug)]
pub struct Principal {
    pub key_id: String,
    pub account: String,
    pub scopes: Vec<Scope>,
}

/// Why a request's key was refused (401).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this route needs an API key: Authorization: Bearer <token>")]
    Missing,
    #[error("the API key is not of the form pk_<id>_<secret>")]
    Malformed,
    #[error("the API key is not known")]
    Unknown,
    #[error("the API key was revoked")]
    Revoked,
    #[error("the API key has expired")]
    Expired,
}
