//! Values as written in the configuration: durations (`"30s"`, `"10m"`, `"12h"`,
//! `"14d"`, `"0"`) and rate limits (`"30/1m"`, `"off"`).
//!
//! Durations are parsed here rather than with `humantime`: it also accepts weeks,
//! months and sums such as `"1h 30m"`, which would widen what the README documents
//! and the tests hold; this grammar is four units and a number.

use std::time::Duration;

use super::{ConfigError, RateLimit, invalid};

pub(super) fn duration(
    setting: &str,
    value: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let raw = value.as_deref().unwrap_or(default);
    parse_duration(raw).ok_or_else(|| {
        invalid(
            setting,
            format!("{raw:?} is not a duration such as \"30s\", \"10m\", \"12h\" or \"14d\""),
        )
    })
}

/// `duration`, refused outside `range` with a message naming it.
pub(super) fn bounded_duration(
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

pub(super) fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// `"N/duration"` (`"30/1m"`), or `"off"`.
pub(super) fn rate_limit(
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
