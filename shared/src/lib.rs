//! clinvk-shared: what the daemon and its thin clients agree on — the control protocol, the
//! configuration model and its loading, the folders clinvk uses, and the common types of a run.

pub mod accounts;
pub mod api;
pub mod cli;
pub mod config;
pub mod paths;
pub mod protocol;
pub mod quota;
pub mod types;

/// The exit code of `clinvkd` when its HTTP port is already taken (EADDRINUSE), so that
/// `clinvk serve` can tell that case from other start failures without reading text.
pub const EXIT_PORT_IN_USE: u8 = 98;

/// The version of every clinvk crate and binary (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
