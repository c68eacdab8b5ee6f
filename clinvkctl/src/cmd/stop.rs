//! `clinvkctl stop`: drain and stop the daemon, and wait until it is gone.

use crate::{exit, ClientError};
use clinvk_shared::protocol::Request;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct StopArgs {
    /// Return once the daemon accepted the stop, without waiting for it to exit
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds to wait for the daemon to exit
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

pub async fn run(args: StopArgs) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    let pid = crate::status(&paths, "clinvkctl").await?.pid;
    crate::request(&paths, "clinvkctl", Request::Stop).await?;
    if args.no_wait {
        println!("clinvkd (pid {pid}) is stopping");
        return Ok(exit::OK);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    // Gone when the pid no longer exists (the socket disappears just before).
    while process_alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return Err(ClientError::Other(format!(
                "clinvkd (pid {pid}) did not exit within {} s",
                args.timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    println!("clinvkd (pid {pid}) stopped");
    Ok(exit::OK)
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        // Without `/proc` (systems other than Linux) a zombie counts as running.
        Ok(()) if !cfg!(target_os = "linux") => true,
        Ok(()) => {
            // A zombie (our own child, not yet reaped) counts as gone.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true)
        }
        Err(_) => false,
    }
}
