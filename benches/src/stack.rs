//! An in-process stack on loopback TCP with real RocksDB everywhere: a coordinator and
//! no-op participants (the SDK with a deployer that does nothing but remember what is
//! live), so the figures measure Lockstep's own cost: RPCs, fsyncs, CPU. With [`Certs`]
//! every connection is mutual TLS, as in production, so the two can be compared.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lockstep::{
    identity::Identity,
    pb::{self, coordinator_client::CoordinatorClient},
    tls::{self, ServerTls, TlsFiles},
};
use lockstep_coordinator::{
    Config, Coordinator,
    access::{Access, Secure, tokens},
    network::TcpNet,
    tables,
};
use lockstep_participant::{
    Change, DeployError, Deployer, Participant, Refusal, Staged, inquiry::GrpcDecisions, ledger,
    participant::Decisions,
};
use lockstep_store::RocksKv;
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// A deployer that stages nothing and goes live by remembering the version.
#[derive(Default)]
pub struct Noop {
    live: Mutex<Option<String>>,
}

impl Deployer for Noop {
    async fn stage(&self, _change: &Change) -> Result<Staged, Refusal> {
        Ok(Staged::default())
    }

    async fn go_live(&self, change: &Change, _staged: &Staged) -> Result<(), DeployError> {
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(change.version.clone());
        Ok(())
    }

    async fn undo(&self, _change: &Change, _staged: Option<&Staged>) -> Result<(), DeployError> {
        Ok(())
    }

