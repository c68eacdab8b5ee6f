//! clinvkd: the clinvk daemon as a library. `daemon::run` starts everything; `main.rs` only
//! parses flags, sets up logging and calls it.

pub(crate) mod accounts;
pub(crate) mod availability;
pub(crate) mod backend;
pub(crate) mod control;
pub mod ctx;
pub(crate) mod daemon;
pub(crate) mod engine;
pub(crate) mod error;
pub(crate) mod http;
pub(crate) mod keys;
pub(crate) mod live;
pub mod logging;
pub(crate) mod ops;
pub(crate) mod quota;
pub(crate) mod responses;
pub mod service;
pub(crate) mod session;
pub mod supervisor;
pub(crate) mod tools;
pub(crate) mod usage;
pub(crate) mod worker;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
pub(crate) mod testkit;

pub use daemon::{run, DaemonOptions, StartError};
