//! Hook commands: `sh -c CMD` with the transaction described in environment variables
//! (`LOCKSTEP_TX`, `LOCKSTEP_PROJECT`, `LOCKSTEP_VERSION`, `LOCKSTEP_FROM_VERSION`,
//! `LOCKSTEP_STAGE_DIR`, plus `LOCKSTEP_ENVIRONMENT` and `LOCKSTEP_PHASE`).
//!
//! A hook runs in its own process group; if the step it belongs to is cancelled (an
//! Abort arriving while a prepare hook still runs), the whole group is killed, so no
//! half-finished hook keeps running behind the agent's back.

use std::{path::Path, process::Stdio};

use tokio::process::Command;

use crate::deployer::Change;

/// Most bytes of a failing hook's stderr quoted in the reason.
const STDERR_TAIL: usize = 2048;

/// The optional hook commands of an agent.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Runs after the version is staged; non-zero exit is a REFUSED vote.
    pub prepare: Option<String>,
    /// Runs after the symlink switch; non-zero exit makes the Commit fail and be retried.
    pub commit: Option<String>,
    /// Runs after staged files are removed; non-zero exit makes the Abort be retried.
    pub abort: Option<String>,
    /// Starts the staged version at Prepare and prints its test URI (the last line of
    /// its stdout); run again to stop it at Commit and Abort (blue/green).
    pub serve: Option<String>,
}

/// Which step a hook belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    /// Prepare.
    Prepare,
    /// Commit.
    Commit,
    /// Abort.
    Abort,
    /// Start the staged version (its stdout is the test URI).
    Serve,
    /// Stop the staged version.
    Stop,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Commit => "commit",
            Phase::Abort => "abort",
            Phase::Serve => "serve",
            Phase::Stop => "stop",
        }
    }
}

/// Kills the hook's process group if the hook is dropped before it finished.
struct GroupGuard {
    pgid: Option<i32>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            kill_group(pgid);
        }
    }
}

#[allow(unsafe_code)]
fn kill_group(pgid: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Runs `command` for `phase` of `change`; `Ok` has the last line of its stdout for
/// [`Phase::Serve`] (empty otherwise: only a serve hook's stdout is read). `Err`
/// carries a reason naming the hook, its exit status and the tail of its stderr.
pub async fn run(
    command: &str,
    phase: Phase,
    change: &Change,
    stage_dir: &Path,
) -> Result<String, String> {
    let capture = matches!(phase, Phase::Serve);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("LOCKSTEP_TX", &change.transaction_id)
        .env("LOCKSTEP_PROJECT", &change.project)
        .env("LOCKSTEP_ENVIRONMENT", &change.environment)
        .env("LOCKSTEP_VERSION", &change.version)
        .env("LOCKSTEP_FROM_VERSION", &change.from_version)
        .env("LOCKSTEP_STAGE_DIR", stage_dir)
        .env("LOCKSTEP_PHASE", phase.name())
        .stdin(Stdio::null())
        .stdout(if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{} hook `{command}` could not start: {e}", phase.name()))?;
    let mut guard = GroupGuard {
        pgid: child.id().map(|id| id as i32),
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let span = tracing::info_span!("hook", otel.name = %format!("{} hook", phase.name()));
    let ran = async { tokio::join!(child.wait(), read_all(stdout), read_all(stderr)) };
    let (status, out, err) = tracing::Instrument::instrument(ran, span).await;
    guard.pgid = None;
    let status = status.map_err(|e| format!("{} hook `{command}`: {e}", phase.name()))?;
    if status.success() {
        let out = String::from_utf8_lossy(&out);
        let last = out.lines().rev().find(|l| !l.trim().is_empty());
        return Ok(last.unwrap_or_default().trim().to_string());
    }
    let text = String::from_utf8_lossy(&err);
    let tail = tail(text.trim_end(), STDERR_TAIL);
    tracing::warn!("{} hook `{command}` failed: {tail}", phase.name());
    crate::metrics::hook_failed(phase.name());
    Err(format!(
        "{} hook exited with {}{}",
        phase.name(),
        status
            .code()
            .map(|c| format!("status {c}"))
            .unwrap_or_else(|| "a signal".into()),
        if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        }
    ))
}

async fn read_all(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut buf).await;
    }
    buf
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> Change {
        Change {
            transaction_id: "T4".into(),
            environment: "default".into(),
            project: "C".into(),
            version: "T4C".into(),
            from_version: "T3C".into(),
            artifact: String::new(),
            metadata: Default::default(),
            restore: false,
            target_schema: None,
        }
    }

    #[tokio::test]
    async fn a_failing_hook_reports_its_status_and_stderr_tail() {
        let err = run(
            "echo \"cannot stage $LOCKSTEP_VERSION over $LOCKSTEP_FROM_VERSION\" >&2; exit 3",
            Phase::Prepare,
            &change(),
            Path::new("/tmp"),
        )
        .await
        .expect_err("hook fails");
        assert!(err.contains("status 3"), "{err}");
        assert!(err.ends_with("cannot stage T4C over T3C"), "{err}");
    }

    #[tokio::test]
    async fn a_succeeding_hook_sees_the_stage_dir() {
        run(
            "test \"$LOCKSTEP_STAGE_DIR\" = /tmp && test \"$LOCKSTEP_TX\" = T4",
            Phase::Commit,
            &change(),
            Path::new("/tmp"),
        )
        .await
        .expect("hook succeeds");
    }
}
