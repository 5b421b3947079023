//! Projector: a projection engine over a durable event log.
//!
//! Modules follow the data flow: [`log`] stores events, [`scheduler`] runs the projections
//! ([`runtime`]) over them into [`views`], [`http`] serves all of it, and [`server`] wires the
//! parts into the running process. [`client`] is the operator's side of the HTTP API.

pub mod client;
pub mod http;
pub mod log;
pub mod runtime;
pub mod scheduler;
pub mod server;
pub mod views;
