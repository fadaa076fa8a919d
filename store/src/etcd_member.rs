//! Private etcd members (Debian's `etcd-server`) on free loopback ports, each with a
//! data directory of its own, for tests and the demo: one member, or a cluster of
//! several; each started, killed with SIGKILL and started again on the same data, as a
//! crash would.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long a member may take to answer after it starts.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Starts on fresh ports after a port was taken between choosing it and etcd binding
/// it (a free port is one the kernel may hand to an outgoing connection meanwhile).
const START_ATTEMPTS: usize = 5;

/// One running etcd member.
pub struct EtcdMember {
    child: Option<Child>,
    dir: PathBuf,
    client: u16,
    peer: u16,
    /// Plain-HTTP `/health` (its metrics listener), whatever the client URLs speak.
    metrics: u16,
    name: String,
    cluster: String,
    /// Serve clients over mutual TLS: (CA, certificate, key) files.
    tls: Option<[PathBuf; 3]>,
    /// Keep etcd's own limits of one transaction (128 operations, 1.5 MiB), which
    /// Lockstep refuses to start on, instead of those the README asks for.
    etcd_defaults: bool,
}

impl EtcdMember {
    /// Starts a one-member cluster with its data in `dir` (created), and waits until
    /// it answers.
    pub fn start(dir: &Path) -> Result<Self, String> {
        let mut attempt = 1;
        loop {
            let mut m = Self::planned(dir, "m0")?;
            m.cluster = format!("m0=http://127.0.0.1:{}", m.peer);
            match m.spawn() {
                Err(_) if attempt < START_ATTEMPTS && port_taken(&m.dir, 0) => {
                    m.kill9();
                    let _ = std::fs::remove_dir_all(dir);
                    attempt += 1;
                }
                started => return started.map(|()| m),
            }
        }
    }

    /// [`EtcdMember::start`] serving clients over mutual TLS: its certificate and key,
    /// and the CA client certificates must chain to.
    pub fn start_tls(dir: &Path, ca: &Path, cert: &Path, key: &Path) -> Result<Self, String> {
        let mut m = Self::planned(dir, "m0")?;
        m.cluster = format!("m0=http://127.0.0.1:{}", m.peer);
        m.tls = Some([ca.to_path_buf(), cert.to_path_buf(), key.to_path_buf()]);
        m.spawn()?;
        Ok(m)
    }

    /// [`EtcdMember::start`] with etcd's default transaction limits, as a member
    /// started without the flags the README asks for runs.
    pub fn start_with_etcd_defaults(dir: &Path) -> Result<Self, String> {
        let mut m = Self::planned(dir, "m0")?;
        m.cluster = format!("m0=http://127.0.0.1:{}", m.peer);
        m.etcd_defaults = true;
        m.spawn()?;
        Ok(m)
    }

    fn planned(dir: &Path, name: &str) -> Result<Self, String> {
        Ok(Self {
            child: None,
            dir: dir.to_path_buf(),
            client: free_port(),
            peer: free_port(),
            metrics: free_port(),
            name: name.to_string(),
            cluster: String::new(),
            tls: None,
            etcd_defaults: false,
        })
    }

