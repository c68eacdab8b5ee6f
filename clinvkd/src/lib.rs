//! clinvkd: the clinvk daemon as a library. `daemon::run` starts everything; `main.rs` only
//! parses flags, sets up logging and calls it.

pub mod availability;
pub mod backend;
pub mod control;
pub mod ctx;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod http;
pub mod keys;
pub mod logging;
pub mod ops;
pub mod service;
pub mod session;
pub mod supervisor;

pub use daemon::{run, DaemonOptions};
