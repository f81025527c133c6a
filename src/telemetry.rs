//! Tracing set-up, once per process. Security events use the `security` target; no
//! token, password or secret is ever a field of a log event.
//!
//! Two formats (`log_format`, `ISSUER_LOG_FORMAT`):
//! - `text` (the default): one line an event, coloured only when standard output is a
//!   terminal: a log file or a collector gets no escape codes;
//! - `json`: one JSON object a line (`timestamp`, `level`, `target`, `fields` with the
//!   message, `span` and `spans` with the request id), for log shippers; the
//!   `security` events are in it like every other.

use std::io::IsTerminal as _;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// How log lines are written (`telemetry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line an event, coloured on a terminal only.
    Text,
    /// One JSON object a line.
    Json,
}

/// Installs the global subscriber with `filter` (the `log` setting, `ISSUER_LOG`) and
/// `format`. A filter that does not parse is refused with why.
pub fn init(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| format!("{filter:?} is not a tracing filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    // Ignore a second initialisation (tests start several servers in one process).
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
    Ok(())
}
