//! The integration tests: each drives a real `projector serve` child process over HTTP on
//! loopback (`common`). One test binary, since each links wasmtime.

mod abuse;
mod amqp;
mod auth;
mod changes;
mod cli;
mod common;
mod crash;
mod dashboard;
mod deploy;
mod disk_full;
mod faults;
mod hostile_clients;
mod kill_loop;
mod live;
mod operator;
mod polyglot;
mod projections;
mod scaffold;
mod streams;
mod subscriptions;
mod tenants;
