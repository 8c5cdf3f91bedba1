//! Retry budgets, as Linkerd keeps them: over a sliding window (`ttl`), retries may add at most
//! `ratio` of the original requests, plus `min_per_second` × `ttl` so that a quiet service can
//! still retry. Whatever the routes' attempt counts say, retries then cannot multiply the load
//! on a failing service beyond 1 + `ratio`. Lock-free: one slot of counters per second.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The budget's parameters (the waypoint's `RETRY_BUDGET_*` settings; Linkerd's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSettings {
    pub ratio: f64,
    pub min_per_second: u32,
    pub ttl: Duration,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

#[derive(Debug)]
pub struct RetryBudget {
    settings: BudgetSettings,
    slots: Vec<Slot>,
}

impl RetryBudget {
    pub fn new(settings: BudgetSettings) -> Self {
        let n = settings.ttl.as_secs().clamp(1, 300) as usize;
        Self {
            settings,
            slots: (0..n).map(|_| Slot::default()).collect(),
        }
    }

    /// The slot of second `now_s`, emptied when it last served an older second. (Two threads
    /// starting a new second together may each empty it: a count lost at a second's edge is
    /// the price of no lock.)
    fn slot(&self, now_s: u64) -> &Slot {
        let slot = &self.slots[(now_s % self.slots.len() as u64) as usize];
        let seen = slot.second.load(Ordering::Relaxed);
        if seen != now_s
            && slot
                .second
                .compare_exchange(seen, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts an original request (not a retry).
    pub fn request(&self, now_s: u64) {
        self.slot(now_s).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether one more retry fits the budget now; if so it is counted.
    pub fn try_retry(&self, now_s: u64) -> bool {
        let current = self.slot(now_s);
        let window = self.slots.len() as u64;
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in &self.slots {
            let second = s.second.load(Ordering::Relaxed);
            if second <= now_s && now_s - second < window {
                requests += u64::from(s.requests.load(Ordering::Relaxed));
                retries += u64::from(s.retries.load(Ordering::Relaxed));
            }
        }
        let allowed = requests as f64 * self.settings.ratio
            + f64::from(self.settings.min_per_second) * window as f64;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        current.retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_the_ratio_of_requests_in_the_window() {
        let b = RetryBudget::new(BudgetSettings {
            ratio: 0.2,
            min_per_second: 0,
            ttl: Duration::from_secs(10),
        });
        let mut granted = 0;
        for i in 0..100 {
            b.request(1000 + i / 10);
            // Every request would like three retries.
            for _ in 0..3 {
                if b.try_retry(1000 + i / 10) {
                    granted += 1;
                }
            }
        }
        assert_eq!(granted, 20, "20% of 100 requests");
        // Ten seconds later the window has moved on: the old requests no longer count.
        b.request(2000);
        assert!(
            !b.try_retry(2000),
            "0.2 of one request is less than one retry"
        );
    }

    #[test]
    fn a_quiet_service_keeps_its_minimum() {
        let b = RetryBudget::new(BudgetSettings {
            ratio: 0.2,
            min_per_second: 1,
            ttl: Duration::from_secs(5),
        });
        let granted = (0..20).filter(|_| b.try_retry(50)).count();
        assert_eq!(granted, 5, "1 per second over 5 seconds");
    }
}
