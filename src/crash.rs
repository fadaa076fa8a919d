//! Crash points for the end-to-end crash tests. When the environment variable
//! `LOCKSTEP_CRASH_AT` names a point the process reaches, the process kills itself with
//! SIGKILL right there, so a test can stop a server exactly between two protocol steps
//! and check what recovery makes of it. Unset, a crash point costs one load of a
//! lazily read variable.

use std::sync::OnceLock;

/// The variable naming the crash point.
pub const CRASH_AT_ENV: &str = "LOCKSTEP_CRASH_AT";

fn configured() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| std::env::var(CRASH_AT_ENV).ok())
        .as_deref()
}

/// The prefix of a `LOCKSTEP_CRASH_AT` value that asks for a panic at the point
/// instead (`panic:after-first-commit-ack`): a defect in the code, where SIGKILL stands
/// for a lost machine.
pub const PANIC_PREFIX: &str = "panic:";

/// Kills the process with SIGKILL if `LOCKSTEP_CRASH_AT` names `point`, or panics there
/// if it names it after [`PANIC_PREFIX`].
pub fn point(point: &str) {
    let Some(asked) = configured() else {
        return;
    };
    if asked == point {
        eprintln!("crash point {point} reached; killing myself with SIGKILL");
        kill_self();
    }
    if asked.strip_prefix(PANIC_PREFIX) == Some(point) {
        panic!("crash point {point} reached; panicking as {CRASH_AT_ENV} asks");
    }
}

#[allow(unsafe_code)]
fn kill_self() {
    // SAFETY: kill(2) on our own pid with SIGKILL has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}
