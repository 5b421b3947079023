//! Failure injection for the tests: `failpoint!` is the `fail` crate's `fail_point!` when
//! the `failpoints` feature is on (as `cargo test` builds the server, through the
//! dev-dependency on this package) and nothing at all otherwise.
//!
//! The points, each named where it is placed:
//! - `log-commit`: the log writer's commit (`return(enospc|eio)`, `panic`);
//! - `log-commit-logged`: the log writer's redb commit of a group whose frame is already in the
//!   write-ahead segment (`return(enospc|eio)`), so the frame must be retracted;
//! - `log-commit-staged`: filling redb's transaction for a group whose frame was written
//!   first (checked without the write transaction), before its commit (`return(enospc|eio)`):
//!   the frame must be retracted;
//! - `log-sync`: the syncer's fdatasync of the write-ahead segment (`return(eio)`);
//! - `log-reopen`: reopening the log after an I/O failure;
//! - `view-commit`: a view's commit;
//! - `view-current`: writing a name's `CURRENT` (`return(...)`, `sleep(ms)`);
//! - `cache-write`: writing a compiled component to the cache;
//! - `turn`: the start of a projection's turn on a worker (`panic`);
//! - `read-ahead`: a turn's read-ahead thread, before it reads a batch (`panic`).
//!
//! A running test server changes them through `PUT /debug/failpoints/{name}` (body: the
//! action, as `fail::cfg` takes it) and `DELETE` (see `http`); `FAILPOINTS` sets them at
//! start-up.

#[cfg(feature = "failpoints")]
macro_rules! failpoint {
    ($name:literal) => {
        fail::fail_point!($name)
    };
    ($name:literal, $on:expr) => {
        fail::fail_point!($name, $on)
    };
}

#[cfg(not(feature = "failpoints"))]
macro_rules! failpoint {
    ($name:literal) => {};
    ($name:literal, $on:expr) => {};
}

pub(crate) use failpoint;

/// The I/O error an injected `return(<arg>)` stands for: `enospc` is a full disk, anything
/// else (or nothing) an EIO.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub fn io_error(arg: Option<String>) -> std::io::Error {
    match arg.as_deref() {
        Some("enospc") => std::io::Error::from_raw_os_error(libc::ENOSPC),
        _ => std::io::Error::from_raw_os_error(libc::EIO),
    }
}

/// Sets up the points named in `FAILPOINTS`, for the life of the process.
#[cfg(feature = "failpoints")]
pub fn setup() {
    std::mem::forget(fail::FailScenario::setup());
}

#[cfg(not(feature = "failpoints"))]
pub fn setup() {}
