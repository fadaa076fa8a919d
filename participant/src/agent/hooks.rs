//! Hook commands: `sh -c CMD` with the transaction described in environment variables
//! (`LOCKSTEP_TX`, `LOCKSTEP_PROJECT`, `LOCKSTEP_VERSION`, `LOCKSTEP_FROM_VERSION`,
//! `LOCKSTEP_STAGE_DIR`, plus `LOCKSTEP_ENVIRONMENT` and `LOCKSTEP_PHASE`).
//!
//! A hook runs in its own process group; if the step it belongs to is cancelled (an
//! Abort arriving while a prepare hook still runs), the whole group is killed, so no
//! half-finished hook keeps running behind the agent's back. An agent killed outright
//! cannot kill anything: each hook records its group in the deploy root's
//! `hooks-running/` before its command starts (the file is removed when it ends), and
//! the next start kills every recorded group that still has a process of that hook
//! (marked by `LOCKSTEP_HOOK_ID` in its environment) before recovery runs any hook.

use std::{
    ffi::{CStr, CString},
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

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

/// The directory of the deploy root where running hooks are recorded.
pub const RUNNING: &str = "hooks-running";

/// The environment variable that marks every process of one hook run.
const HOOK_ID: &str = "LOCKSTEP_HOOK_ID";

/// How long a start waits for a leftover hook's processes to die.
const ORPHANS_DIE_WITHIN: Duration = Duration::from_secs(10);

/// One hook run's file in [`RUNNING`] (named by its token, holding its process group),
/// removed when the run ends however it ends.
struct Record {
    token: String,
    path: PathBuf,
}

impl Record {
    fn new(running: &Path) -> Self {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let token = format!("{}-{nanos}-{run}", std::process::id());
        let path = running.join(&token);
        Self { token, path }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Kills what is left of the hooks an earlier run of the agent started and never saw
/// end (it was killed while they ran), and forgets them: recovery then runs its own
/// hooks alone. Called once at start, before any hook runs.
pub fn stop_orphans(running: &Path) -> std::io::Result<()> {
    fs::create_dir_all(running)?;
    for entry in fs::read_dir(running)? {
        let path = entry?.path();
        let token = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let group = fs::read_to_string(&path).ok();
        if let (Some(token), Some(group)) = (token, group.and_then(|g| g.trim().parse().ok())) {
            stop_group(group, &format!("{HOOK_ID}={token}"));
        }
        fs::remove_file(&path)?;
    }
    Ok(())
}

/// SIGKILLs process group `group` while a live process of it carries `marker` in its
/// environment (never a group whose number was reused by something else).
fn stop_group(group: i32, marker: &str) {
    let deadline = Instant::now() + ORPHANS_DIE_WITHIN;
    while has_marked_member(group, marker) {
        if Instant::now() > deadline {
            tracing::error!("a hook left by an earlier run (group {group}) does not die");
            return;
        }
        tracing::warn!("killing a hook left running by an earlier run (group {group})");
        kill_group(group);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a live process of `group` has `marker` in its environment (a zombie's
/// environment reads empty).
fn has_marked_member(group: i32, marker: &str) -> bool {
    let Ok(processes) = fs::read_dir("/proc") else {
        return false;
    };
    let pids = processes
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok());
    pids.filter(|pid: &i32| group_of(*pid) == Some(group))
        .any(|pid| {
            let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            environ.split(|b| *b == 0).any(|v| v == marker.as_bytes())
        })
}

/// The process group of `pid` (field 5 of `/proc/PID/stat`, after the command name).
fn group_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields = stat.get(stat.rfind(')')? + 2..)?;
    fields.split(' ').nth(2)?.parse().ok()
}

/// Runs in the hook's own process after fork, before its command: writes its process
/// group (its pid) to `path`. Only async-signal-safe calls on memory made before the
/// fork.
#[allow(unsafe_code)]
fn record_own_group(path: &CStr) -> std::io::Result<()> {
    // SAFETY: getpid, open, write and close are async-signal-safe; `path` and `digits`
    // need no allocation.
    unsafe {
        let mut digits = [0u8; 12];
        let text = decimal(libc::getpid().unsigned_abs(), &mut digits);
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
        let fd = libc::open(path.as_ptr(), flags, 0o600);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, text.as_ptr().cast(), text.len());
        libc::close(fd);
        match usize::try_from(written) {
            Ok(n) if n == text.len() => Ok(()),
            _ => Err(std::io::Error::from_raw_os_error(libc::EIO)),
        }
    }
}

/// `n` in decimal, written into `digits` without allocating.
fn decimal(mut n: u32, digits: &mut [u8; 12]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[start..];
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

/// Runs `command` for `phase` of `change`, recorded in `running` while it runs; `Ok`
/// has the last line of its stdout for [`Phase::Serve`] (empty otherwise: only a serve
/// hook's stdout is read). `Err` carries a reason naming the hook, its exit status and
/// the tail of its stderr.
pub async fn run(
    command: &str,
    phase: Phase,
    change: &Change,
    stage_dir: &Path,
    running: &Path,
) -> Result<String, String> {
    let capture = matches!(phase, Phase::Serve);
    let record = Record::new(running);
    let mut shell = Command::new("sh");
    recorded(&mut shell, &record)
        .map_err(|e| format!("{} hook `{command}` could not start: {e}", phase.name()))?;
    let mut child = shell
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
    let _record = record;
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

/// Makes `shell` record its run in `record` before it runs anything, and mark its
/// processes with the record's token.
#[allow(unsafe_code)]
fn recorded(shell: &mut Command, record: &Record) -> std::io::Result<()> {
    let path = CString::new(record.path.as_os_str().as_bytes())?;
    shell.env(HOOK_ID, &record.token);
    // SAFETY: the closure only calls `record_own_group`, which is async-signal-safe.
    unsafe {
        shell.pre_exec(move || record_own_group(&path));
    }
    Ok(())
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
            moving_back: false,
            target_schema: None,
        }
    }

    fn running() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hooks-running-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn numbers_are_written_without_allocating() {
        let mut digits = [0u8; 12];
        assert_eq!(decimal(0, &mut digits), b"0");
        assert_eq!(decimal(4_194_304, &mut digits), b"4194304");
        assert_eq!(decimal(u32::MAX, &mut digits), b"4294967295");
    }

    #[tokio::test]
    async fn a_failing_hook_reports_its_status_and_stderr_tail() {
        let err = run(
            "echo \"cannot stage $LOCKSTEP_VERSION over $LOCKSTEP_FROM_VERSION\" >&2; exit 3",
            Phase::Prepare,
            &change(),
            Path::new("/tmp"),
            &running(),
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
            &running(),
        )
        .await
        .expect("hook succeeds");
    }
}