    async fn live_version(&self) -> Result<Option<String>, DeployError> {
        Ok(self.live.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The development certificates `lockstep certs init` wrote, for a mutual-TLS stack.
pub struct Certs(PathBuf);

impl Certs {
    /// Writes a CA and certificates for the coordinator, `agents` and user admin into
    /// `dir`, with the CLI built beside this binary.
    pub async fn init(dir: &Path, agents: &[String]) -> anyhow::Result<Self> {
        Self::init_for(dir, agents, &["admin"]).await
    }

    /// [`Certs::init`] with certificates for `users` instead of admin alone.
    pub async fn init_for(dir: &Path, agents: &[String], users: &[&str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?.with_file_name("lockstep");
        let status = tokio::process::Command::new(&exe)
            .arg("certs")
            .arg("init")
            .arg(dir)
            .arg("--agents")
            .arg(agents.join(","))
            .arg("--users")
            .arg(users.join(","))
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", exe.display()))?;
        anyhow::ensure!(status.success(), "lockstep certs init failed");
        Ok(Self(dir.to_path_buf()))
    }

    /// The certificate and key called `name` (e.g. `coordinator`), with the CA.
    fn files(&self, name: &str) -> TlsFiles {
        TlsFiles {
            cert: self.0.join(format!("{name}.crt")),
            key: self.0.join(format!("{name}.key")),
            ca: self.0.join("ca.crt"),
        }
    }

    /// The coordinator binary's flags for mutual TLS with these certificates.
    pub fn server_args(&self) -> Vec<std::ffi::OsString> {
        let f = self.files("coordinator");
        let flags = ["--tls-cert", "--tls-key", "--tls-client-ca"];
        let paths = [f.cert, f.key, f.ca];
        let pairs = flags.into_iter().zip(paths);
        pairs
            .flat_map(|(flag, path)| [flag.into(), path.into()])
            .collect()
    }

    /// A client configuration presenting `name`'s certificate.
    pub fn client(&self, name: &str) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        let f = self.files(name);
        Ok(tls::client_config(&f.ca, Some((&f.cert, &f.key)))?)
    }
}

/// `http://ADDR`, or `https://ADDR` when the stack runs TLS.
fn url(listener: &TcpListener, certs: Option<&Certs>) -> anyhow::Result<String> {
    let scheme = if certs.is_some() { "https" } else { "http" };
    Ok(format!("{scheme}://{}", listener.local_addr()?))
}

/// Starts a no-op participant for `project` with its ledger in `dir` (over mutual TLS
/// with `certs`), asking no coordinator for decisions; returns its URL.
pub async fn participant(
    project: &str,
    dir: &Path,
    certs: Option<&Certs>,
) -> anyhow::Result<String> {
    participant_asking(project, dir, certs, None).await
}

/// [`participant`], asking the coordinator at the other end of `coordinator` for the
/// decision of a PREPARED vote that waits, as the agent binary does (after its default
/// 10 s): each vote then also arms that wait.
async fn participant_asking(
    project: &str,
    dir: &Path,
    certs: Option<&Certs>,
    coordinator: Option<Channel>,
) -> anyhow::Result<String> {
    let decisions = coordinator.map(|channel| Decisions {
        source: Arc::new(GrpcDecisions::new(channel)),
        ask_after: ASK_DECISION_AFTER,
    });
    let p = noop_participant(project, dir, decisions).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = url(&listener, certs)?;
    let (tls, access) = match certs {
        None => (
            None,
            lockstep_participant::access::OnlyCoordinator::insecure(),
        ),
        Some(certs) => {
            let tls = ServerTls::load(certs.files(&format!("agent-default-{project}")))?;
            let coordinator =
                Identity::parse("spiffe://lockstep/coordinator").map_err(anyhow::Error::msg)?;
            let access =
                lockstep_participant::access::OnlyCoordinator::new(tls.clone(), coordinator);
            (Some(tls), access)
        }
    };
    tokio::spawn(lockstep_participant::server::serve(
        listener,
        tls,
        p,
        access,
        std::future::pending(),
    ));
    Ok(url)
}

/// The SDK's participant for `project` with the [`Noop`] deployer and its ledger in
/// `dir`, asking `decisions` (if any) about votes that wait; not served.
pub async fn noop_participant(
    project: &str,
    dir: &Path,
    decisions: Option<Decisions>,
) -> anyhow::Result<Participant<Noop>> {
    // Opened off the runtime: a few hundred opens in a row on the 2 workers would keep
    // them from answering the client's keepalive pings, and the client would drop a
    // connection in use (seen in a third round as "connection closed").
    let path = dir.to_path_buf();
    let kv = tokio::task::spawn_blocking(move || RocksKv::open(&path, ledger::ALL)).await??;
    let ledger = ledger::Ledger::open(Arc::new(kv), lockstep_store::WriterMode::Thread)?;
    let environment = lockstep::DEFAULT_ENVIRONMENT.to_string();
    let name = project.to_string();
    Ok(Participant::new(
        name,
        environment,
        Noop::default(),
        None,
        ledger,
        decisions,
    ))
}

/// How long a bench participant's PREPARED vote waits before it asks for the decision
/// (the agent binary's `--ask-decision-after` default).
const ASK_DECISION_AFTER: Duration = Duration::from_secs(10);

/// A running coordinator.
pub struct Stack {
    /// Its client.
    pub client: CoordinatorClient<Channel>,
    /// The client's connection, which the stack's participants ask decisions on.
    channel: Channel,
    /// The coordinator (for journal statistics).
    pub coordinator: Coordinator,
    /// Its store (for RocksDB statistics; `None` on etcd).
    pub kv: Option<RocksKv>,
}

/// The server side of a coordinator's security: TLS and the admin user, as the binary
/// sets them up (`--admin admin`), or none.
fn security(
    certs: Option<&Certs>,
    coordinator: &Coordinator,
) -> anyhow::Result<(Option<ServerTls>, Access)> {
    let Some(certs) = certs else {
        return Ok((None, Access::insecure()));
    };
    let server = ServerTls::load(certs.files("coordinator"))?;
    let secret = coordinator.token_secret(tokens::new_secret)?;
    let secure = Secure {
        tls: server.clone(),
        key: tokens::TokenKey::new(&secret),
        admins: ["admin".to_string()].into(),
        grants: Default::default(),
        revoked: Default::default(),
        clock: Arc::new(lockstep::wire::now_millis),
    };
    Ok((Some(server), Access::secure(secure)))
}

/// Starts a coordinator with its RocksDB in `dir` (over mutual TLS with `certs`: it
/// calls agents with its certificate, and the client is user admin).
pub async fn coordinator(dir: &Path, certs: Option<&Certs>) -> anyhow::Result<Stack> {
    coordinator_with(dir, certs, Config::default()).await
}

/// [`coordinator`] with `config`.
pub async fn coordinator_with(
    dir: &Path,
    certs: Option<&Certs>,
    config: Config,
) -> anyhow::Result<Stack> {
    let kv = RocksKv::open_full(dir, tables::ALL, lockstep_store::WalRecovery::Strict, true)?;
    let mut stack = serving(Arc::new(kv.clone()), certs, config).await?;
    stack.kv = Some(kv);
    Ok(stack)
}

/// Starts a coordinator on etcd at `url` (plaintext), leading and fenced as the binary
/// runs it.
pub async fn etcd_coordinator(url: &str) -> anyhow::Result<Stack> {
    let target = lockstep_store::EtcdTarget::parse(url).map_err(anyhow::Error::msg)?;
    let opened = tokio::task::spawn_blocking(move || {
        lockstep_coordinator::storage::open_etcd(&target, "bench", Duration::from_secs(10), |_| {})
    });
    let (kv, lead) = opened.await??;
    let config = Config {
        term: u64::try_from(lead.term).unwrap_or_default(),
        ..Config::default()
    };
    // The lease is renewed while someone waits on its loss, as the binary does.
    tokio::spawn(async move { eprintln!("bench leader: {}", lead.lost().await) });
    serving(kv, None, config).await
}

/// Serves a coordinator on `kv` on a free loopback port, with its client.
async fn serving(
    kv: Arc<dyn lockstep_store::Kv>,
    certs: Option<&Certs>,
    config: Config,
) -> anyhow::Result<Stack> {
    let net = match certs {
        Some(certs) => TcpNet::with_tls(certs.client("coordinator")?),
        None => TcpNet::default(),
    };
    let coordinator = Coordinator::open(kv, Arc::new(net), config)?;
    let (tls, access) = security(certs, &coordinator)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = url(&listener, certs)?;
    tokio::spawn(lockstep_coordinator::server::serve(
        listener,
        tls,
        coordinator.clone(),
        access,
        std::future::pending(),
    ));
    let mut endpoint = lockstep::edge::endpoint(&url)?;
    if let Some(certs) = certs {
        endpoint = endpoint.tls_config(certs.client("user-admin")?)?;
    }
    let channel = endpoint.connect().await?;
    Ok(Stack {
        client: CoordinatorClient::new(channel.clone()),
        channel,
        coordinator,
        kv: None,
    })
}

impl Stack {
    /// Starts a no-op participant for `project` with its ledger in `dir` (over mutual
    /// TLS with `certs`) that asks this coordinator for decisions, as the agent binary
    /// does; returns its URL.
    pub async fn participant(
        &self,
        project: &str,
        dir: &Path,
        certs: Option<&Certs>,
    ) -> anyhow::Result<String> {
        let channel = Some(self.channel.clone());
        participant_asking(project, dir, certs, channel).await
    }

    /// Registers independent projects at the given URLs.
    pub async fn register(&mut self, projects: &[(String, String)]) -> anyhow::Result<()> {
        register(&mut self.client, projects).await
    }
}

/// Registers independent projects at the given URLs through `client`.
pub async fn register(
    client: &mut CoordinatorClient<Channel>,
    projects: &[(String, String)],
) -> anyhow::Result<()> {
    for (name, url) in projects {
        client
            .register_project(pb::RegisterProjectRequest {
                name: name.clone(),
                environment: String::new(),
                endpoint: url.clone(),
                requires: Vec::new(),
                // Bench agents answer the protocol only; registration is not timed.
                unchecked: true,
            })
            .await?;
    }
    Ok(())
}

/// One release of `projects` at `version`, the way a client that waits for the
/// outcome makes it: one CreateRelease with `wait`, answered once it has ended.
pub async fn release(
    client: &mut CoordinatorClient<Channel>,
    id: &str,
    projects: &[String],
    version: &str,
) -> anyhow::Result<()> {
    let request = release_request(id, projects, version, true);
    let answer = client.create_release(request).await?.into_inner();
    let Some(ended) = answer.ended else {
        anyhow::bail!("{id}: answered without its outcome")
    };
    if ended.kind != pb::EventKind::TransactionCommitted as i32 {
        anyhow::bail!("{id} aborted: {}", ended.message);
    }
    Ok(())
}

/// The same release in two calls, as before `wait` existed: CreateRelease, then
/// WatchEvents for its outcome alone. Returns how long CreateRelease took to answer
/// (the transaction durable) and how long after that COMMITTED arrived.
pub async fn release_timed(
    client: &mut CoordinatorClient<Channel>,
    id: &str,
    projects: &[String],
    version: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let request = release_request(id, projects, version, false);
    let created = client.create_release(request).await?.into_inner();
    let answered = Instant::now();
    let mut events = client
        .watch_events(pb::WatchEventsRequest {
            from_seq: created.first_event_seq,
            transaction_id: id.to_string(),
            until_terminal: true,
            only_terminal: true,
        })
        .await?
        .into_inner();
    while let Some(e) = events.message().await? {
        if e.kind == pb::EventKind::TransactionCommitted as i32 {
            return Ok((answered - started, answered.elapsed()));
        }
        if e.kind == pb::EventKind::TransactionAborted as i32 {
            anyhow::bail!("{id} aborted: {}", e.message);
        }
    }
    anyhow::bail!("{id}: the event stream ended early")
}

fn release_request(
    id: &str,
    projects: &[String],
    version: &str,
    wait: bool,
) -> pb::CreateReleaseRequest {
    let component = |p: &String| pb::Component {
        project: p.clone(),
        version: format!("{p}-{version}"),
        ..Default::default()
    };
    pb::CreateReleaseRequest {
        id: id.to_string(),
        components: projects.iter().map(component).collect(),
        wait,
        ..Default::default()
    }
}

/// RocksDB's count of WAL syncs, from its statistics (0 for a store that is not
/// RocksDB).
pub fn wal_syncs(kv: Option<&RocksKv>) -> u64 {
    ticker(kv, "rocksdb.wal.synced")
}

/// One of RocksDB's tickers (`rocksdb.number.keys.written`, ...), from its statistics
/// (0 for a store that is not RocksDB).
pub fn ticker(kv: Option<&RocksKv>, name: &str) -> u64 {
    let Some(kv) = kv else { return 0 };
    kv.statistics()
        .unwrap_or_default()
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
