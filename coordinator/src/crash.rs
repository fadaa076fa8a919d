//! Crash points for the end-to-end crash tests. When the environment variable
//! `LOCKSTEP_CRASH_AT` names a point the process reaches, it kills itself with SIGKILL
//! right there, so a test can stop the coordinator exactly between two protocol steps
//! (e.g. after the COMMIT decision is durable and before any Commit is sent) and check
//! what recovery makes of it. Unset, a crash point costs one atomic load.

use std::sync::OnceLock;

/// The variable naming the crash point.
pub const CRASH_AT_ENV: &str = "LOCKSTEP_CRASH_AT";

/// After every vote has arrived and before the decision is written.
pub const BEFORE_DECISION: &str = "before-decision";
/// After the COMMIT decision is durable and before any Commit is sent.
pub const AFTER_COMMIT_DECISION: &str = "after-commit-decision";
/// After the first participant's Commit acknowledgement was recorded.
pub const AFTER_FIRST_COMMIT_ACK: &str = "after-first-commit-ack";

/// Every crash point the coordinator honours.
pub const ALL: &[&str] = &[
    BEFORE_DECISION,
    AFTER_COMMIT_DECISION,
    AFTER_FIRST_COMMIT_ACK,
];

fn configured() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| std::env::var(CRASH_AT_ENV).ok())
        .as_deref()
}

/// Kills the process with SIGKILL if `LOCKSTEP_CRASH_AT` names `point`.
pub fn point(point: &str) {
    if configured() == Some(point) {
        eprintln!("lockstep-coordinator: crash point {point} reached; killing myself with SIGKILL");
        kill_self();
    }
}

#[allow(unsafe_code)]
fn kill_self() {
    // SAFETY: kill(2) on our own pid with SIGKILL has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}
