//! The agent's share of a release (`--only agent`): the CPU of one agent's Prepare and
//! Commit against the bare 2PC's participant doing the least the protocol needs (a
//! synced record before the vote, a buffered one at commit), measured in one process,
//! so the per-participant gap between Lockstep and the bare 2PC can be split between
//! the agent and the coordinator.
//!
//! Two pairs: over loopback gRPC (Lockstep's agent server against the bare 2PC's
//! participant server, called by the same kind of generated client), and in process
//! (the SDK's `Participant` against the same two writes on the same group commit), so
//! the agent's own logic is seen apart from its RPC layer.

use std::{path::Path, time::Duration};

use lockstep::{
    names::{Environment, ProjectName, TxId, Version},
    orders::{CommitOrder, PrepareOrder, VoteAnswer},
    pb::{self, participant_client::ParticipantClient},
};
use lockstep_participant::Participant;
use lockstep_store::GroupCommit;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{Figure, bare, cpu, figure, stack};

/// Agents driven at once (each by one caller, one transaction at a time, as the
/// coordinator drives an agent).
const AGENTS: usize = 16;

/// The deadline every call carries, as the coordinator's do.
const DEADLINE: Duration = Duration::from_secs(30);

/// The part's figures: each of Lockstep's against the bare 2PC's participant measured
/// just before it, `count` transactions per agent.
pub async fn figures(dir: &Path, count: usize) -> anyhow::Result<Vec<Figure>> {
    let bare_rpc = per_pair(bare_rpc(dir, count).await?, count);
    let agent_rpc = per_pair(agent_rpc(dir, count).await?, count);
    let bare_local = per_pair(bare_local(dir, count).await?, count);
    let agent_local = per_pair(agent_local(dir, count).await?, count);
    let against = |name: &str, value: f64, floor: f64| Figure {
        floor: Some(floor),
        ..figure(name, value, "us")
    };
    Ok(vec![
        figure(
            "bare participant: CPU per Prepare + Commit, gRPC",
            bare_rpc,
            "us",
        ),
        against(
            "agent: CPU per Prepare + Commit, gRPC (floor: bare)",
            agent_rpc,
            bare_rpc,
        ),
        figure(
            "bare participant: CPU per Prepare + Commit, in process",
            bare_local,
            "us",
        ),
        against(
            "agent SDK: CPU per Prepare + Commit, in process (floor: bare)",
            agent_local,
            bare_local,
        ),
    ])
}

/// Microseconds of the process's CPU per Prepare + Commit, from the CPU `spent` on
/// `count` of them per agent.
fn per_pair(spent: Duration, count: usize) -> f64 {
    spent.as_secs_f64() * 1e6 / (AGENTS * count) as f64
}

