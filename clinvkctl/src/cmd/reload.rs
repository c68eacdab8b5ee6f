//! `clinvkctl reload`: re-read the configuration (an invalid one is refused; the old one stays).

use crate::{exit, ClientError};
use clinvk_shared::protocol::{Reply, Request};

pub async fn run() -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    match crate::request(&paths, "clinvkctl", Request::Reload).await {
        Ok(Reply::Reloaded { changed, warnings }) => {
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            if changed.is_empty() {
                println!("configuration reloaded (no changes)");
            } else {
                println!("configuration reloaded; changed: {}", changed.join(", "));
            }
            Ok(exit::OK)
        }
        Ok(other) => Err(ClientError::Other(format!("unexpected answer: {other:?}"))),
        Err(ClientError::Daemon(e)) => Err(ClientError::Other(format!(
            "reload refused, the running configuration stays: {}",
            e.message
        ))),
        Err(e) => Err(e),
    }
}
