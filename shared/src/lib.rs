//! clinvk-shared: what the daemon and its thin clients agree on — the control protocol, the
//! configuration model and its loading, the folders clinvk uses, and the common types of a run.

pub mod api;
pub mod config;
pub mod paths;
pub mod protocol;
pub mod types;

/// The version of every clinvk crate and binary (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
