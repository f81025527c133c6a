//! The time source. Production reads the system clock; tests inject a clock they can
//! move forward, so expiry, idle timeout and the grace window are tested without sleeps.

use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;

/// Where "now" comes from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that starts at the system time and only moves when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<OffsetDateTime>,
}

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *now += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(OffsetDateTime::now_utc())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Lets something costly happen at most once per `every` (a re-read of the key files
/// on an unknown key id, a scan of a full list), however many callers ask: the first
/// caller after the interval gets `true`. Monotonic time, not the `Clock`: it bounds
/// work, it does not decide validity.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Mutex<Option<std::time::Instant>>,
}

impl Throttle {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(None),
        }
    }

    /// Whether the caller may go ahead now (and the interval starts again).
    pub fn ready(&self) -> bool {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < self.every) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        true
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_caller_through_per_interval() {
        let t = Throttle::new(Duration::from_millis(50));
        assert!(t.ready());
        assert!(!t.ready());
        std::thread::sleep(Duration::from_millis(60));
        assert!(t.ready());
    }
}
