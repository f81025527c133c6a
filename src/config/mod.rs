//! Typed settings: built-in defaults, then the TOML file named by `ISSUER_CONFIG`,
//! then `ISSUER_*` environment variables, validated once at start-up.
//!
//! Laid out by job: `file` reads the TOML file and the environment into one schema;
//! `sections` builds each section (network, database, Redis, limits, hashing, HTTP,
//! keys); `tokens` the token lifetimes; `clients` the registered clients; `units` and
//! `urls` parse and check values. The parameter types belong to the code that uses
//! them (`service`, `store`, `crypto`, `server`, `telemetry`); only the CLI and
//! `startup` read `Settings`.
//!
//! Decisions taken here:
//! - Durations are written as an integer followed by a unit: `"30s"`, `"10m"`, `"12h"`,
//!   `"14d"` (`"0"` for zero).
//! - Without `ISSUER_CONFIG`, the built-in development configuration registers the
//!   `dev` (body delivery) and `dev-spa` (cookie delivery, origin
//!   `http://localhost:5173`) clients, and the confidential `dev-service` (client
//!   credentials and introspection of the issuer's audience; its secret is written to
//!   `keys/dev-service.secret` on first start, mode 0600, never logged), and allows
//!   self-registration. A configuration
//!   file must list its own clients.
//! - Every scalar setting can be overridden by `ISSUER_<NAME>` (`ISSUER_BIND`,
//!   `ISSUER_URL` for `issuer_url`, `ISSUER_DATABASE_URL`, ...). Clients come from the
//!   file only.
//! - The issuer URL is kept without a trailing slash: it is the `iss` claim and the RFC
//!   8414 `issuer`, byte for byte. Its default, `http://localhost:8080`, matches the SPA
//!   origin `http://localhost:5173` site-wise (`localhost` and `127.0.0.1` are different
//!   sites for `SameSite=Strict` cookies).

mod clients;
pub use clients::DEV_SERVICE;
mod file;
mod sections;
mod tokens;
mod units;
mod urls;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::domain::client::Client;
use crate::server::HttpTimeouts;
use crate::service::IssuerSettings;
use crate::service::browser::SignInSettings;
use file::FileSettings;
use tokens::TokenFile;
use urls::validate_issuer_url;

// Parameter types live with the code that uses them (config builds them); these paths
// stay for the users of the crate.
pub use crate::crypto::password::HashingSettings;
pub use crate::domain::address::Cidr;
pub use crate::service::RateLimits;
pub use crate::store::shared::RateLimit;
pub use crate::telemetry::LogFormat;
pub use tokens::TokenSettings;
pub use units::parse_duration;
pub use urls::{SecretUrl, redacted_url};

/// A configuration problem, reported as one line naming the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: `{}`: {}",
            self.setting, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

fn invalid(setting: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.to_owned(),
        message: message.into(),
    }
}

/// Everything the service needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    /// The `iss` of every token and the RFC 8414 `issuer`; no trailing slash.
    pub issuer_url: String,
    /// The audience our own endpoints (`/v1/...`) require in an access token.
    pub audience: String,
    pub database_url: SecretUrl,
    /// How long a database operation may take before the request answers 503.
    pub database_timeout: Duration,
    /// Redis for the shared fast state (deny-list, revocation events, rate limits);
    /// `None` keeps it in-process (one instance).
    pub redis_url: Option<SecretUrl>,
    /// Prefix of every Redis key and channel, so several deployments (or tests) can
    /// share one Redis.
    pub redis_key_prefix: String,
    /// `rediss://`: a PEM file of the certificate authorities to trust instead of the
    /// system's (a managed Redis with a private CA).
    pub redis_ca_file: Option<PathBuf>,
    pub limits: RateLimits,
    /// Load balancers whose `X-Forwarded-For` is believed: the client IP is the
    /// rightmost address in it that is not one of them.
    pub trusted_proxies: Vec<Cidr>,
    pub data_dir: PathBuf,
    pub keys_dir: PathBuf,
    /// Rotate the signing key on this schedule (exactly one instance does it); `None`
    /// leaves rotation to the CLI.
    pub key_rotation_interval: Option<Duration>,
    /// How long audit events are kept before the sweeper deletes them.
    pub audit_retention: Duration,
    /// A `tracing` filter, e.g. `info` or `token_issuer=debug`.
    pub log: String,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// How long a client may take to send a request's headers, and its body.
    pub http_timeouts: HttpTimeouts,
    pub allow_registration: bool,
    pub tokens: TokenSettings,
    pub password_hashing: HashingSettings,
    pub clients: Vec<Client>,
    /// The hosted sign-in pages and the browser's sign-in session.
    pub sign_in: SignInSettings,
}

