//! Logs through `tracing`: human-readable text by default, JSON lines with
//! `log.format = "json"`. `RUST_LOG`, when set, wins over `log.level`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A failed write (the log's disk is full) would otherwise be reported with
        // `eprintln!`, which panics: the task that logged would die with it.
        .log_internal_errors(false);
    // A second init (tests, the demo) keeps the first subscriber.
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