/// The process's CPU while `work` runs.
async fn cpu_of(work: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<Duration> {
    let before = cpu();
    work.await?;
    Ok(cpu() - before)
}

/// Runs `each(agent)` for every agent at once and waits for all.
async fn all<F>(each: impl Fn(usize) -> F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let tasks: Vec<_> = (0..AGENTS).map(|a| tokio::spawn(each(a))).collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// The `i`th Prepare of `project`: version `v{i+1}` over `v{i}`.
fn prepare(project: &str, i: usize) -> anyhow::Result<PrepareOrder> {
    let version = |n: usize| Version::parse("version", &format!("v{n}"));
    Ok(PrepareOrder {
        tx: TxId::parse("tx", &format!("{project}-{i}"))?,
        environment: Environment::parse("environment", lockstep::DEFAULT_ENVIRONMENT)?,
        project: ProjectName::parse("project", project)?,
        version: version(i + 1)?,
        from_version: (i > 0).then(|| version(i)).transpose()?,
        artifact: String::new(),
        metadata: Default::default(),
        action: None,
        incarnation: String::new(),
        restore: false,
        target_schema: None,
    })
}

/// The Commit of `order`.
fn commit(order: &PrepareOrder) -> CommitOrder {
    CommitOrder {
        tx: order.tx.clone(),
        project: Some(order.project.clone()),
        incarnation: String::new(),
    }
}

/// `message` as a request with the coordinator's deadline.
fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(DEADLINE);
    request
}

/// The bare 2PC's participants over gRPC: a synced record, then a buffered one.
async fn bare_rpc(dir: &Path, count: usize) -> anyhow::Result<Duration> {
    let mut clients = Vec::with_capacity(AGENTS);
    for a in 0..AGENTS {
        clients.push(bare::participant(&dir.join(format!("bare-rpc-{a}"))).await?);
    }
    cpu_of(all(|a| bare_orders(clients[a].clone(), a, count))).await
}

async fn bare_orders(
    mut client: HealthClient<Channel>,
    agent: usize,
    count: usize,
) -> anyhow::Result<()> {
    for i in 0..count {
        for phase in ["prepare", "commit"] {
            let service = format!("{phase}/{agent}-{i}");
            client
                .check(request(HealthCheckRequest { service }))
                .await?;
        }
    }
    Ok(())
}

/// Lockstep's agents over gRPC, as the coordinator calls them.
async fn agent_rpc(dir: &Path, count: usize) -> anyhow::Result<Duration> {
    let mut clients = Vec::with_capacity(AGENTS);
    for a in 0..AGENTS {
        let name = format!("agent-{a}");
        let url = stack::participant(&name, &dir.join(&name), None).await?;
        let channel = lockstep::edge::endpoint(&url)?.connect().await?;
        clients.push(ParticipantClient::new(channel));
    }
    cpu_of(all(|a| agent_orders(clients[a].clone(), a, count))).await
}

async fn agent_orders(
    mut client: ParticipantClient<Channel>,
    agent: usize,
    count: usize,
) -> anyhow::Result<()> {
    for i in 0..count {
        let order = prepare(&format!("agent-{agent}"), i)?;
        let vote = client
            .prepare(request(pb::PrepareRequest::from(&order)))
            .await?;
        let prepared = vote.get_ref().vote() == pb::Vote::Prepared;
        anyhow::ensure!(prepared, "{:?}", vote.get_ref());
        let order = pb::CommitRequest::from(&commit(&order));
        client.commit(request(order)).await?;
    }
    Ok(())
}

/// The bare 2PC participant's two writes, in process.
async fn bare_local(dir: &Path, count: usize) -> anyhow::Result<Duration> {
    let mut logs = Vec::with_capacity(AGENTS);
    for a in 0..AGENTS {
        logs.push(bare::store(&dir.join(format!("bare-local-{a}"))).await?);
    }
    cpu_of(all(|a| bare_writes(logs[a].clone(), a, count))).await
}

async fn bare_writes(log: GroupCommit, agent: usize, count: usize) -> anyhow::Result<()> {
    for i in 0..count {
        bare::record(&log, format!("prepare/{agent}-{i}"), true).await?;
        bare::record(&log, format!("commit/{agent}-{i}"), false).await?;
    }
    Ok(())
}

/// The SDK's participant, in process, with no RPC.
async fn agent_local(dir: &Path, count: usize) -> anyhow::Result<Duration> {
    let mut agents = Vec::with_capacity(AGENTS);
    for a in 0..AGENTS {
        let name = format!("local-{a}");
        agents.push(stack::noop_participant(&name, &dir.join(&name), None).await?);
    }
    cpu_of(all(|a| local_orders(agents[a].clone(), a, count))).await
}

async fn local_orders(
    agent: Participant<stack::Noop>,
    index: usize,
    count: usize,
) -> anyhow::Result<()> {
    for i in 0..count {
        let order = prepare(&format!("local-{index}"), i)?;
        let vote = agent.prepare(order.clone()).await?;
        anyhow::ensure!(matches!(vote, VoteAnswer::Prepared(_)), "{vote:?}");
        agent.commit(&commit(&order)).await?;
    }
    Ok(())
}
