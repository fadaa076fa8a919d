//! Capped exponential backoff for phase 2 deliveries (PRODUCT.md: Commit and Abort are
//! retried with capped exponential backoff until acknowledged). The jitter is derived
//! from the transaction and attempt, not from a random source, so simulations replay
//! exactly while retries of different transactions still spread out.

use std::time::Duration;

/// Backoff settings.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (0-based), with up to 25% jitter from `salt`.
    pub fn delay(&self, attempt: u32, salt: &str) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let hash = salt
            .bytes()
            .chain(attempt.to_le_bytes())
            .fold(0xcbf29ce484222325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100000001b3)
            });
        let jitter = base.mul_f64((hash % 1000) as f64 / 4000.0);
        base.saturating_sub(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_at_the_cap() {
        let b = Backoff::default();
        assert!(b.delay(0, "T") <= Duration::from_millis(50));
        assert!(b.delay(3, "T") > b.delay(0, "T"));
        assert!(b.delay(30, "T") <= b.max);
        assert!(b.delay(30, "T") >= b.max.mul_f64(0.75));
    }
}
