//! Failover time on etcd: two `lockstep-coordinator` processes (the binaries beside
//! this one) on one prefix, the leader killed with SIGKILL, and the time until the
//! standby has led, recovered and committed its first release (a decision of the new
//! leader), beside the lease TTL that bounds it from below.

use std::{process::Stdio, time::Duration};

use anyhow::Context;
use lockstep::pb::coordinator_client::CoordinatorClient;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    time::Instant,
};

use crate::stack;

/// The lease TTL the coordinators run with.
pub const TTL: Duration = Duration::from_secs(2);

/// One coordinator process and its address.
struct Instance {
    child: Child,
    url: String,
}

/// Starts a coordinator on `store` listening on `port`; returns once it leads (its
/// `listening on` line), or at once when `wait` is false (a standby says it only
/// once it leads).
async fn start(store: &str, port: u16, wait: bool) -> anyhow::Result<Instance> {
    let exe = std::env::current_exe()?.with_file_name("lockstep-coordinator");
    let ttl = format!("{}s", TTL.as_secs());
    let mut child = Command::new(&exe)
        .args(["--insecure", "--store", store, "--etcd-lease-ttl", &ttl])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let url = format!("http://127.0.0.1:{port}");
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    if wait {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with("listening on") {
                return Ok(Instance { child, url });
            }
        }
        anyhow::bail!("{} exited before it listened", exe.display());
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Instance { child, url })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Releases `projects` through the coordinator at `url` until one commits; returns
/// when it did.
async fn first_commit(url: &str, projects: &[String], round: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + TTL * 10;
    for attempt in 0.. {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no commit on {url} within {:?}",
            TTL * 10
        );
        let endpoint = lockstep::edge::endpoint(url)?;
        let Ok(channel) = endpoint.connect().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut client = CoordinatorClient::new(channel);
        let id = format!("F{round}x{attempt}");
        if stack::release(&mut client, &id, projects, &id)
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    unreachable!("the loop returns or fails")
}

/// The time from the leader's SIGKILL to the new leader's first commit, one per
/// round (each round kills the instance that leads and starts a new standby).
pub async fn times(
    store: &str,
    participants: &[(String, String)],
    rounds: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut leader = start(store, free_port()?, true).await?;
    let mut client =
        CoordinatorClient::new(lockstep::edge::endpoint(&leader.url)?.connect().await?);
    stack::register(&mut client, participants).await?;
    let projects: Vec<String> = participants.iter().map(|(p, _)| p.clone()).collect();
    first_commit(&leader.url, &projects, 0).await?;
    let mut out = Vec::new();
    for round in 1..=rounds {
        let standby = start(store, free_port()?, false).await?;
        // The standby reads from etcd once it has connected: then it is waiting.
        wait_reading(&standby.url).await?;
        let killed = Instant::now();
        leader.child.start_kill()?;
        first_commit(&standby.url, &projects, round).await?;
        out.push(killed.elapsed());
        let _ = leader.child.wait().await;
        leader = standby;
    }
    Ok(out)
}

/// Waits until the coordinator at `url` answers a read (a standby does once it has
/// connected to etcd).
async fn wait_reading(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + TTL * 10;
    while Instant::now() < deadline {
        if let Ok(channel) = lockstep::edge::endpoint(url)?.connect().await {
            let request = lockstep::pb::ListProjectsRequest::default();
            if CoordinatorClient::new(channel)
                .list_projects(request)
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("the standby at {url} never answered a read")
}
