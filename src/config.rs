//! Typed settings: built-in defaults, then the TOML file named by `ISSUER_CONFIG`,
//! then `ISSUER_*` environment variables, validated once at start-up.
//!
//! Decisions taken here:
//! - Durations are written as an integer followed by a unit: `"30s"`, `"10m"`, `"12h"`,
//!   `"14d"` (`"0"` for zero).
//! - Without `ISSUER_CONFIG`, the built-in development configuration registers the
//!   `dev` (body delivery) and `dev-spa` (cookie delivery, origin
//!   `http://localhost:5173`) clients and allows self-registration. A configuration
//!   file must list its own clients.
//! - Every scalar setting can be overridden by `ISSUER_<NAME>` (`ISSUER_BIND`,
//!   `ISSUER_URL` for `issuer_url`, `ISSUER_DATABASE_URL`, ...). Clients come from the
//!   file only.
//! - The issuer URL is kept without a trailing slash: it is the `iss` claim and the RFC
//!   8414 `issuer`, byte for byte. Its default, `http://localhost:8080`, matches the SPA
//!   origin `http://localhost:5173` site-wise (`localhost` and `127.0.0.1` are different
//!   sites for `SameSite=Strict` cookies).

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::client::{Client, ClientKind, Delivery};
use crate::domain::family::RefreshPolicy;
use crate::server::HttpTimeouts;
use crate::service::IssuerSettings;

// Parameter types live with the code that uses them (config builds them); these paths
// stay for the users of the crate.
pub use crate::crypto::password::HashingSettings;
pub use crate::domain::address::Cidr;
pub use crate::service::RateLimits;
pub use crate::store::shared::RateLimit;
pub use crate::telemetry::LogFormat;

/// Access tokens may live between these bounds (DESIGN.md: 5–15 minutes).
const ACCESS_LIFETIME_MIN: Duration = Duration::from_secs(5 * 60);
const ACCESS_LIFETIME_MAX: Duration = Duration::from_secs(15 * 60);
/// Longest refresh-family lifetime (idle or absolute).
const REFRESH_LIFETIME_MAX: Duration = Duration::from_secs(366 * 86_400);
/// Largest clock leeway the verifier accepts.
const LEEWAY_MAX: Duration = Duration::from_secs(30);

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
}

/// Token lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSettings {
    pub access_token_lifetime: Duration,
    pub refresh_idle_timeout: Duration,
    pub refresh_absolute_lifetime: Duration,
    /// Zero disables the grace window: any second use of a token is a reuse.
    pub refresh_grace_period: Duration,
    pub clock_leeway: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    bind: Option<String>,
    issuer_url: Option<String>,
    audience: Option<String>,
    database_url: Option<String>,
    database_timeout: Option<String>,
    redis_url: Option<String>,
    redis_key_prefix: Option<String>,
    redis_ca_file: Option<PathBuf>,
    rate_limit_login_per_ip: Option<String>,
    rate_limit_login_per_account: Option<String>,
    rate_limit_refresh_per_family: Option<String>,
    rate_limit_register_per_ip: Option<String>,
    trusted_proxies: Option<String>,
    data_dir: Option<PathBuf>,
    keys_dir: Option<PathBuf>,
    key_rotation_interval: Option<String>,
    audit_retention: Option<String>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    allow_registration: Option<bool>,
    access_token_lifetime: Option<String>,
    refresh_idle_timeout: Option<String>,
    refresh_absolute_lifetime: Option<String>,
    refresh_grace_period: Option<String>,
    clock_leeway: Option<String>,
    request_header_timeout: Option<String>,
    request_body_timeout: Option<String>,
    password_hash_concurrency: Option<usize>,
    password_hash_queue: Option<usize>,
    clients: Option<Vec<ClientFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    client_id: String,
    kind: ClientKind,
    delivery: Option<Delivery>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    audiences: Option<Vec<String>>,
    /// `sha256:<hex>` of the secret, from `token-issuer client-secret`.
    client_secret_hash: Option<String>,
    /// Service clients: the audiences (besides their `client_id`) whose tokens they may
    /// introspect; `["*"]` for all.
    introspection_audiences: Option<Vec<String>>,
    #[serde(default)]
    scopes: Vec<String>,
    access_token_lifetime: Option<String>,
    refresh_idle_timeout: Option<String>,
    refresh_absolute_lifetime: Option<String>,
    refresh_grace_period: Option<String>,
}

