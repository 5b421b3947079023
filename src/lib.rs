//! Projector: a projection engine over a durable event log.
//!
//! Modules follow the data flow: [`log`] stores events, [`scheduler`] runs the projections
//! ([`runtime`]) over them into [`views`], [`http`] serves all of it, and [`server`] wires the
//! parts into the running process, one set of projections per [`account`] ([`tenants`]).
//! [`client`] is the operator's side of the HTTP API.

/// `From` each of redb's error types (through `redb::Error`) into `$error::Redb`: every
/// module that talks to redb keeps one typed variant for it.
macro_rules! from_redb {
    ($error:ident: $($t:ty),*) => {$(
        impl From<$t> for $error {
            fn from(e: $t) -> Self {
                $error::Redb(e.into())
            }
        }
    )*};
}

pub mod account;
pub mod amqp;
pub mod auth;
pub mod client;
pub mod failpoint;
pub mod http;
pub mod log;
mod reopen;
pub mod runtime;
pub mod scaffold;
pub mod scheduler;
pub mod server;
pub mod subscriptions;
pub mod telemetry;
pub mod tenants;
pub mod views;

/// The message a panic carried, for a fault or a log line.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
