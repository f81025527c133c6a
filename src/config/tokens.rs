//! Token lifetimes: the defaults of every client, within the bounds DESIGN.md sets.

use std::time::Duration;

use super::units::{duration, show_duration};
use super::{ConfigError, invalid};
use crate::domain::family::RefreshPolicy;

/// Access tokens may live between these bounds (DESIGN.md: 5–15 minutes).
pub(super) const ACCESS_LIFETIME_MIN: Duration = Duration::from_secs(5 * 60);
pub(super) const ACCESS_LIFETIME_MAX: Duration = Duration::from_secs(15 * 60);
/// Longest refresh-family lifetime (idle or absolute).
pub(super) const REFRESH_LIFETIME_MAX: Duration = Duration::from_secs(366 * 86_400);
/// Largest clock leeway the verifier accepts.
pub(super) const LEEWAY_MAX: Duration = Duration::from_secs(30);

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

/// The token keys of the file (or of a client in it).
pub(super) struct TokenFile {
    pub(super) access_token_lifetime: Option<String>,
    pub(super) refresh_idle_timeout: Option<String>,
    pub(super) refresh_absolute_lifetime: Option<String>,
    pub(super) refresh_grace_period: Option<String>,
    pub(super) clock_leeway: Option<String>,
}

impl TokenSettings {
    /// The defaults, read and checked.
    pub(super) fn from_file(f: TokenFile) -> Result<Self, ConfigError> {
        let tokens = Self {
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
        Ok(tokens)
    }
}

impl TokenSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
