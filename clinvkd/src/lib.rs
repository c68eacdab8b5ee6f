//! clinvkd: the clinvk daemon as a library. `daemon::run` starts everything; `main.rs` only
//! parses flags, sets up logging and calls it.

pub mod backend;
pub mod control;
pub mod ctx;
pub mod daemon;
pub mod http;
pub mod logging;

pub use daemon::{run, DaemonOptions};