/// Environment variables that override a scalar setting, with the setting they set.
const ENV_OVERRIDES: &[(&str, &str, EnvKind)] = &[
    ("ISSUER_BIND", "bind", EnvKind::Text),
    ("ISSUER_URL", "issuer_url", EnvKind::Text),
    ("ISSUER_AUDIENCE", "audience", EnvKind::Text),
    ("ISSUER_DATABASE_URL", "database_url", EnvKind::Text),
    ("ISSUER_DATABASE_TIMEOUT", "database_timeout", EnvKind::Text),
    ("ISSUER_REDIS_URL", "redis_url", EnvKind::Text),
    ("ISSUER_REDIS_KEY_PREFIX", "redis_key_prefix", EnvKind::Text),
    ("ISSUER_REDIS_CA_FILE", "redis_ca_file", EnvKind::Text),
    (
        "ISSUER_RATE_LIMIT_LOGIN_PER_IP",
        "rate_limit_login_per_ip",
        EnvKind::Text,
    ),
    (
        "ISSUER_RATE_LIMIT_LOGIN_PER_ACCOUNT",
        "rate_limit_login_per_account",
        EnvKind::Text,
    ),
    (
        "ISSUER_RATE_LIMIT_REFRESH_PER_FAMILY",
        "rate_limit_refresh_per_family",
        EnvKind::Text,
    ),
    (
        "ISSUER_RATE_LIMIT_REGISTER_PER_IP",
        "rate_limit_register_per_ip",
        EnvKind::Text,
    ),
    ("ISSUER_TRUSTED_PROXIES", "trusted_proxies", EnvKind::Text),
    ("ISSUER_DATA_DIR", "data_dir", EnvKind::Text),
    ("ISSUER_KEYS_DIR", "keys_dir", EnvKind::Text),
    (
        "ISSUER_KEY_ROTATION_INTERVAL",
        "key_rotation_interval",
        EnvKind::Text,
    ),
    ("ISSUER_LOG", "log", EnvKind::Text),
    ("ISSUER_LOG_FORMAT", "log_format", EnvKind::Text),
    ("ISSUER_AUDIT_RETENTION", "audit_retention", EnvKind::Text),
    (
        "ISSUER_ALLOW_REGISTRATION",
        "allow_registration",
        EnvKind::Bool,
    ),
    (
        "ISSUER_ACCESS_TOKEN_LIFETIME",
        "access_token_lifetime",
        EnvKind::Text,
    ),
    (
        "ISSUER_REFRESH_IDLE_TIMEOUT",
        "refresh_idle_timeout",
        EnvKind::Text,
    ),
    (
        "ISSUER_REFRESH_ABSOLUTE_LIFETIME",
        "refresh_absolute_lifetime",
        EnvKind::Text,
    ),
    (
        "ISSUER_REFRESH_GRACE_PERIOD",
        "refresh_grace_period",
        EnvKind::Text,
    ),
    ("ISSUER_CLOCK_LEEWAY", "clock_leeway", EnvKind::Text),
    (
        "ISSUER_REQUEST_HEADER_TIMEOUT",
        "request_header_timeout",
        EnvKind::Text,
    ),
    (
        "ISSUER_REQUEST_BODY_TIMEOUT",
        "request_body_timeout",
        EnvKind::Text,
    ),
    (
        "ISSUER_PASSWORD_HASH_CONCURRENCY",
        "password_hash_concurrency",
        EnvKind::Integer,
    ),
    (
        "ISSUER_PASSWORD_HASH_QUEUE",
        "password_hash_queue",
        EnvKind::Integer,
    ),
];

