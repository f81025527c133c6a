//! One builder per section of the settings: each reads its keys of the file, applies
//! its defaults and refuses what is out of range, naming the setting.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::units::{bounded_duration, duration, parse_duration, rate_limit};
use super::urls::{SecretUrl, validate_database_url, validate_redis_url};
use super::{Cidr, ConfigError, HashingSettings, RateLimits, invalid};
use crate::server::HttpTimeouts;

pub(super) fn bind(raw: Option<&str>) -> Result<SocketAddr, ConfigError> {
    raw.unwrap_or("127.0.0.1:8080")
        .parse::<SocketAddr>()
        .map_err(|_| invalid("bind", "expected an address such as 127.0.0.1:8080"))
}

/// What `/v1` requires in `aud`: the issuer URL unless set.
pub(super) fn audience(raw: Option<String>, issuer_url: &str) -> Result<String, ConfigError> {
    let audience = raw.unwrap_or_else(|| issuer_url.to_owned());
    if audience.trim().is_empty() {
        return Err(invalid("audience", "must not be empty"));
    }
    Ok(audience)
}

/// The database URL (SQLite under `data_dir` by default) and its timeout.
pub(super) fn database(
    url: Option<String>,
    timeout: Option<String>,
    data_dir: &Path,
) -> Result<(SecretUrl, Duration), ConfigError> {
    let url = SecretUrl::new(match url {
        Some(url) => validate_database_url(&url)?,
        None => format!("sqlite://{}", data_dir.join("token-issuer.db").display()),
    });
    let timeout = duration("database_timeout", timeout, "2s")?;
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&timeout) {
        return Err(invalid("database_timeout", "must be between 1s and 60s"));
    }
    Ok((url, timeout))
}

/// The Redis URL, if any, and the key prefix.
pub(super) fn redis(
    url: Option<String>,
    prefix: Option<String>,
) -> Result<(Option<SecretUrl>, String), ConfigError> {
    let url = url
        .filter(|u| !u.trim().is_empty())
        .map(|u| validate_redis_url(&u).map(SecretUrl::new))
        .transpose()?;
    let prefix = prefix.unwrap_or_else(|| "token-issuer:".to_owned());
    if prefix.len() > 64 || prefix.chars().any(char::is_whitespace) {
        return Err(invalid(
            "redis_key_prefix",
            "must be at most 64 characters, without spaces",
        ));
    }
    Ok((url, prefix))
}

pub(super) fn rate_limits(
    login_per_ip: Option<String>,
    login_per_account: Option<String>,
    refresh_per_family: Option<String>,
    register_per_ip: Option<String>,
    client_credentials: Option<String>,
    code_exchange_per_ip: Option<String>,
) -> Result<RateLimits, ConfigError> {
    Ok(RateLimits {
        login_per_ip: rate_limit("rate_limit_login_per_ip", login_per_ip, "30/1m")?,
        login_per_account: rate_limit("rate_limit_login_per_account", login_per_account, "10/1m")?,
        refresh_per_family: rate_limit(
            "rate_limit_refresh_per_family",
            refresh_per_family,
            "30/1m",
        )?,
        register_per_ip: rate_limit("rate_limit_register_per_ip", register_per_ip, "20/1h")?,
        client_credentials: rate_limit(
            "rate_limit_client_credentials",
            client_credentials,
            "600/1m",
        )?,
        code_exchange_per_ip: rate_limit(
            "rate_limit_code_exchange_per_ip",
            code_exchange_per_ip,
            "300/1m",
        )?,
    })
}

pub(super) fn hashing(
    concurrency: Option<usize>,
    queue: Option<usize>,
) -> Result<HashingSettings, ConfigError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let hashing = HashingSettings {
        // One core stays free for refreshes and verification during a login flood.
        concurrency: concurrency.unwrap_or(cores.saturating_sub(1).max(1)),
        queue: queue.unwrap_or(256),
    };
    if hashing.concurrency == 0 {
        return Err(invalid("password_hash_concurrency", "must be at least 1"));
    }
    Ok(hashing)
}

/// `"10.0.0.0/8, 192.168.0.1"`.
pub(super) fn trusted_proxies(raw: Option<&str>) -> Result<Vec<Cidr>, ConfigError> {
    raw.unwrap_or("")
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
        .collect()
}

pub(super) fn audit_retention(raw: Option<String>) -> Result<Duration, ConfigError> {
    let keep = duration("audit_retention", raw, "365d")?;
    if keep < Duration::from_secs(86_400) {
        return Err(invalid("audit_retention", "must be at least 1d"));
    }
    Ok(keep)
}

/// `"30d"` (at least an hour), or `"off"` (the default: the CLI rotates).
pub(super) fn key_rotation_interval(raw: Option<&str>) -> Result<Option<Duration>, ConfigError> {
    match raw.map(str::trim) {
        None | Some("off") => Ok(None),
        Some(raw) => parse_duration(raw)
            .filter(|d| *d >= Duration::from_secs(3600))
            .map(Some)
            .ok_or_else(|| {
                invalid(
                    "key_rotation_interval",
                    format!(
                        "{raw:?}: expected a duration of at least 1h, such as \"30d\", or \"off\""
                    ),
                )
            }),
    }
}

pub(super) fn http_timeouts(
    header: Option<String>,
    body: Option<String>,
) -> Result<HttpTimeouts, ConfigError> {
    Ok(HttpTimeouts {
        header_timeout: bounded_duration(
            "request_header_timeout",
            header,
            "10s",
            Duration::from_secs(1)..=Duration::from_secs(120),
        )?,
        body_timeout: bounded_duration(
            "request_body_timeout",
            body,
            "30s",
            Duration::from_secs(1)..=Duration::from_secs(600),
        )?,
    })
}

/// The hosted pages: the product name (1 to 64 printable characters, default
/// `token-issuer`), an optional logo URL, and how long a browser stays signed in (5
/// minutes to 90 days, default `1d`).
pub(super) fn sign_in(
    product_name: Option<String>,
    logo_url: Option<String>,
    lifetime: Option<String>,
) -> Result<crate::service::browser::SignInSettings, ConfigError> {
    let product_name = product_name.unwrap_or_else(|| "token-issuer".to_owned());
    let printable = !product_name.trim().is_empty()
        && product_name.chars().count() <= 64
        && !product_name.chars().any(char::is_control);
    if !printable {
        return Err(invalid(
            "product_name",
            "must be 1 to 64 printable characters",
        ));
    }
    let (logo_url, logo_origin) = match logo_url.filter(|u| !u.trim().is_empty()) {
        Some(raw) => {
            let (url, origin) = super::urls::validate_logo_url(&raw)?;
            (Some(url), Some(origin))
        }
        None => (None, None),
    };
    let session_lifetime = duration("sign_in_session_lifetime", lifetime, "1d")?;
    if !(Duration::from_secs(300)..=Duration::from_secs(90 * 86_400)).contains(&session_lifetime) {
        return Err(invalid(
            "sign_in_session_lifetime",
            "must be between 5m and 90d",
        ));
    }
    Ok(crate::service::browser::SignInSettings {
        product_name,
        logo_url,
        logo_origin,
        session_lifetime,
    })
}