    /// `127.0.0.1:PORT` of its client listener.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    /// `etcd://127.0.0.1:PORT/PREFIX`.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.endpoint())
    }

    /// SIGKILL, as a crash of its host would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`stop`) or SIGCONT: a member that keeps its connections open and answers
    /// nothing, as a partitioned or frozen host does (unlike a kill, which refuses).
    pub fn freeze(&self, stop: bool) {
        if let Some(child) = &self.child {
            let signal = if stop { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    /// Starts it again on the same data and ports.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill9();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), String> {
        self.launch()?;
        self.wait_up()
    }

    fn launch(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::File::create(self.dir.join("etcd.log")).map_err(|e| e.to_string())?;
        let mut command = Command::new("etcd");
        if let Some([ca, cert, key]) = &self.tls {
            command
                .arg(format!("--trusted-ca-file={}", ca.display()))
                .arg(format!("--cert-file={}", cert.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg("--client-cert-auth");
        }
        if !self.etcd_defaults {
            // What the README asks for, well above what the coordinator checks at start.
            command
                .arg("--max-txn-ops=100000")
                .arg("--max-request-bytes=33554432");
        }
        let child = command
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.cluster))
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                self.metrics
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting etcd (scripts/setup installs etcd-server): {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        let health = format!("http://127.0.0.1:{}/health", self.metrics);
        while Instant::now() < deadline {
            if answers(&health) {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "etcd exited ({status}); see {}/etcd.log",
                    self.dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("etcd did not answer within {START_DEADLINE:?}"))
    }
}

/// Several members forming one etcd cluster.
pub struct EtcdCluster {
    /// The members, in start order.
    pub members: Vec<EtcdMember>,
}

impl EtcdCluster {
    /// Starts `n` members, each in a directory under `dir`, and waits until each answers
    /// (which needs a quorum). A member that could not bind its ports starts the whole
    /// cluster again on fresh ones.
    pub fn start(dir: &Path, n: usize) -> Result<Self, String> {
        let mut attempt = 1;
        loop {
            match Self::start_once(dir, n) {
                Err(e) if attempt < START_ATTEMPTS && port_taken(dir, n) => {
                    eprintln!("etcd: a port was taken ({e}); starting again on fresh ports");
                    let _ = std::fs::remove_dir_all(dir);
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    fn start_once(dir: &Path, n: usize) -> Result<Self, String> {
        let mut members = Vec::new();
        for i in 0..n {
            members.push(EtcdMember::planned(
                &dir.join(format!("m{i}")),
                &format!("m{i}"),
            )?);
        }
        let cluster: Vec<String> = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        for m in &mut members {
            m.cluster = cluster.join(",");
            m.launch()?;
        }
        for m in &mut members {
            m.wait_up()?;
        }
        Ok(Self { members })
    }

    /// `etcd://A,B,C/PREFIX` naming every member.
    pub fn url(&self, prefix: &str) -> String {
        let all: Vec<String> = self.members.iter().map(EtcdMember::endpoint).collect();
        format!("etcd://{}/{prefix}", all.join(","))
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether `url` (http, loopback) answers `"health":"true"`.
fn answers(url: &str) -> bool {
    use std::io::{Read, Write};
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut conn) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let request = format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    let mut body = String::new();
    conn.write_all(request.as_bytes()).is_ok()
        && conn.read_to_string(&mut body).is_ok()
        && body.contains("\"health\":\"true\"")
}

/// Whether etcd's log in `dir` (with `n` members, in `dir/m<i>`) says a port it was
/// given was taken.
fn port_taken(dir: &Path, n: usize) -> bool {
    let logs: Vec<PathBuf> = match n {
        0 => vec![dir.join("etcd.log")],
        n => (0..n).map(|i| dir.join(format!("m{i}/etcd.log"))).collect(),
    };
    logs.iter()
        .any(|log| std::fs::read_to_string(log).is_ok_and(|t| t.contains("address already in use")))
}

/// A free loopback port below the kernel's ephemeral range (bound and released), for
/// servers tests start and restart on the same port. A port the kernel hands out (a
/// bind to port 0, the local end of an outgoing connection) can be handed out again
/// the moment its server is killed, and the server restarted on it then finds it
/// taken (seen in CI: etcd members at stop 51, a coordinator at stop 52); below that
/// range only an explicit bind takes a port, and this process's picks never repeat (a
/// counter, from an offset of its own pid).
pub fn free_port() -> u16 {
    static PICKED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range");
    let ephemeral: u32 = range
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000, ephemeral.clamp(11_000, 65_535));
    let span = high - low;
    let offset = std::process::id().wrapping_mul(7_919) % span;
    loop {
        let n = PICKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(n < span, "no free port left below {high}");
        let port = u16::try_from(low + (offset + n) % span).unwrap_or(0);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
