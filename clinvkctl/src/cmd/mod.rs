//! One module per subcommand.

pub mod reload;
pub mod serve;
pub mod status;
pub mod stop;
