//! Tracing set-up, once per process. Security events use the `security` target; no
//! token, password or secret is ever a field of a log event.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber with `filter` (the `log` setting, `ISSUER_LOG`).
/// A filter that does not parse is a configuration error.
pub fn init(filter: &str) -> Result<(), crate::config::ConfigError> {
    let filter = EnvFilter::try_new(filter).map_err(|e| crate::config::ConfigError {
        setting: "log".into(),
        message: format!("{filter:?} is not a tracing filter: {e}"),
    })?;
    // Ignore a second initialisation (tests start several servers in one process).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .try_init();
    Ok(())
}
