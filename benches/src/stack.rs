//! An in-process stack on loopback TCP with real RocksDB everywhere: a coordinator and
//! no-op participants (the SDK with a deployer that does nothing but remember what is
//! live), so the figures measure Lockstep's own cost: RPCs, fsyncs, CPU.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use lockstep::pb::{self, coordinator_client::CoordinatorClient};
use lockstep_coordinator::{Config, Coordinator, network::TcpNet, tables};
use lockstep_participant::{Change, DeployError, Deployer, Participant, Refusal, Staged, ledger};
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

/// Starts a no-op participant for `project` with its ledger in `dir`; returns its URL.
pub async fn participant(project: &str, dir: &Path) -> anyhow::Result<String> {
    let kv = RocksKv::open(dir, ledger::ALL)?;
    let p = Participant::new(
        project.to_string(),
        lockstep::DEFAULT_ENVIRONMENT.to_string(),
        Noop::default(),
        None,
        ledger::Ledger::open(Arc::new(kv), lockstep_store::WriterMode::Thread)?,
        None,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(lockstep_participant::server::serve(
        listener,
        None,
        p,
        lockstep_participant::access::OnlyCoordinator::insecure(),
        std::future::pending(),
    ));
    Ok(url)
}

/// A running coordinator.
pub struct Stack {
    /// Its client.
    pub client: CoordinatorClient<Channel>,
    /// The coordinator (for journal statistics).
    pub coordinator: Coordinator,
    /// Its store (for RocksDB statistics).
    pub kv: RocksKv,
}

/// Starts a coordinator with its RocksDB in `dir`.
pub async fn coordinator(dir: &Path) -> anyhow::Result<Stack> {
    let kv = RocksKv::open_full(dir, tables::ALL, lockstep_store::WalRecovery::Strict, true)?;
    let coordinator = Coordinator::open(
        Arc::new(kv.clone()),
        Arc::new(TcpNet::default()),
        Config::default(),
    )?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(lockstep_coordinator::server::serve(
        listener,
        None,
        coordinator.clone(),
        lockstep_coordinator::access::Access::insecure(),
        std::future::pending(),
    ));
    let client = CoordinatorClient::new(lockstep::edge::endpoint(&url)?.connect().await?);
    Ok(Stack {
        client,
        coordinator,
        kv,
    })
}

impl Stack {
    /// Registers independent projects at the given URLs.
    pub async fn register(&mut self, projects: &[(String, String)]) -> anyhow::Result<()> {
        for (name, url) in projects {
            self.client
                .register_project(pb::RegisterProjectRequest {
                    name: name.clone(),
                    environment: String::new(),
                    endpoint: url.clone(),
                    requires: Vec::new(),
                })
                .await?;
        }
        Ok(())
    }
}

/// Releases `projects` at `version` and waits until COMMITTED (as `--wait` does: create,
/// then follow the transaction's events to its end).
pub async fn release(
    client: &mut CoordinatorClient<Channel>,
    id: &str,
    projects: &[String],
    version: &str,
) -> anyhow::Result<()> {
    let created = client
        .create_release(pb::CreateReleaseRequest {
            id: id.to_string(),
            components: projects
                .iter()
                .map(|p| pb::Component {
                    project: p.clone(),
                    version: format!("{p}-{version}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .await?
        .into_inner();
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
            return Ok(());
        }
        if e.kind == pb::EventKind::TransactionAborted as i32 {
            anyhow::bail!("{id} aborted: {}", e.message);
        }
    }
    anyhow::bail!("{id}: the event stream ended early")
}

/// RocksDB's count of WAL syncs, from its statistics.
pub fn wal_syncs(kv: &RocksKv) -> u64 {
    kv.statistics()
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("rocksdb.wal.synced "))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
