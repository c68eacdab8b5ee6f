//! One module per subcommand.

pub mod accounts;
pub mod doctor;
pub mod generate;
pub mod keys;
pub mod multi;
pub mod prompt;
pub mod reload;
pub mod serve;
pub mod service;
pub mod sessions;
pub mod status;
pub mod stop;
pub mod usage;
