//! `clinvkctl status`: the daemon's state.

use crate::{exit, status, ClientError};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print the status as JSON
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: StatusArgs) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    let s = status(&paths, "clinvkctl").await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s).map_err(|e| ClientError::Other(e.to_string()))?
        );
        return Ok(exit::OK);
    }
    println!(
        "clinvkd {} (pid {}){}",
        s.version,
        s.pid,
        if s.draining { " — draining" } else { "" }
    );
    println!("  uptime:     {}", humanize_ms(s.uptime_ms));
    println!("  http:       {}", s.http_url);
    println!(
        "  config:     {}{}",
        s.config_path,
        if s.config_loaded_from_file {
            ""
        } else {
            " (not found: defaults)"
        }
    );
    println!("  state:      {}", s.state_dir);
    println!("  socket:     {}", s.socket_path);
    println!("  reloads:    {}", s.reloads);
    println!(
        "  requests:   {} total, {} in flight",
        s.requests_total, s.requests_in_flight
    );
    println!("  sessions:   {}", s.sessions);
    if !s.backends.is_empty() {
        println!("  backends:");
        for b in &s.backends {
            let state = if !b.enabled {
                "disabled".to_string()
            } else if b.available {
                format!("available {}", b.version.clone().unwrap_or_default())
            } else {
                format!("unavailable: {}", b.message.clone().unwrap_or_default())
            };
            println!("    {:<7} {state} ({} mode)", b.name, mode_name(b.mode));
        }
    }
    if !s.accounts.is_empty() {
        println!("  quota windows:");
        for a in &s.accounts {
            for line in quota_lines(a) {
                println!("    {line}");
            }
        }
    }
    println!("  runs:       {}", s.runs.len());
    for r in &s.runs {
        let pid = r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "    {} {:<7} pid {pid:<8} {:<10} {}",
            r.id,
            r.backend,
            r.state,
            humanize_ms(r.age_ms)
        );
    }
    println!("  workers:    {}", s.workers.len());
    for w in &s.workers {
        let rss = w
            .rss_bytes
            .map(|b| format!("{} MiB", b / (1024 * 1024)))
            .unwrap_or_else(|| "-".into());
        println!(
            "    {} {:<7} pid {:<8} {:<7} {} turns, idle {}, rss {rss}, session {}",
            w.id,
            w.backend,
            w.pid,
            w.state,
            w.turns,
            humanize_ms(w.idle_ms),
            w.backend_session_id.as_deref().unwrap_or("-"),
        );
    }
    Ok(exit::OK)
}

/// One line per quota window of an account: `claude/default five_hour 91% allowed_warning,
/// resets 2026-12-07T18:00:00Z`.
pub(crate) fn quota_lines(a: &clinvk_shared::quota::Account) -> Vec<String> {
    let Some(l) = &a.limits else {
        return Vec::new();
    };
    l.windows
        .iter()
        .map(|w| {
            let reset = w
                .resets_at
                .map(|r| format!(", resets {}", clinvk_shared::quota::reset_time(r)))
                .unwrap_or_default();
            format!(
                "{}/{} {} {:.0}% {}{reset}",
                a.backend,
                a.account,
                w.name,
                w.utilization * 100.0,
                w.status.as_str()
            )
        })
        .collect()
}

fn mode_name(m: clinvk_shared::config::BackendMode) -> &'static str {
    match m {
        clinvk_shared::config::BackendMode::Warm => "warm",
        clinvk_shared::config::BackendMode::Oneshot => "oneshot",
    }
}

fn humanize_ms(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
    }
}
