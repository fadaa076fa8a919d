//! End-to-end harness: the real binaries as child processes on real TCP ports, with
//! their RocksDB and deploy roots in a temp dir; SIGKILL and restart on the same ports
//! and data; failure injection through the agents' real prepare hook; and polling with a
//! deadline (never a sleep) for everything a test waits for.
//!
//! Every agent started here runs a prepare hook that looks at two files in the
//! cluster's `control/` directory: `<project>.fail` (refuse, with the file's content as
//! the reason) and `<project>.block` (wait while it exists). Tests create and remove
//! them to make a participant refuse or stall.

#![allow(dead_code, clippy::unwrap_used, missing_docs)]

pub mod browser;
pub mod http;
pub mod otlp;
pub mod pg;
pub mod secure;

/// The tools venv's python3 (scripts/setup installs grpcio, prometheus-client and
/// selenium into it), so a test works without the venv on PATH (`make verify`).
pub fn python() -> std::path::PathBuf {
    let tools =
        std::env::var("LOCKSTEP_TOOLS").unwrap_or_else(|_| "/var/tmp/lockstep-tools".into());
    std::path::Path::new(&tools).join("venv/bin/python3")
}

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use lockstep::pb::{
    self, coordinator_client::CoordinatorClient, participant_client::ParticipantClient,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;

/// How long anything in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Where the workspace's binaries are: `LOCKSTEP_BIN_DIR`, or the target directory this
/// test binary was built into (`target/debug/deps/..`).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("LOCKSTEP_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().to_path_buf()
        });
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (`make test` runs `cargo build --workspace --bins`)",
        path.display()
    );
    path
}

/// Polls `probe` every 20 ms until it returns `Some`, failing the test after
/// [`DEADLINE`] with `what` in the message.
pub async fn wait_for<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_within(what, DEADLINE, Duration::from_millis(20), probe).await
}

