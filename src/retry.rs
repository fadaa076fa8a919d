//! One answer, for every Lockstep process, to "should I call again?": which gRPC
//! statuses are transient (the call may not have been carried out, and the same call
//! may succeed later) and how long to wait between attempts. The coordinator's
//! deliveries, the agents' decision inquiries, the CLI's exit codes, the benchmarks and
//! the simulation all use it, so they never disagree about a status.

use std::time::Duration;

use tonic::Code;

/// Whether a status means "the call may not have reached its target or finished there;
/// try again": the transport failed, the deadline passed, the call was cancelled, or the
/// peer's stack answered without a status of its own (UNKNOWN is what tonic reports for
/// a connection reset mid-call). Any other status is the peer's own answer, and
/// repeating the call cannot change it: INVALID_ARGUMENT, FAILED_PRECONDITION,
/// RESOURCE_EXHAUSTED (Lockstep servers use it for oversized messages), and so on.
pub fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// A failed call, classified once where it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// May succeed if repeated (see [`is_transient`]).
    Transient(String),
    /// The peer's answer; repeating it changes nothing.
    Final(String),
}

impl Failure {
    /// Classifies a status, keeping its code and message in the text.
    pub fn of(status: &tonic::Status) -> Self {
        let text = format!("{:?}: {}", status.code(), status.message());
        if is_transient(status.code()) {
            Failure::Transient(text)
        } else {
            Failure::Final(text)
        }
    }

    /// Classifies the outcome of a call every answer to which is final (Prepare: any
    /// status the agent returns is its refusal). Transient only: a status made on this
    /// side because the call did not get through (tonic keeps the transport error as its
    /// source; a status the peer sent has none), and UNAVAILABLE, which is what gRPC
    /// stacks send when they drop a connection under a call (grpcio's "Too many pings",
    /// a server going away) and what the spec says to retry.
    pub fn of_answer(status: &tonic::Status) -> Self {
        let local = std::error::Error::source(status).is_some();
        if (local && is_transient(status.code())) || status.code() == Code::Unavailable {
            return Failure::of(status);
        }
        Failure::Final(format!("{:?}: {}", status.code(), status.message()))
    }

    /// The failure in words.
    pub fn message(&self) -> &str {
        match self {
            Failure::Transient(m) | Failure::Final(m) => m,
        }
    }
}

/// Capped exponential backoff (PRODUCT.md: Commit and Abort are retried with capped
/// exponential backoff until acknowledged). The jitter is derived from a salt (the
/// transaction) and the attempt, not from a random source, so simulations replay exactly
/// while retries of different transactions still spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

/// The shortest wait before a retry, whatever the configuration says: a retry with no
/// wait at all would call a participant that refuses connections in a busy loop.
pub const MIN_DELAY: Duration = Duration::from_millis(1);

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (0-based), with up to 25% jitter from `salt`,
    /// never under [`MIN_DELAY`].
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
        base.saturating_sub(jitter).max(MIN_DELAY)
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

    #[test]
    fn a_retry_always_waits_even_when_configured_with_no_delay() {
        // `--retry-initial-delay 0s`: a participant that refuses connections must not
        // be called again in a busy loop.
        let none = Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        };
        for attempt in [0, 1, 10, 30] {
            assert!(none.delay(attempt, "T") >= MIN_DELAY, "attempt {attempt}");
        }
    }

    #[test]
    fn only_transport_trouble_is_transient() {
        let refused = tonic::Status::failed_precondition("busy");
        assert_eq!(
            Failure::of(&refused),
            Failure::Final("FailedPrecondition: busy".into())
        );
        assert!(matches!(
            Failure::of(&tonic::Status::unavailable("tcp connect error")),
            Failure::Transient(_)
        ));
        assert!(!is_transient(Code::ResourceExhausted));
    }
}
