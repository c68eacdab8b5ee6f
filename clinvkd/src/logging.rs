//! Logging: `tracing` to stderr or to a daily-rolled file, with the level from `RUST_LOG`, `-v`
//! or the config; INFO and above are also forwarded to attached clients (`clinvk serve`).
//! Secrets and prompts are never logged above debug.

use clinvk_shared::protocol::AttachEvent;
use std::path::Path;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the file writer flushing; drop it last.
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

/// The filter for a verbosity: 0 = config level, 1 = debug, 2+ = trace. `RUST_LOG` wins.
pub fn filter_for(config_level: &str, verbose: u8) -> EnvFilter {
    if let Ok(f) = EnvFilter::try_from_env("RUST_LOG") {
        return f;
    }
    let level = match verbose {
        0 => config_level,
        1 => "debug",
        _ => "trace",
    };
    // warp logs an ERROR whenever a client drops a stream: that is normal here.
    EnvFilter::try_new(format!(
        "{level},warp::server=warn,hyper=warn,hyper_util=warn"
    ))
    .unwrap_or_else(|_| EnvFilter::new("info,warp::server=warn"))
}

/// Installs the global subscriber. With `file`, logs go to `file` rolled daily.
pub fn init(
    filter: EnvFilter,
    file: Option<&Path>,
    events: broadcast::Sender<AttachEvent>,
) -> std::io::Result<LogGuard> {
    let attach = AttachLayer { events };
    match file {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "clinvkd.log".into());
            let appender = tracing_appender::rolling::daily(dir, name);
            let (writer, guard) = tracing_appender::non_blocking(appender);
            tracing_subscriber::registry()
                .with(filter)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(writer)
                        .with_ansi(false),
                )
                .with(attach)
                .try_init()
                .map_err(std::io::Error::other)?;
            Ok(LogGuard(Some(guard)))
        }
        None => {
            tracing_subscriber::registry()
                .with(filter)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
                )
                .with(attach)
                .try_init()
                .map_err(std::io::Error::other)?;
            Ok(LogGuard(None))
        }
    }
}

/// Forwards log events to `clinvk serve` clients that are attached.
struct AttachLayer {
    events: broadcast::Sender<AttachEvent>,
}

impl<S: tracing::Subscriber> Layer<S> for AttachLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        // Request lines reach attached clients as `Request` events already.
        if self.events.receiver_count() == 0
            || *event.metadata().level() > tracing::Level::INFO
            || event.metadata().target() == "clinvkd::http"
        {
            return;
        }
        let mut v = MessageVisitor(String::new());
        event.record(&mut v);
        let _ = self.events.send(AttachEvent::Log {
            time: clinvk_shared::types::now_rfc3339(),
            level: event.metadata().level().to_string(),
            message: v.0,
        });
    }
}

struct MessageVisitor(String);

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}