impl Settings {
    /// Loads the settings of this process: `ISSUER_CONFIG` (if set) and `ISSUER_*`.
    pub fn load() -> Result<Self, ConfigError> {
        let file = std::env::var_os("ISSUER_CONFIG").map(PathBuf::from);
        Self::load_from(file.as_deref(), |name| std::env::var(name).ok())
    }

    /// Loads from an optional TOML file and an environment lookup (tests pass their own).
    pub fn load_from(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let parsed = file::read(file, env)?;
        Self::from_file(parsed, file.is_some())
    }

    fn from_file(f: FileSettings, from_file: bool) -> Result<Self, ConfigError> {
        let bind = sections::bind(f.bind.as_deref())?;
        let issuer_url =
            validate_issuer_url(f.issuer_url.as_deref().unwrap_or("http://localhost:8080"))?;
        let audience = sections::audience(f.audience, &issuer_url)?;
        let data_dir = f.data_dir.unwrap_or_else(|| PathBuf::from("data"));
        let (database_url, database_timeout) =
            sections::database(f.database_url, f.database_timeout, &data_dir)?;
        let (redis_url, redis_key_prefix) = sections::redis(f.redis_url, f.redis_key_prefix)?;
        let limits = sections::rate_limits(
            f.rate_limit_login_per_ip,
            f.rate_limit_login_per_account,
            f.rate_limit_refresh_per_family,
            f.rate_limit_register_per_ip,
            f.rate_limit_client_credentials,
            f.rate_limit_code_exchange_per_ip,
        )?;
        let tokens = TokenSettings::from_file(TokenFile {
            access_token_lifetime: f.access_token_lifetime,
            refresh_idle_timeout: f.refresh_idle_timeout,
            refresh_absolute_lifetime: f.refresh_absolute_lifetime,
            refresh_grace_period: f.refresh_grace_period,
            clock_leeway: f.clock_leeway,
        })?;
        let password_hashing =
            sections::hashing(f.password_hash_concurrency, f.password_hash_queue)?;
        let clients = clients::all(f.clients, from_file, &audience, &tokens)?;
        let sign_in = sections::sign_in(f.product_name, f.logo_url, f.sign_in_session_lifetime)?;
        Ok(Self {
            bind,
            issuer_url,
            audience,
            database_url,
            database_timeout,
            redis_url,
            redis_key_prefix,
            redis_ca_file: f.redis_ca_file,
            limits,
            trusted_proxies: sections::trusted_proxies(f.trusted_proxies.as_deref())?,
            data_dir,
            keys_dir: f.keys_dir.unwrap_or_else(|| PathBuf::from("keys")),
            audit_retention: sections::audit_retention(f.audit_retention)?,
            key_rotation_interval: sections::key_rotation_interval(
                f.key_rotation_interval.as_deref(),
            )?,
            log: f.log.unwrap_or_else(|| "info".to_owned()),
            log_format: f.log_format.unwrap_or(LogFormat::Text),
            http_timeouts: sections::http_timeouts(
                f.request_header_timeout,
                f.request_body_timeout,
            )?,
            allow_registration: f.allow_registration.unwrap_or(true),
            tokens,
            password_hashing,
            clients,
            sign_in,
        })
    }

    /// What the issuer (`service`) is configured with.
    pub fn issuer(&self) -> IssuerSettings {
        IssuerSettings {
            issuer_url: self.issuer_url.clone(),
            audience: self.audience.clone(),
            clock_leeway: self.tokens.clock_leeway,
            hashing: self.password_hashing,
            limits: self.limits,
            clients: self.clients.clone(),
            policy: self.tokens.policy(),
            allow_registration: self.allow_registration,
            key_rotation_interval: self.key_rotation_interval,
            audit_retention: self.audit_retention,
            sign_in: self.sign_in.clone(),
        }
    }

    /// Sets the grace window of the defaults and of every client (tests and tools).
    pub fn set_grace_period(&mut self, grace: Duration) {
        self.tokens.refresh_grace_period = grace;
        for client in &mut self.clients {
            client.policy.grace_period = grace;
        }
    }

    /// The built-in development settings, as `cargo run` with no configuration uses them.
    pub fn development() -> Result<Self, ConfigError> {
        Self::from_file(FileSettings::default(), false)
    }
}

#[cfg(test)]
mod tests;
