//! Per-thread random numbers for ids and weighted picks, seeded once per thread from the OS (via
//! std's hasher keys): request ids and span ids need to be unique, not secret, and a
//! `getrandom(2)` per id was a measurable share of a request's CPU.

use std::cell::Cell;
use std::hash::BuildHasher;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let keyed = std::collections::hash_map::RandomState::new();
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    keyed.hash_one(t) | 1
}

/// xorshift64*: fast, full period, good enough to spread ids and weights.
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn threads_draw_different_sequences() {
        let here: Vec<u64> = (0..4).map(|_| super::next_u64()).collect();
        let there: Vec<u64> = std::thread::spawn(|| (0..4).map(|_| super::next_u64()).collect())
            .join()
            .unwrap();
        assert_ne!(here, there);
        assert!(here.windows(2).all(|w| w[0] != w[1]));
    }
}
