//! Rate limits: fixed windows, counted on Redis (`RedisLink::hit`) or, without it, in
//! this process (`LocalLimits`, one table per kind).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::lock;
use crate::domain::address;

/// A rate limit: at most `max` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub max: u32,
    pub window: Duration,
}

/// Most rate-limit windows kept in memory (see `LocalLimits::count` for a full table).
const LOCAL_WINDOWS_MAX: usize = 100_000;
/// Which rate limit a hit counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    LoginIp,
    /// Password checks of an account (failures; a success is given back).
    LoginAccount,
    /// Password checks of a locked account by a caller shown to be its owner (a known
    /// source, a live session): per account and caller.
    LoginAccountTrusted,
    RefreshFamily,
    Registration,
    /// Client-credentials grants per `service` client.
    ClientCredentials,
    /// Authorization code exchanges per client address.
    CodeExchangeIp,
}

impl LimitKind {
    const COUNT: usize = 7;

    /// Its in-process table: one per kind, so that one kind's subjects (cheap to make,
    /// such as addresses) can never push another's (accounts) out.
    fn index(self) -> usize {
        match self {
            Self::LoginIp => 0,
            Self::LoginAccount => 1,
            Self::LoginAccountTrusted => 2,
            Self::RefreshFamily => 3,
            Self::Registration => 4,
            Self::ClientCredentials => 5,
            Self::CodeExchangeIp => 6,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Self::LoginIp => "login-ip",
            Self::LoginAccount => "login-account",
            Self::LoginAccountTrusted => "login-account-trusted",
            Self::RefreshFamily => "refresh-family",
            Self::Registration => "registration",
            Self::ClientCredentials => "client-credentials",
            Self::CodeExchangeIp => "code-exchange-ip",
        }
    }
}

/// What `SharedState::take` took, to give it back.
#[derive(Debug)]
pub struct Taken {
    pub(super) kind: LimitKind,
    pub(super) key: String,
    pub(super) where_: Counted,
}

/// Where a hit was counted, and how to recognise its window later.
#[derive(Debug)]
pub(super) enum Counted {
    /// In this process's window ending then.
    Locally(Instant),
    /// On Redis, with so much of the window left at that instant.
    OnRedis { at: Instant, left: Duration },
}

/// The in-process windows of one limit kind.
#[derive(Debug, Default)]
struct Table {
    windows: HashMap<String, Window>,
    /// Full of subjects over their limit until then: new subjects are refused without
    /// looking again.
    full_until: Option<Instant>,
}

/// An in-process rate-limit window.
#[derive(Debug, Clone, Copy)]
struct Window {
    count: u64,
    end: Instant,
    /// The limit it is counted against: a window over it is never dropped to make room.
    max: u32,
}

impl Window {
    fn over_limit(&self, now: Instant) -> bool {
        self.end > now && self.count >= u64::from(self.max)
    }
}

/// Drops expired windows; if that leaves the table fuller than nine tenths, drops the
/// oldest windows that are not over their limit down to that (in one pass, so a full
/// table costs a sort once per many new subjects, not per request).
fn make_room(windows: &mut HashMap<String, Window>, max: usize, now: Instant) {
    windows.retain(|_, w| w.end > now);
    let target = max - max / 10;
    if windows.len() < target {
        return;
    }
    let mut evictable: Vec<(Instant, String)> = windows
        .iter()
        .filter(|(_, w)| !w.over_limit(now))
        .map(|(k, w)| (w.end, k.clone()))
        .collect();
    evictable.sort_unstable();
    let excess = windows.len() + 1 - target;
    for (_, key) in evictable.into_iter().take(excess) {
        windows.remove(&key);
    }
}

/// The in-process windows, one table per `LimitKind`.
pub(super) struct LocalLimits {
    tables: Vec<Mutex<Table>>,
    /// Most windows a table keeps (`LOCAL_WINDOWS_MAX`).
    pub(super) windows_max: usize,
}

impl LocalLimits {
    pub(super) fn new() -> Self {
        Self {
            tables: (0..LimitKind::COUNT)
                .map(|_| Mutex::new(Table::default()))
                .collect(),
            windows_max: LOCAL_WINDOWS_MAX,
        }
    }

    /// Takes back a hit counted in the window of `key` that ends at `end`, if it is
    /// still that window.
    pub(super) fn give_back(&self, kind: LimitKind, key: &str, end: Instant) {
        let mut table = lock(&self.tables[kind.index()]);
        if let Some(window) = table.windows.get_mut(key)
            && window.end == end
        {
            window.count = window.count.saturating_sub(1);
        }
    }

    /// Adds a hit to the in-process window of `key`: the count, the time left and the
    /// window's end. A full table makes room by dropping expired windows, then the
    /// oldest windows of subjects that are not over their limit; the windows of
    /// subjects over their limit are never dropped, and when nothing else can go, a
    /// new subject is refused (`Err`) rather than let through uncounted, until the
    /// first of those windows ends.
    pub(super) fn count(
        &self,
        kind: LimitKind,
        key: &str,
        limit: RateLimit,
    ) -> Result<(u64, Duration, Instant), Duration> {
        let now = Instant::now();
        let mut table = lock(&self.tables[kind.index()]);
        if !table.windows.contains_key(key) && table.windows.len() >= self.windows_max {
            if let Some(until) = table.full_until.filter(|until| *until > now) {
                return Err(until - now);
            }
            make_room(&mut table.windows, self.windows_max, now);
            if table.windows.len() >= self.windows_max {
                let until = table.windows.values().map(|w| w.end).min().unwrap_or(now);
                table.full_until = Some(until);
                tracing::warn!(
                    kind = kind.tag(),
                    "rate-limit table full of subjects over their limit: refusing new ones"
                );
                return Err(until.saturating_duration_since(now));
            }
        }
        let window = table.windows.entry(key.to_owned()).or_insert(Window {
            count: 0,
            end: now + limit.window,
            max: limit.max,
        });
        if window.end <= now {
            *window = Window {
                count: 0,
                end: now + limit.window,
                max: limit.max,
            };
        }
        // Over the limit, a hit is not counted: hits given back after a burst bring
        // the count under the limit again.
        if window.count < u64::from(limit.max) {
            window.count += 1;
            Ok((window.count, window.end - now, window.end))
        } else {
            Ok((window.count + 1, window.end - now, window.end))
        }
    }
}

pub(super) fn over(count: u64, left: Duration, limit: RateLimit) -> Result<(), Duration> {
    if count > u64::from(limit.max) {
        Err(left.max(Duration::from_secs(1)))
    } else {
        Ok(())
    }
}

pub(super) fn limit_key(kind: LimitKind, subject: &str) -> String {
    let subject = match (kind, subject.parse::<IpAddr>()) {
        (LimitKind::LoginIp | LimitKind::Registration, Ok(ip)) => address::source(ip),
        _ => subject.to_owned(),
    };
    format!("rl:{}:{}", kind.tag(), hashed(&subject))
}

/// A short digest of a rate-limit subject: no IP or e-mail address is stored as such.
fn hashed(subject: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, subject.as_bytes());
    crate::crypto::hex(&digest.as_ref()[..16])
}
