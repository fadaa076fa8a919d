//! How many refused calls of one principal are written to the log. Every refused call
//! is answered PERMISSION_DENIED, but a caller in a loop of refused calls must not grow
//! the durable log without end: each principal's refusals are written at most
//! [`PER_MINUTE`] a minute, and the first one written after that minute carries how
//! many were not. Pure: the caller passes the time.

use std::collections::HashMap;

/// Refusals of one principal written per minute at most.
pub const PER_MINUTE: u32 = 10;

/// The length of one principal's window, in milliseconds.
const WINDOW_MS: u64 = 60_000;

/// Principals remembered before finished windows with nothing to report are forgotten.
const REMEMBERED: usize = 4096;

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it, saying that `suppressed` earlier ones were not written.
    Write {
        /// Refusals of this principal not written since the last one that was.
        suppressed: u64,
    },
    /// Do not write it (it is counted); `first` when it is the window's first so.
    Suppress {
        /// The first refusal of this window that is not written.
        first: bool,
    },
}

/// One principal's current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    written: u32,
    suppressed: u64,
}

/// The windows of the principals refused lately.
#[derive(Debug, Default)]
pub struct Refusals {
    windows: HashMap<String, Window>,
}

impl Refusals {
    /// Decides about a refusal of `principal` at `now_ms`.
    pub fn admit(&mut self, principal: &str, now_ms: u64) -> Verdict {
        self.forget(now_ms);
        let fresh = Window {
            start: now_ms,
            written: 0,
            suppressed: 0,
        };
        let window = self.windows.entry(principal.to_string()).or_insert(fresh);
        let carried = match now_ms.saturating_sub(window.start) >= WINDOW_MS {
            true => std::mem::replace(window, fresh).suppressed,
            false => 0,
        };
        if window.written < PER_MINUTE {
            window.written += 1;
            return Verdict::Write {
                suppressed: carried,
            };
        }
        window.suppressed += 1;
        Verdict::Suppress {
            first: window.suppressed == 1,
        }
    }

    /// Drops finished windows with nothing to report once many principals are known.
    fn forget(&mut self, now_ms: u64) {
        if self.windows.len() < REMEMBERED {
            return;
        }
        self.windows
            .retain(|_, w| w.suppressed > 0 || now_ms.saturating_sub(w.start) < WINDOW_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(r: &mut Refusals, who: &str, at: u64, n: usize) -> Vec<Verdict> {
        (0..n).map(|_| r.admit(who, at)).collect()
    }

    #[test]
    fn ten_a_minute_are_written_then_the_rest_counted() {
        let mut r = Refusals::default();
        let first = verdicts(&mut r, "user/bob", 1_000, 25);
        let written = Verdict::Write { suppressed: 0 };
        assert_eq!(first[..10], [written; 10]);
        assert_eq!(first[10], Verdict::Suppress { first: true });
        assert_eq!(first[11..], [Verdict::Suppress { first: false }; 14]);
        assert_eq!(
            r.admit("user/bob", 60_999),
            Verdict::Suppress { first: false },
            "still the same minute"
        );
        assert_eq!(
            r.admit("user/bob", 61_000),
            Verdict::Write { suppressed: 16 },
            "the next written one says how many were not"
        );
        let next = verdicts(&mut r, "user/bob", 61_500, 9);
        assert_eq!(next, [written; 9], "a new minute, the count reset");
    }

    #[test]
    fn each_principal_has_its_own_minute() {
        let mut r = Refusals::default();
        verdicts(&mut r, "user/bob", 0, 30);
        let alice = verdicts(&mut r, "user/alice", 10, 10);
        assert_eq!(alice, [Verdict::Write { suppressed: 0 }; 10]);
    }

    #[test]
    fn a_count_not_yet_reported_is_never_forgotten() {
        let mut r = Refusals::default();
        verdicts(&mut r, "user/bob", 0, 11);
        for n in 0..REMEMBERED {
            r.admit(&format!("token-{n}"), 0);
        }
        r.admit("someone", 3_600_000);
        assert_eq!(
            r.admit("user/bob", 3_600_000),
            Verdict::Write { suppressed: 1 }
        );
        assert!(r.windows.len() < REMEMBERED, "finished windows forgotten");
    }
}