/// [`wait_for`] with its own deadline and polling interval (for probes that run a
/// process, or outcomes that take longer than [`DEADLINE`]).
pub async fn wait_within<T, F, Fut>(what: &str, limit: Duration, every: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// A free loopback port below the kernel's ephemeral range (see its doc).
pub use lockstep_store::etcd_member::free_port;

/// A running server process.
pub struct Server {
    pub name: String,
    child: Option<Child>,
    pub addr: SocketAddr,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Server {
    /// Starts `program` with `args` plus `--listen 127.0.0.1:PORT` (0: any), waits for
    /// its `listening on ADDR` line.
    pub async fn start(
        name: &str,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
        port: u16,
    ) -> Self {
        let mut s = Server::stopped(name, program, args, env, log, port);
        s.spawn().await;
        s
    }

    /// The server, not started yet.
    fn stopped(
        name: &str,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
        port: u16,
    ) -> Self {
        Server {
            name: name.to_string(),
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            program,
            args,
            env,
            log,
        }
    }

    /// `--insecure` for a Lockstep server started without TLS flags (plaintext must be
    /// asked for explicitly).
    fn insecure_unless_tls(&self) -> Option<&'static str> {
        let ours = ["lockstep-coordinator", "lockstep-agent"]
            .iter()
            .any(|name| self.program.ends_with(name));
        let tls = self
            .args
            .iter()
            .any(|a| a == "--tls-cert" || a == "--insecure");
        (ours && !tls).then_some("--insecure")
    }

    /// Starts `program` as [`Server::start`] does without waiting for its `listening on`
    /// line: a standby coordinator on etcd prints it only once it leads. `port` must be
    /// fixed (non-zero), since nothing says which one was taken.
    pub fn start_standby(
        name: &str,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
        port: u16,
    ) -> Self {
        assert_ne!(port, 0, "a standby needs a known port");
        let mut s = Server::stopped(name, program, args, env, log, port);
        s.restart_standby_now();
        s
    }

    /// Whether this coordinator leads now (its health says SERVING).
    pub async fn leads(&self) -> bool {
        let endpoint = tonic::transport::Endpoint::from_shared(self.url()).unwrap();
        let Ok(channel) = endpoint.connect().await else {
            return false;
        };
        lockstep::standby::leads(channel, Duration::from_millis(500)).await
    }

    /// Kills and starts again on the same port without waiting until it listens (a
    /// coordinator on etcd comes back as a standby).
    pub async fn restart_standby(&mut self) {
        self.kill9().await;
        self.restart_standby_now();
    }

    fn restart_standby_now(&mut self) {
        let (child, mut lines) = self.launch();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    /// Whether the process runs (it was started and not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Spawns the process with its stdout piped (returned as lines).
    fn launch(
        &self,
    ) -> (
        Child,
        tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    ) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .args(self.insecure_unless_tls())
            .arg("--listen")
            .arg(self.addr.to_string())
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.program.display()));
        let stdout = child.stdout.take().unwrap();
        (child, BufReader::new(stdout).lines())
    }

    async fn spawn(&mut self) {
        if self.addr.port() == 0 {
            self.addr.set_port(free_port());
        }
        let (child, mut lines) = self.launch();
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not start in time; log:\n{}",
                    self.name,
                    tail(&self.log)
                )
            })
            .unwrap();
        let Some(line) = line else {
            panic!("{} exited at start; log:\n{}", self.name, tail(&self.log));
        };
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        self.addr = addr.parse().unwrap();
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of a server started with TLS.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// SIGSTOP: the process is paused (a stuck host, a long GC pause) until
    /// [`Server::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Server::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Sends SIGHUP (re-read the certificates).
    pub fn hangup(&self) {
        self.signal(libc::SIGHUP);
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().and_then(|c| c.id()).expect("running");
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }

    /// Sends SIGTERM (a clean stop is asked).
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits until the process exits by itself (e.g. at a crash point); returns how.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        self.exited_within(DEADLINE).await
    }

    /// [`Server::exited`] with a deadline of its own.
    pub async fn exited_within(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        tokio::time::timeout(deadline, child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {deadline:?}", self.name))
            .unwrap()
    }

    /// Starts again on the same port with the same data, optionally with other env vars.
    pub async fn restart_with(&mut self, env: Vec<(String, String)>) {
        self.kill9().await;
        self.env = env;
        self.spawn().await;
    }

    /// Starts again with extra arguments.
    pub async fn restart_with_args(&mut self, extra: Vec<String>) {
        self.kill9().await;
        self.args.extend(extra);
        self.spawn().await;
    }

    /// Starts again with the argument after `flag` set to `value` (an operator
    /// restarting it with another setting).
    pub async fn restart_with_flag(&mut self, flag: &str, value: &str) {
        self.kill9().await;
        let at = self.args.iter().position(|a| a == flag).expect("the flag");
        self.args[at + 1] = value.to_string();
        self.spawn().await;
    }

    /// Starts again with the same data on another (free) port: the agent "moved".
    pub async fn restart_elsewhere(&mut self) {
        self.kill9().await;
        self.addr.set_port(0);
        self.spawn().await;
    }

    pub async fn restart(&mut self) {
        let env = self.env.clone();
        self.restart_with(env).await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The last lines of a log file, without the frames of backtraces: a server that
/// exits with an error prints a backtrace after the message, and the 40 lines shown
/// held only frames (t39 in CI at stop 52: "coordinator exited at start", reason out
/// of view).
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !is_frame(l)).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `  12: function` or `        at file:line`.
fn is_frame(line: &str) -> bool {
    let line = line.trim_start();
    let numbered = line
        .split_once(": ")
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    numbered || line.starts_with("at ")
}

/// The output of a CLI run.
#[derive(Debug)]
pub struct Cli {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Cli {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// An agent and where it keeps things.
pub struct Agent {
    pub project: String,
    pub server: Server,
    pub deploy_root: PathBuf,
}

impl Agent {
    /// What `current` points to (the ground truth of what is live).
    pub fn live(&self) -> Option<String> {
        std::fs::read_link(self.deploy_root.join("current"))
            .ok()
            .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
    }

    /// Version directories under `releases/` (staging leftovers included, dot-files too).
    pub fn releases(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.deploy_root.join("releases"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub async fn client(&self) -> ParticipantClient<Channel> {
        ParticipantClient::connect(self.server.url()).await.unwrap()
    }

    pub async fn status(&self) -> pb::ParticipantStatus {
        self.client()
            .await
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}

/// A coordinator and agents in one temp dir.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub coordinator: Server,
    pub agents: BTreeMap<String, Agent>,
    /// Further coordinator instances (standbys on etcd): agents and the CLI are given
    /// every instance.
    pub others: Vec<String>,
}

impl Cluster {
    /// A coordinator alone.
    pub async fn new() -> Self {
        Self::with_coordinator_env(Vec::new()).await
    }

    /// A coordinator started with extra environment variables (e.g. a crash point).
    pub async fn with_coordinator_env(env: Vec<(String, String)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("coordinator");
        let args = vec!["--data-dir".into(), data.display().to_string()];
        Self::with_coordinator(dir, args, env).await
    }

    /// A coordinator started with `args` (where its store is) in `dir`.
    pub async fn with_coordinator(
        dir: tempfile::TempDir,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Self {
        std::fs::create_dir_all(dir.path().join("control")).unwrap();
        let coordinator = Server::start(
            "coordinator",
            bin("lockstep-coordinator"),
            args,
            env,
            dir.path().join("coordinator.log"),
            0,
        )
        .await;
        Cluster {
            dir,
            coordinator,
            agents: BTreeMap::new(),
            others: Vec::new(),
        }
    }

    /// The seed's family: A requires B and C; all registered.
    pub async fn family() -> Self {
        let mut c = Self::new().await;
        c.add_family().await;
        c
    }

    pub async fn add_family(&mut self) {
        for p in ["B", "C"] {
            self.add_agent(p).await;
            self.register(p, &[]).await;
        }
        self.add_agent("A").await;
        self.register("A", &["B", "C"]).await;
    }

    pub fn control(&self, name: &str) -> PathBuf {
        self.dir.path().join("control").join(name)
    }

    /// Makes `project` refuse every Prepare with `reason` until [`Cluster::heal`].
    pub fn fail(&self, project: &str, reason: &str) {
        std::fs::write(self.control(&format!("{project}.fail")), reason).unwrap();
    }

    /// Makes `project`'s Prepare wait until [`Cluster::heal`].
    pub fn block(&self, project: &str) {
        std::fs::write(self.control(&format!("{project}.block")), "").unwrap();
    }

    pub fn heal(&self, project: &str) {
        for suffix in ["fail", "block"] {
            let _ = std::fs::remove_file(self.control(&format!("{project}.{suffix}")));
        }
    }

    /// Starts an agent for `project` (not registered).
    pub async fn add_agent(&mut self, project: &str) {
        self.add_agent_with(project, &[]).await;
    }

    /// Starts an agent for `project` with extra flags (e.g. `--database`).
    pub async fn add_agent_with(&mut self, project: &str, extra: &[String]) {
        self.start_agent(project, project, extra).await;
    }

    /// An agent for `project` in environment `env`, known as `env/project` (for
    /// [`Cluster::agent`]) beside the default environment's agent of the same project.
    pub async fn add_env_agent(&mut self, env: &str, project: &str) {
        self.add_env_agent_with(env, project, &[]).await;
    }

    /// [`Cluster::add_env_agent`] with extra flags (e.g. `--serve-hook`).
    pub async fn add_env_agent_with(&mut self, env: &str, project: &str, extra: &[String]) {
        let key = format!("{env}/{project}");
        let mut flags = vec!["--environment".to_string(), env.to_string()];
        flags.extend_from_slice(extra);
        self.start_agent(&key, project, &flags).await;
    }

    async fn start_agent(&mut self, key: &str, project: &str, extra: &[String]) {
        let name = key.replace('/', "-");
        let root = self.dir.path().join(format!("deploy-{name}"));
        let control = self.dir.path().join("control");
        let hook = format!(
            "f={dir}/$LOCKSTEP_PROJECT; if [ -e \"$f.fail\" ]; then cat \"$f.fail\" >&2; exit 1; fi; while [ -e \"$f.block\" ]; do sleep 0.02; done",
            dir = control.display()
        );
        let server = Server::start(
            &format!("agent-{name}"),
            bin("lockstep-agent"),
            vec![
                "--project".into(),
                project.into(),
                "--data-dir".into(),
                self.dir
                    .path()
                    .join(format!("agent-{name}"))
                    .display()
                    .to_string(),
                "--deploy-root".into(),
                root.display().to_string(),
                "--coordinator".into(),
                self.coordinators(),
                "--prepare-hook".into(),
                hook,
            ]
            .into_iter()
            .chain(extra.iter().cloned())
            .collect(),
            Vec::new(),
            self.dir.path().join(format!("agent-{name}.log")),
            0,
        )
        .await;
        self.agents.insert(
            key.to_string(),
            Agent {
                project: project.into(),
                server,
                deploy_root: root,
            },
        );
    }

    pub fn agent(&self, project: &str) -> &Agent {
        &self.agents[project]
    }

    pub fn agent_mut(&mut self, project: &str) -> &mut Agent {
        self.agents.get_mut(project).unwrap()
    }

    pub async fn register(&self, project: &str, requires: &[&str]) {
        let mut args = vec!["project", "add", project, "--endpoint"];
        let url = self.agent(project).server.url();
        args.push(&url);
        let joined = requires.join(",");
        if !requires.is_empty() {
            args.push("--requires");
            args.push(&joined);
        }
        let out = self.cli(&args).await;
        assert_eq!(out.code, 0, "{out:?}");
    }

    /// Starts another coordinator with `args` (on the same etcd prefix) on a free port,
    /// logging to `standby.log`, without waiting for it to lead; agents started after
    /// this and the CLI are given it too.
    pub fn add_standby(&mut self, args: Vec<String>) -> Server {
        let log = self.dir.path().join("standby.log");
        let program = bin("lockstep-coordinator");
        let standby = Server::start_standby("standby", program, args, Vec::new(), log, free_port());
        self.others.push(standby.url());
        standby
    }

    /// Every coordinator instance, comma-separated (as `--coordinator` takes them).
    pub fn coordinators(&self) -> String {
        let mut all = vec![self.coordinator.url()];
        all.extend(self.others.iter().cloned());
        all.join(",")
    }

    /// Runs `lockstep` against this cluster's coordinator.
    pub async fn cli(&self, args: &[&str]) -> Cli {
        self.cli_with(args, &[]).await
    }

    /// Runs `lockstep` against this cluster's coordinator with `env` set too.
    pub async fn cli_with(&self, args: &[&str], env: &[(&str, &str)]) -> Cli {
        self.cli_for(args, env, DEADLINE * 2).await
    }

    /// Runs `lockstep` against this cluster's coordinator, for at most `limit`.
    pub async fn cli_within(&self, args: &[&str], limit: Duration) -> Cli {
        self.cli_for(args, &[], limit).await
    }

    async fn cli_for(&self, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Cli {
        let out = tokio::time::timeout(
            limit,
            Command::new(bin("lockstep"))
                .args(args)
                .env("LOCKSTEP_COORDINATOR", self.coordinators())
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("lockstep {args:?} did not finish"))
        .unwrap();
        Cli {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `lockstep release create ID P=V... --wait`, asserting the exit code.
    pub async fn release(&self, id: &str, components: &[&str], expect_code: i32) -> Cli {
        let mut args = vec!["release", "create", id];
        args.extend_from_slice(components);
        args.push("--wait");
        let out = self.cli(&args).await;
        assert_eq!(out.code, expect_code, "release {id}: {out:?}");
        out
    }

    pub async fn client(&self) -> CoordinatorClient<Channel> {
        CoordinatorClient::connect(self.coordinator.url())
            .await
            .unwrap()
    }

    pub async fn transaction(&self, id: &str) -> pb::Transaction {
        self.client()
            .await
            .get_release(pb::GetReleaseRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
    }

    /// Waits until transaction `id` is in `state`. On a timeout it prints the transaction as last seen (its state, votes,
    /// acknowledgements and delivery errors), so a rare failure says where it stopped.
    pub async fn wait_state(&self, id: &str, state: pb::TransactionState) -> pb::Transaction {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last = None;
        loop {
            let request = pb::GetReleaseRequest { id: id.into() };
            let seen = self.client().await.get_release(request).await;
            if let Ok(t) = seen.map(|r| r.into_inner()) {
                if t.state == state as i32 {
                    return t;
                }
                last = Some(t);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {DEADLINE:?} waiting for {id} to be {state:?}; last seen: {last:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every event in the log.
    pub async fn events(&self) -> Vec<pb::Event> {
        let latest = self.last_seq().await;
        let mut stream = self
            .client()
            .await
            .watch_events(pb::WatchEventsRequest {
                from_seq: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while out.len() < latest as usize {
            let e = tokio::time::timeout(DEADLINE, stream.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            out.push(e);
        }
        out
    }

    /// The newest event sequence number.
    pub async fn last_seq(&self) -> u64 {
        self.live_state().await.last_event_seq
    }

    pub async fn live_state(&self) -> pb::LiveState {
        self.client()
            .await
            .get_live_state(pb::GetLiveStateRequest::default())
            .await
            .unwrap()
            .into_inner()
    }

    /// What each agent has live (ground truth from the deploy roots).
    pub fn live(&self) -> BTreeMap<String, Option<String>> {
        self.agents
            .iter()
            .map(|(p, a)| (p.clone(), a.live()))
            .collect()
    }

    /// `{"A": Some("T1A"), ...}` from literal pairs.
    pub fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(p, v)| (p.to_string(), (!v.is_empty()).then(|| v.to_string())))
            .collect()
    }

    /// Builds the seed's history: T1A T1B T1C, then T2B, then T3C.
    pub async fn seed_history(&self) {
        self.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
        self.release("T2", &["B=T2B"], 0).await;
        self.release("T3", &["C=T3C"], 0).await;
        assert_eq!(
            self.live(),
            Self::expect(&[("A", "T1A"), ("B", "T2B"), ("C", "T3C")])
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- coordinator log ---\n{}", tail(&self.coordinator.log));
            for a in self.agents.values() {
                eprintln!("--- {} log ---\n{}", a.server.name, tail(&a.server.log));
            }
        }
    }
}

/// grpcurl from `LOCKSTEP_GRPCURL`, the setup script's tools dir, or PATH. The setup
/// script (`scripts/setup`, run by `scripts/test`) installs it; missing is a failure.
pub fn grpcurl() -> PathBuf {
    if let Some(p) = std::env::var_os("LOCKSTEP_GRPCURL") {
        return p.into();
    }
    let tools =
        std::env::var("LOCKSTEP_TOOLS").unwrap_or_else(|_| "/var/tmp/lockstep-tools".into());
    let installed = PathBuf::from(tools).join("venv/bin/grpcurl");
    if installed.is_file() {
        return installed;
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("grpcurl"))
        .find(|p| p.is_file())
        .expect("grpcurl is not installed: run scripts/setup (scripts/test does)")
}