#[derive(Debug, Clone, Copy)]
enum EnvKind {
    Text,
    Bool,
    Integer,
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
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        "ISSUER_CONFIG",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| toml_error(path, &e))?
            }
            None => toml::Table::new(),
        };
        for (var, key, kind) in ENV_OVERRIDES {
            let Some(raw) = env(var) else { continue };
            let value = match kind {
                EnvKind::Text => toml::Value::String(raw),
                EnvKind::Bool => match raw.trim() {
                    "true" | "1" => toml::Value::Boolean(true),
                    "false" | "0" => toml::Value::Boolean(false),
                    _ => return Err(invalid(var, "expected true or false")),
                },
                EnvKind::Integer => raw
                    .trim()
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|_| invalid(var, "expected a whole number"))?,
            };
            table.insert((*key).to_owned(), value);
        }
        let parsed = FileSettings::deserialize(table).map_err(|e| {
            let source = file.map_or_else(|| "environment".to_owned(), |p| p.display().to_string());
            invalid(&source, e.message().replace('\n', " "))
        })?;
        Self::from_file(parsed, file.is_some())
    }

    fn from_file(f: FileSettings, from_file: bool) -> Result<Self, ConfigError> {
        let bind = f
            .bind
            .as_deref()
            .unwrap_or("127.0.0.1:8080")
            .parse::<SocketAddr>()
            .map_err(|_| invalid("bind", "expected an address such as 127.0.0.1:8080"))?;
        let issuer_url =
            validate_issuer_url(f.issuer_url.as_deref().unwrap_or("http://localhost:8080"))?;
        let audience = f.audience.unwrap_or_else(|| issuer_url.clone());
        if audience.trim().is_empty() {
            return Err(invalid("audience", "must not be empty"));
        }
        let data_dir = f.data_dir.unwrap_or_else(|| PathBuf::from("data"));
        let database_url = SecretUrl(match f.database_url {
            Some(url) => validate_database_url(&url)?,
            None => format!("sqlite://{}", data_dir.join("token-issuer.db").display()),
        });
        let database_timeout = duration("database_timeout", f.database_timeout, "2s")?;
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&database_timeout) {
            return Err(invalid("database_timeout", "must be between 1s and 60s"));
        }
        let redis_url = f
            .redis_url
            .filter(|u| !u.trim().is_empty())
            .map(|u| validate_redis_url(&u).map(SecretUrl))
            .transpose()?;
        let redis_key_prefix = f
            .redis_key_prefix
            .unwrap_or_else(|| "token-issuer:".to_owned());
        if redis_key_prefix.len() > 64 || redis_key_prefix.chars().any(char::is_whitespace) {
            return Err(invalid(
                "redis_key_prefix",
                "must be at most 64 characters, without spaces",
            ));
        }
        let limits = RateLimits {
            login_per_ip: rate_limit(
                "rate_limit_login_per_ip",
                f.rate_limit_login_per_ip,
                "30/1m",
            )?,
            login_per_account: rate_limit(
                "rate_limit_login_per_account",
                f.rate_limit_login_per_account,
                "10/1m",
            )?,
            refresh_per_family: rate_limit(
                "rate_limit_refresh_per_family",
                f.rate_limit_refresh_per_family,
                "30/1m",
            )?,
            register_per_ip: rate_limit(
                "rate_limit_register_per_ip",
                f.rate_limit_register_per_ip,
                "20/1h",
            )?,
        };
        let tokens = TokenSettings {
            access_token_lifetime: duration(
                "access_token_lifetime",
                f.access_token_lifetime,
                "10m",
            )?,
            refresh_idle_timeout: duration("refresh_idle_timeout", f.refresh_idle_timeout, "14d")?,
            refresh_absolute_lifetime: duration(
                "refresh_absolute_lifetime",
                f.refresh_absolute_lifetime,
                "90d",
            )?,
            refresh_grace_period: duration("refresh_grace_period", f.refresh_grace_period, "10s")?,
            clock_leeway: duration("clock_leeway", f.clock_leeway, "30s")?,
        };
        tokens.validate()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let password_hashing = HashingSettings {
            // One core stays free for refreshes and verification during a login flood.
            concurrency: f
                .password_hash_concurrency
                .unwrap_or(cores.saturating_sub(1).max(1)),
            queue: f.password_hash_queue.unwrap_or(256),
        };
        if password_hashing.concurrency == 0 {
            return Err(invalid("password_hash_concurrency", "must be at least 1"));
        }
        let clients = match f.clients {
            Some(clients) => clients
                .into_iter()
                .enumerate()
                .map(|(i, c)| client_from_file(i, c, &audience, &tokens))
                .collect::<Result<Vec<_>, _>>()?,
            None if from_file => {
                return Err(invalid(
                    "clients",
                    "a configuration file must register at least one client",
                ));
            }
            None => dev_clients(&audience, &tokens),
        };
        if clients.is_empty() {
            return Err(invalid("clients", "at least one client is required"));
        }
        // Every cookie-mode client would share the one `__Host-refresh` cookie of this
        // host: one client's login would overwrite another's session.
        if clients
            .iter()
            .filter(|c| c.delivery == Delivery::Cookie)
            .count()
            > 1
        {
            return Err(invalid(
                "clients",
                "at most one cookie-delivery client per issuer (they would share the __Host-refresh cookie)",
            ));
        }
        let mut seen = HashSet::new();
        for c in &clients {
            if !seen.insert(c.id.as_str()) {
                return Err(invalid(
                    "clients",
                    format!("client_id {:?} is registered twice", c.id),
                ));
            }
        }
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
            trusted_proxies: f
                .trusted_proxies
                .as_deref()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(|r| {
                    Cidr::parse(r).ok_or_else(|| {
                        invalid(
                            "trusted_proxies",
                            format!("{r:?} is not an address or range such as 10.0.0.0/8"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            data_dir,
            keys_dir: f.keys_dir.unwrap_or_else(|| PathBuf::from("keys")),
            audit_retention: {
                let keep = duration("audit_retention", f.audit_retention, "365d")?;
                if keep < Duration::from_secs(86_400) {
                    return Err(invalid("audit_retention", "must be at least 1d"));
                }
                keep
            },
            key_rotation_interval: match f.key_rotation_interval.as_deref().map(str::trim) {
                None | Some("off") => None,
                Some(raw) => {
                    let every = parse_duration(raw)
                        .filter(|d| *d >= Duration::from_secs(3600))
                        .ok_or_else(|| {
                            invalid(
                                "key_rotation_interval",
                                format!("{raw:?}: expected a duration of at least 1h, such as \"30d\", or \"off\""),
                            )
                        })?;
                    Some(every)
                }
            },
            log: f.log.unwrap_or_else(|| "info".to_owned()),
            log_format: f.log_format.unwrap_or(LogFormat::Text),
            http_timeouts: HttpTimeouts {
                header_timeout: bounded_duration(
                    "request_header_timeout",
                    f.request_header_timeout,
                    "10s",
                    Duration::from_secs(1)..=Duration::from_secs(120),
                )?,
                body_timeout: bounded_duration(
                    "request_body_timeout",
                    f.request_body_timeout,
                    "30s",
                    Duration::from_secs(1)..=Duration::from_secs(600),
                )?,
            },
            allow_registration: f.allow_registration.unwrap_or(true),
            tokens,
            password_hashing,
            clients,
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

impl TokenSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(ACCESS_LIFETIME_MIN..=ACCESS_LIFETIME_MAX).contains(&self.access_token_lifetime) {
            return Err(invalid(
                "access_token_lifetime",
                format!(
                    "{} is outside the allowed range 5m to 15m",
                    show_duration(self.access_token_lifetime)
                ),
            ));
        }
        if self.refresh_idle_timeout.is_zero() || self.refresh_idle_timeout > REFRESH_LIFETIME_MAX {
            return Err(invalid(
                "refresh_idle_timeout",
                "must be between 1s and 366d",
            ));
        }
        if self.refresh_absolute_lifetime > REFRESH_LIFETIME_MAX {
            return Err(invalid("refresh_absolute_lifetime", "must be at most 366d"));
        }
        if self.refresh_absolute_lifetime < self.refresh_idle_timeout {
            return Err(invalid(
                "refresh_absolute_lifetime",
                "must not be shorter than refresh_idle_timeout",
            ));
        }
        if self.refresh_grace_period > Duration::from_secs(60) {
            return Err(invalid(
                "refresh_grace_period",
                "must be at most 60s (0 disables it)",
            ));
        }
        if self.clock_leeway > LEEWAY_MAX {
            return Err(invalid("clock_leeway", "must be at most 30s"));
        }
        Ok(())
    }
}

fn toml_error(path: &Path, e: &toml::de::Error) -> ConfigError {
    invalid(&path.display().to_string(), e.message().replace('\n', " "))
}

fn duration(setting: &str, value: Option<String>, default: &str) -> Result<Duration, ConfigError> {
    let raw = value.as_deref().unwrap_or(default);
    parse_duration(raw).ok_or_else(|| {
        invalid(
            setting,
            format!("{raw:?} is not a duration such as \"30s\", \"10m\", \"12h\" or \"14d\""),
        )
    })
}

/// `duration`, refused outside `range` with a message naming it.
fn bounded_duration(
    setting: &str,
    value: Option<String>,
    default: &str,
    range: std::ops::RangeInclusive<Duration>,
) -> Result<Duration, ConfigError> {
    let d = duration(setting, value, default)?;
    if range.contains(&d) {
        Ok(d)
    } else {
        Err(invalid(
            setting,
            format!(
                "must be between {} and {}",
                show_duration(*range.start()),
                show_duration(*range.end())
            ),
        ))
    }
}

/// Parses `"<integer><unit>"` with unit `s`, `m`, `h` or `d`; `"0"` is zero.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    if raw == "0" {
        return Some(Duration::ZERO);
    }
    let split = raw.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = raw.split_at(split);
    let n: u64 = number.parse().ok()?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit_secs).map(Duration::from_secs)
}

fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// RFC 8414: an `https` URL with no query or fragment. Plain `http` is accepted for
/// loopback hosts only (development). No path: the metadata is served at the root.
fn validate_issuer_url(raw: &str) -> Result<String, ConfigError> {
    let url = url::Url::parse(raw)
        .map_err(|e| invalid("issuer_url", format!("{raw:?} is not a URL: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.host().is_none() || !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
        return Err(invalid(
            "issuer_url",
            format!("{raw:?} must be an https URL (http only for localhost)"),
        ));
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.path() != "/"
    {
        return Err(invalid(
            "issuer_url",
            format!("{raw:?} must be scheme://host[:port] with no path, query, fragment or user"),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn validate_database_url(raw: &str) -> Result<String, ConfigError> {
    let scheme_ok = raw.starts_with("sqlite:")
        || raw.starts_with("postgres://")
        || raw.starts_with("postgresql://");
    if scheme_ok && (raw.starts_with("sqlite:") || url::Url::parse(raw).is_ok()) {
        Ok(raw.to_owned())
    } else {
        Err(invalid(
            "database_url",
            "expected sqlite://path/to/file.db or postgres://user@host:5432/database",
        ))
    }
}

fn validate_redis_url(raw: &str) -> Result<String, ConfigError> {
    match url::Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "redis" | "rediss") && url.host().is_some() => {
            Ok(raw.to_owned())
        }
        _ => Err(invalid(
            "redis_url",
            "expected redis://[:password@]host:6379[/db], or rediss:// for TLS",
        )),
    }
}

/// `"N/duration"` (`"30/1m"`), or `"off"`.
fn rate_limit(
    setting: &str,
    value: Option<String>,
    default: &str,
) -> Result<Option<RateLimit>, ConfigError> {
    let raw = value.unwrap_or_else(|| default.to_owned());
    if raw.trim() == "off" {
        return Ok(None);
    }
    let parsed = raw.split_once('/').and_then(|(max, window)| {
        let max = max.trim().parse::<u32>().ok().filter(|m| *m > 0)?;
        let window = parse_duration(window.trim())
            .filter(|w| (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(w))?;
        Some(RateLimit { max, window })
    });
    parsed.map(Some).ok_or_else(|| {
        invalid(
            setting,
            format!(
                "{raw:?}: expected requests/window such as \"30/1m\" (window 1s to 1d), or \"off\""
            ),
        )
    })
}

/// A database or Redis URL. It may carry a password, so it prints (`Debug`,
/// `Display`) with the password replaced by `***`; `expose` gives the URL itself, to
/// connect with.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL, password included: to connect, never to print.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redacted_url(&self.0))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({self})")
    }
}

/// A database URL as it may be logged: the password, if any, replaced by `***`.
///
/// A password can also ride in the query (`?password=`, `?sslpassword=`: sqlx reads
/// them), so every query parameter whose name says `pass`, `secret` or `token` is
/// hidden too. A URL that does not parse prints as its scheme alone (an SQLite path,
/// which has no password, prints whole).
pub fn redacted_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return if raw.starts_with("sqlite:") {
            raw.to_owned()
        } else {
            let scheme = raw.split(':').next().unwrap_or_default();
            format!("{scheme}:<unparsable URL hidden>")
        };
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    let secret_name = |name: &str| {
        let name = name.to_ascii_lowercase();
        ["pass", "secret", "token"].iter().any(|s| name.contains(s))
    };
    if url.query_pairs().any(|(name, _)| secret_name(&name)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if secret_name(&name) {
                    "***".to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Normalises an origin (`scheme://host[:port]`) the way browsers send it.
fn validate_origin(setting: &str, raw: &str) -> Result<String, ConfigError> {
    let url =
        url::Url::parse(raw).map_err(|_| invalid(setting, format!("{raw:?} is not an origin")))?;
    let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
    if !matches!(url.scheme(), "http" | "https") || !bare || url.host().is_none() {
        return Err(invalid(
            setting,
            format!("{raw:?} must be an origin such as https://app.example.com, without a path"),
        ));
    }
    Ok(url.origin().ascii_serialization())
}

fn client_from_file(
    index: usize,
    c: ClientFile,
    default_audience: &str,
    defaults: &TokenSettings,
) -> Result<Client, ConfigError> {
    let setting = format!("clients[{index}]");
    let named = |e: ConfigError| ConfigError {
        setting: format!("{setting}.{}", e.setting),
        message: e.message,
    };
    let or_default = |name: &str, value: Option<String>, default: Duration| match value {
        Some(v) => duration(name, Some(v), "0").map_err(named),
        None => Ok(default),
    };
    let tokens = TokenSettings {
        access_token_lifetime: or_default(
            "access_token_lifetime",
            c.access_token_lifetime,
            defaults.access_token_lifetime,
        )?,
        refresh_idle_timeout: or_default(
            "refresh_idle_timeout",
            c.refresh_idle_timeout,
            defaults.refresh_idle_timeout,
        )?,
        refresh_absolute_lifetime: or_default(
            "refresh_absolute_lifetime",
            c.refresh_absolute_lifetime,
            defaults.refresh_absolute_lifetime,
        )?,
        refresh_grace_period: or_default(
            "refresh_grace_period",
            c.refresh_grace_period,
            defaults.refresh_grace_period,
        )?,
        clock_leeway: defaults.clock_leeway,
    };
    tokens.validate().map_err(named)?;
    for scope in &c.scopes {
        let ok = !scope.is_empty()
            && scope
                .chars()
                .all(|ch| ch.is_ascii_graphic() && ch != '"' && ch != '\\');
        if !ok {
            return Err(invalid(
                &format!("{setting}.scopes"),
                format!("{scope:?} is not a scope token (RFC 6749 §3.3)"),
            ));
        }
    }
    if c.client_id.trim().is_empty() || c.client_id.len() > 128 {
        return Err(invalid(
            &format!("{setting}.client_id"),
            "must be 1 to 128 characters",
        ));
    }
    let delivery = c.delivery.unwrap_or(match c.kind {
        ClientKind::Spa => Delivery::Cookie,
        ClientKind::Mobile | ClientKind::Service => Delivery::Body,
    });
    let allowed_origins = c
        .allowed_origins
        .iter()
        .map(|o| validate_origin(&format!("{setting}.allowed_origins"), o))
        .collect::<Result<Vec<_>, _>>()?;
    if delivery == Delivery::Cookie && allowed_origins.is_empty() {
        return Err(invalid(
            &format!("{setting}.allowed_origins"),
            "a cookie-delivery client needs at least one allowed origin (the CSRF defence checks it)",
        ));
    }
    let audiences = c
        .audiences
        .unwrap_or_else(|| vec![default_audience.to_owned()]);
    if audiences.is_empty() || audiences.iter().any(|a| a.trim().is_empty()) {
        return Err(invalid(
            &format!("{setting}.audiences"),
            "must list at least one non-empty audience",
        ));
    }
    let secret_hash = match (c.kind, c.client_secret_hash.as_deref()) {
        (ClientKind::Service, Some(raw)) => Some(
            crate::crypto::client_secret::parse_hash(raw).ok_or_else(|| {
                invalid(
                    &format!("{setting}.client_secret_hash"),
                    "expected sha256:<64 hex digits>, as `token-issuer client-secret` prints it",
                )
            })?,
        ),
        (ClientKind::Service, None) => {
            return Err(invalid(
                &format!("{setting}.client_secret_hash"),
                "a service client needs a secret: run `token-issuer client-secret`",
            ));
        }
        (_, Some(_)) => {
            return Err(invalid(
                &format!("{setting}.client_secret_hash"),
                "only service clients have a secret",
            ));
        }
        (_, None) => None,
    };
    let introspection_audiences = match (c.kind, c.introspection_audiences) {
        (ClientKind::Service, Some(list)) => {
            if list.iter().any(|a| a.trim().is_empty()) {
                return Err(invalid(
                    &format!("{setting}.introspection_audiences"),
                    "must not list an empty audience",
                ));
            }
            list
        }
        (ClientKind::Service, None) => Vec::new(),
        (_, Some(_)) => {
            return Err(invalid(
                &format!("{setting}.introspection_audiences"),
                "only service clients introspect",
            ));
        }
        (_, None) => Vec::new(),
    };
    Ok(Client {
        id: c.client_id,
        kind: c.kind,
        delivery,
        allowed_origins,
        audiences,
        secret_hash,
        scopes: c.scopes,
        access_lifetime: tokens.access_token_lifetime,
        policy: tokens.policy(),
        introspection_audiences,
    })
}

impl TokenSettings {
    /// The session rules these settings make.
    pub fn policy(&self) -> RefreshPolicy {
        RefreshPolicy {
            idle_timeout: self.refresh_idle_timeout,
            absolute_lifetime: self.refresh_absolute_lifetime,
            grace_period: self.refresh_grace_period,
        }
    }
}

fn dev_clients(audience: &str, tokens: &TokenSettings) -> Vec<Client> {
    vec![
        Client {
            id: "dev".to_owned(),
            kind: ClientKind::Mobile,
            delivery: Delivery::Body,
            allowed_origins: Vec::new(),
            audiences: vec![audience.to_owned()],
            secret_hash: None,
            scopes: Vec::new(),
            access_lifetime: tokens.access_token_lifetime,
            policy: tokens.policy(),
            introspection_audiences: Vec::new(),
        },
        Client {
            id: "dev-spa".to_owned(),
            kind: ClientKind::Spa,
            delivery: Delivery::Cookie,
            allowed_origins: vec!["http://localhost:5173".to_owned()],
            audiences: vec![audience.to_owned()],
            secret_hash: None,
            scopes: Vec::new(),
            access_lifetime: tokens.access_token_lifetime,
            policy: tokens.policy(),
            introspection_audiences: Vec::new(),
        },
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn load(toml_text: Option<&str>, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issuer.toml");
        if let Some(text) = toml_text {
            std::fs::write(&path, text).unwrap();
        }
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        Settings::load_from(toml_text.map(|_| path.as_path()), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn defaults_are_the_development_configuration() {
        let s = load(None, &[]).unwrap();
        assert_eq!(s.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.issuer_url, "http://localhost:8080");
        assert_eq!(s.database_url.expose(), "sqlite://data/token-issuer.db");
        assert_eq!(s.tokens.access_token_lifetime, Duration::from_secs(600));
        assert_eq!(s.tokens.refresh_grace_period, Duration::from_secs(10));
        let ids: Vec<_> = s.clients.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["dev", "dev-spa"]);
        assert!(s.allow_registration);
        assert_eq!(
            s.limits.register_per_ip,
            Some(RateLimit {
                max: 20,
                window: Duration::from_secs(3600)
            }),
            "registration is limited by default"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let s = load(
            Some("issuer_url = \"https://a.example\"\n[[clients]]\nclient_id = \"m\"\nkind = \"mobile\"\n"),
            &[("ISSUER_URL", "https://b.example/"), ("ISSUER_REFRESH_GRACE_PERIOD", "0")],
        )
        .unwrap();
        assert_eq!(s.issuer_url, "https://b.example");
        assert_eq!(s.tokens.refresh_grace_period, Duration::ZERO);
        assert_eq!(s.clients[0].audiences, ["https://b.example"]);
    }

    #[test]
    fn access_lifetime_outside_range_names_the_setting() {
        let err = load(None, &[("ISSUER_ACCESS_TOKEN_LIFETIME", "20m")]).unwrap_err();
        assert_eq!(err.setting, "access_token_lifetime");
        assert!(err.to_string().contains("5m to 15m"), "{err}");
        assert!(!err.to_string().contains('\n'));
        let err = load(None, &[("ISSUER_ACCESS_TOKEN_LIFETIME", "4m")]).unwrap_err();
        assert_eq!(err.setting, "access_token_lifetime");
    }

    #[test]
    fn unknown_key_and_bad_url_are_refused() {
        let err = load(Some("acces_token_lifetime = \"10m\"\n"), &[]).unwrap_err();
        assert!(err.message.contains("acces_token_lifetime"), "{err}");
        assert!(!err.to_string().contains('\n'));
        let err = load(None, &[("ISSUER_URL", "not a url")]).unwrap_err();
        assert_eq!(err.setting, "issuer_url");
        for bad in [
            "ftp://x.example",
            "http://auth.example.com",
            "https://a.example/tenant",
            "https://a.example/?x=1",
        ] {
            let err = load(None, &[("ISSUER_URL", bad)]).unwrap_err();
            assert_eq!(err.setting, "issuer_url", "{bad}");
        }
        for good in [
            "https://auth.example.com",
            "http://127.0.0.1:8080",
            "http://localhost:9000/",
        ] {
            assert!(load(None, &[("ISSUER_URL", good)]).is_ok(), "{good}");
        }
        let err = load(None, &[("ISSUER_REFRESH_ABSOLUTE_LIFETIME", "4000000d")]).unwrap_err();
        assert_eq!(err.setting, "refresh_absolute_lifetime");
    }

    #[test]
    fn cookie_clients_need_an_origin_and_ids_are_unique() {
        let err = load(
            Some("[[clients]]\nclient_id = \"s\"\nkind = \"spa\"\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.setting, "clients[0].allowed_origins");
        let err = load(
            Some("[[clients]]\nclient_id = \"a\"\nkind = \"mobile\"\n[[clients]]\nclient_id = \"a\"\nkind = \"mobile\"\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.setting, "clients");
        let two_spas = "[[clients]]\nclient_id = \"a\"\nkind = \"spa\"\nallowed_origins = [\"https://a.example\"]\n\
                        [[clients]]\nclient_id = \"b\"\nkind = \"spa\"\nallowed_origins = [\"https://b.example\"]\n";
        assert_eq!(load(Some(two_spas), &[]).unwrap_err().setting, "clients");
    }

    #[test]
    fn database_urls_are_checked_and_redacted_for_logs() {
        let s = load(
            None,
            &[(
                "ISSUER_DATABASE_URL",
                "postgres://app:s3cret@db.internal:5432/issuer",
            )],
        )
        .unwrap();
        assert_eq!(
            s.database_url.to_string(),
            "postgres://app:***@db.internal:5432/issuer"
        );
        assert_eq!(
            s.database_url.expose(),
            "postgres://app:s3cret@db.internal:5432/issuer"
        );
        // The settings print without the password, whatever prints them.
        let s = load(
            None,
            &[
                (
                    "ISSUER_DATABASE_URL",
                    "postgres://app:s3cret@db.internal:5432/issuer",
                ),
                ("ISSUER_REDIS_URL", "redis://:r3dispw@cache.internal:6379/2"),
            ],
        )
        .unwrap();
        let printed = format!("{s:?}");
        assert!(
            !printed.contains("s3cret") && !printed.contains("r3dispw"),
            "{printed}"
        );
        assert!(printed.contains("postgres://app:***@db.internal:5432/issuer"));
        assert_eq!(
            load(None, &[("ISSUER_DATABASE_URL", "mysql://x")])
                .unwrap_err()
                .setting,
            "database_url"
        );
        assert_eq!(redacted_url("sqlite://data/x.db"), "sqlite://data/x.db");
        assert_eq!(
            redacted_url("postgres://app@db.internal/issuer?sslmode=require&password=s3cret"),
            "postgres://app@db.internal/issuer?sslmode=require&password=***"
        );
        assert_eq!(
            redacted_url("postgres://a:s3cret@[bad"),
            "postgres:<unparsable URL hidden>"
        );
    }

    #[test]
    fn rate_limits_and_redis_are_checked() {
        let s = load(None, &[]).unwrap();
        assert_eq!(s.redis_url, None);
        assert_eq!(
            s.limits.login_per_account,
            Some(RateLimit {
                max: 10,
                window: Duration::from_secs(60)
            })
        );
        let s = load(
            None,
            &[
                ("ISSUER_RATE_LIMIT_LOGIN_PER_IP", "off"),
                ("ISSUER_RATE_LIMIT_REFRESH_PER_FAMILY", "5/10s"),
                ("ISSUER_REDIS_URL", "redis://:pw@cache.internal:6379/2"),
            ],
        )
        .unwrap();
        assert_eq!(s.limits.login_per_ip, None);
        assert_eq!(
            s.limits.refresh_per_family,
            Some(RateLimit {
                max: 5,
                window: Duration::from_secs(10)
            })
        );
        assert_eq!(
            s.redis_url.as_ref().unwrap().to_string(),
            "redis://:***@cache.internal:6379/2"
        );
        for bad in ["0/1m", "10", "10/2w", "ten/1m", "5/0"] {
            let err = load(None, &[("ISSUER_RATE_LIMIT_LOGIN_PER_IP", bad)]).unwrap_err();
            assert_eq!(err.setting, "rate_limit_login_per_ip", "{bad}");
        }
        let err = load(None, &[("ISSUER_REDIS_URL", "http://cache:6379")]).unwrap_err();
        assert_eq!(err.setting, "redis_url");
        let tls = load(
            None,
            &[("ISSUER_REDIS_URL", "rediss://:pw@cache.internal:6380/0")],
        )
        .unwrap();
        assert_eq!(
            tls.redis_url.unwrap().to_string(),
            "rediss://:***@cache.internal:6380/0"
        );
    }

    #[test]
    fn clients_override_lifetimes_and_list_scopes() {
        let file = "refresh_grace_period = \"5s\"\n\
                    [[clients]]\nclient_id = \"m\"\nkind = \"mobile\"\n\
                    access_token_lifetime = \"5m\"\nrefresh_idle_timeout = \"1d\"\nscopes = [\"read\", \"write\"]\n\
                    [[clients]]\nclient_id = \"n\"\nkind = \"mobile\"\n";
        let s = load(Some(file), &[]).unwrap();
        let (m, n) = (&s.clients[0], &s.clients[1]);
        assert_eq!(m.access_lifetime, Duration::from_secs(300));
        assert_eq!(m.policy.idle_timeout, Duration::from_secs(86_400));
        assert_eq!(
            m.policy.grace_period,
            Duration::from_secs(5),
            "the default applies"
        );
        assert_eq!(m.scopes, ["read", "write"]);
        assert_eq!(n.access_lifetime, Duration::from_secs(600));
        assert!(n.scopes.is_empty());
        let err = load(
            Some("[[clients]]\nclient_id = \"m\"\nkind = \"mobile\"\naccess_token_lifetime = \"1h\"\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.setting, "clients[0].access_token_lifetime");
        let err = load(
            Some("[[clients]]\nclient_id = \"m\"\nkind = \"mobile\"\nscopes = [\"a b\"]\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.setting, "clients[0].scopes");
    }

    #[test]
    fn only_service_clients_list_introspection_audiences() {
        let hash = format!("sha256:{}", "0".repeat(64));
        let s = load(
            Some(&format!(
                "[[clients]]\nclient_id = \"rs\"\nkind = \"service\"\nclient_secret_hash = \"{hash}\"\n\
                 introspection_audiences = [\"https://api.example.com\"]\n"
            )),
            &[],
        )
        .unwrap();
        assert_eq!(
            s.clients[0].introspection_audiences,
            ["https://api.example.com"]
        );
        let err = load(
            Some("[[clients]]\nclient_id = \"m\"\nkind = \"mobile\"\nintrospection_audiences = [\"*\"]\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.setting, "clients[0].introspection_audiences");
    }

    #[test]
    fn trusted_proxies_are_ranges() {
        let s = load(
            None,
            &[(
                "ISSUER_TRUSTED_PROXIES",
                "10.0.0.0/8, 192.168.1.7 ,2001:db8::/32",
            )],
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let trusted = |addr: &str| s.trusted_proxies.iter().any(|r| r.contains(ip(addr)));
        assert!(trusted("10.200.3.4"));
        assert!(!trusted("11.0.0.1"));
        assert!(trusted("192.168.1.7"));
        assert!(!trusted("192.168.1.8"));
        assert!(trusted("2001:db8:ffff::1"));
        assert!(!trusted("2001:db9::1"));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        // An IPv4 client through a dual-stack socket; a range written mapped.
        assert!(trusted("::ffff:10.1.2.3"));
        assert!(!trusted("::ffff:11.1.2.3"));
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(mapped.contains(ip("10.9.9.9")) && mapped.contains(ip("::ffff:10.9.9.9")));
        assert!(!mapped.contains(ip("11.0.0.1")));
        for bad in ["10.0.0.0/33", "10.0.0/8", "example.com", "::/129"] {
            let err = load(None, &[("ISSUER_TRUSTED_PROXIES", bad)]).unwrap_err();
            assert_eq!(err.setting, "trusted_proxies", "{bad}");
        }
        assert!(load(None, &[]).unwrap().trusted_proxies.is_empty());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_duration("14d"),
            Some(Duration::from_secs(14 * 86_400))
        );
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("1w"), None);
    }
}
