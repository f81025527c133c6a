//! The configuration as read: the TOML file named by `ISSUER_CONFIG`, with every
//! `ISSUER_*` environment variable laid over it, in one schema (unknown keys refused).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, LogFormat, invalid};
use crate::domain::client::{ClientKind, Delivery, DpopPolicy, ForeignKeyPolicy, NoncePolicy};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSettings {
    pub(super) bind: Option<String>,
    pub(super) issuer_url: Option<String>,
    pub(super) audience: Option<String>,
    pub(super) database_url: Option<String>,
    pub(super) database_timeout: Option<String>,
    pub(super) redis_url: Option<String>,
    pub(super) redis_key_prefix: Option<String>,
    pub(super) redis_ca_file: Option<PathBuf>,
    pub(super) rate_limit_login_per_ip: Option<String>,
    pub(super) rate_limit_login_per_account: Option<String>,
    pub(super) rate_limit_refresh_per_family: Option<String>,
    pub(super) rate_limit_register_per_ip: Option<String>,
    pub(super) rate_limit_client_credentials: Option<String>,
    pub(super) rate_limit_code_exchange_per_ip: Option<String>,
    pub(super) trusted_proxies: Option<String>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) keys_dir: Option<PathBuf>,
    pub(super) key_rotation_interval: Option<String>,
    pub(super) audit_retention: Option<String>,
    pub(super) log: Option<String>,
    pub(super) log_format: Option<LogFormat>,
    pub(super) allow_registration: Option<bool>,
    pub(super) access_token_lifetime: Option<String>,
    pub(super) refresh_idle_timeout: Option<String>,
    pub(super) refresh_absolute_lifetime: Option<String>,
    pub(super) refresh_grace_period: Option<String>,
    pub(super) clock_leeway: Option<String>,
    pub(super) request_header_timeout: Option<String>,
    pub(super) request_body_timeout: Option<String>,
    pub(super) password_hash_concurrency: Option<usize>,
    pub(super) password_hash_queue: Option<usize>,
    pub(super) product_name: Option<String>,
    pub(super) logo_url: Option<String>,
    pub(super) sign_in_session_lifetime: Option<String>,
    pub(super) clients: Option<Vec<ClientFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClientFile {
    pub(super) client_id: String,
    pub(super) kind: ClientKind,
    pub(super) delivery: Option<Delivery>,
    #[serde(default)]
    pub(super) allowed_origins: Vec<String>,
    pub(super) audiences: Option<Vec<String>>,
    /// `sha256:<hex>` of the secret, from `token-issuer client-secret`.
    pub(super) client_secret_hash: Option<String>,
    /// Service clients: the audiences (besides their `client_id`) whose tokens they may
    /// introspect; `["*"]` for all.
    pub(super) introspection_audiences: Option<Vec<String>>,
    /// DPoP: `off`, `allowed` (the default) or `required`.
    #[serde(default)]
    pub(super) dpop: DpopPolicy,
    /// A refresh with a DPoP proof of a foreign key: `refuse` (the default) or `revoke`.
    #[serde(default)]
    pub(super) dpop_foreign_key: ForeignKeyPolicy,
    /// DPoP proofs must carry a server nonce: `off` (the default) or `required`.
    #[serde(default)]
    pub(super) dpop_nonce: NoncePolicy,
    /// Service clients: may get tokens of their own (client credentials); needs
    /// `audiences`. Default false.
    #[serde(default)]
    pub(super) client_credentials: bool,
    /// Service clients: the JWK Set of their `private_key_jwt` public keys,
    /// `{keys = [{kty = "EC", crv = "P-256", x = "...", y = "...", kid = "..."}]}`.
    pub(super) jwks: Option<serde_json::Value>,
    /// Service clients: where their JWK Set is fetched from instead of `jwks` (https;
    /// http only on a loopback host or localhost).
    pub(super) jwks_uri: Option<String>,
    /// Where the authorization endpoint may redirect (exact URIs; a native client's
    /// loopback URIs on any port).
    #[serde(default)]
    pub(super) redirect_uris: Vec<String>,
    /// The operator's own application: no consent, and the password grant. Default:
    /// true for a client without `redirect_uris` (the password grant is its only way
    /// in), false for one with them.
    pub(super) first_party: Option<bool>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    pub(super) access_token_lifetime: Option<String>,
    pub(super) refresh_idle_timeout: Option<String>,
    pub(super) refresh_absolute_lifetime: Option<String>,
    pub(super) refresh_grace_period: Option<String>,
}

/// Environment variables that override a scalar setting, with the setting they set.
const ENV_OVERRIDES: &[(&str, &str, EnvKind)] = &[
    ("ISSUER_BIND", "bind", EnvKind::Text),
    ("ISSUER_URL", "issuer_url", EnvKind::Text),
    ("ISSUER_AUDIENCE", "audience", EnvKind::Text),
    ("ISSUER_PRODUCT_NAME", "product_name", EnvKind::Text),
    ("ISSUER_LOGO_URL", "logo_url", EnvKind::Text),
    (
        "ISSUER_SIGN_IN_SESSION_LIFETIME",
        "sign_in_session_lifetime",
        EnvKind::Text,
    ),
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
    (
        "ISSUER_RATE_LIMIT_CLIENT_CREDENTIALS",
        "rate_limit_client_credentials",
        EnvKind::Text,
    ),
    (
        "ISSUER_RATE_LIMIT_CODE_EXCHANGE_PER_IP",
        "rate_limit_code_exchange_per_ip",
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

/// The file (if any) with the environment laid over it.
pub(super) fn read(
    file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<FileSettings, ConfigError> {
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
    Ok(parsed)
}

fn toml_error(path: &Path, e: &toml::de::Error) -> ConfigError {
    invalid(&path.display().to_string(), e.message().replace('\n', " "))
}
