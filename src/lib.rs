//! Projector: a projection engine over a durable event log.
//!
//! Modules follow the data flow: [`log`] stores events, [`scheduler`] runs the projections
//! ([`runtime`]) over them into [`views`], [`http`] serves all of it, and [`server`] wires the
//! parts into the running process. [`client`] is the operator's side of the HTTP API.

pub mod auth;
pub mod client;
pub mod failpoint;
pub mod http;
pub mod log;
pub mod runtime;
pub mod scheduler;
pub mod server;
pub mod views;

/// The message a panic carried, for a fault or a log line.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
