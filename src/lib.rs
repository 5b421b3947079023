//! Projector: a projection engine over a durable event log.
//!
//! Modules follow the data flow: [`log`] stores events, [`http`] serves them, and [`server`]
//! wires the parts into the running process.

pub mod http;
pub mod log;
pub mod runtime;
pub mod scheduler;
pub mod server;
pub mod views;
