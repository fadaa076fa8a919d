//! A bare two-phase commit on the machinery Lockstep runs on, as a floor for a whole
//! release (`--only bare`): tonic unary calls (the gRPC health service, answered by
//! handlers of our own) and RocksDB behind the same group commit, with none of
//! Lockstep's own work (no records, plans, events, checks or event stream).
//!
//! A release here is what a release costs at least: the client's call to the
//! coordinator, which writes the admission, sends Prepare to three participants (each
//! writes a synced record before it answers), writes the decision synced, sends Commit
//! (each participant writes a record), writes the end synced and answers: 7 RPCs and 5
//! synced writes, as Lockstep's (its CreateRelease with `wait` answers with the
//! outcome) with 5-6.
//! Each of 32 clients has three participants of its own, as in the throughput figure,
//! so participants do not share fsyncs between clients there either.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use lockstep_store::{Batch, GroupCommit, RocksKv, WriterMode};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_client::HealthClient,
    health_server::{Health, HealthServer},
};

use crate::{
    Figure, Floors, MainStack, RPCS, context_switches, cpu, figure, micros, percentile,
    serial_releases, throughput,
};

/// The one table of every bare store.
const TABLE: &str = "t";

/// Clients in the throughput comparison (as the throughput target's).
const CLIENTS: usize = 32;

/// Writes a 300-byte record under `key`, synced when `sync` (and waits for it).
pub async fn record(log: &GroupCommit, key: String, sync: bool) -> Result<(), Status> {
    let mut batch = Batch::default();
    batch.put(TABLE, key.into_bytes(), vec![7u8; 300]);
    let fail = |e: lockstep_store::StoreError| Status::internal(e.to_string());
    let ticket = log
        .write(batch, sync.then_some(Duration::ZERO))
        .map_err(fail)?;
    if sync {
        log.durable(ticket).await.map_err(fail)?;
    }
    Ok(())
}

/// What a bare server does with an order (the health call's `service` field).
trait Role: Send + Sync + 'static {
    fn answer(&self, order: String) -> impl Future<Output = Result<(), Status>> + Send;
}

/// Serves a [`Role`] as the gRPC health service: `check` runs the order, answers
/// SERVING once it is done.
struct Served<R>(R);

#[tonic::async_trait]
impl<R: Role> Health for Served<R> {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.0.answer(request.into_inner().service).await?;
        Ok(Response::new(HealthCheckResponse { status: 1 }))
    }

    type WatchStream = futures::stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

/// A participant: an order named `prepare/...` is recorded synced before the answer,
/// any other buffered.
struct Participant {
    log: GroupCommit,
}

impl Role for Participant {
    async fn answer(&self, order: String) -> Result<(), Status> {
        let sync = order.starts_with("prepare/");
        record(&self.log, order, sync).await
    }
}

/// The coordinator: an order `G/ID` runs release ID over client G's participants.
struct Coordinator {
    groups: Vec<Vec<HealthClient<Channel>>>,
    log: GroupCommit,
}

impl Role for Coordinator {
    async fn answer(&self, id: String) -> Result<(), Status> {
        let group = id.split('/').next().and_then(|g| g.parse::<usize>().ok());
        let participants = group.and_then(|g| self.groups.get(g));
        let participants = participants.ok_or_else(|| Status::invalid_argument("group"))?;
        record(&self.log, format!("created/{id}"), false).await?;
        all(participants, &format!("prepare/{id}")).await?;
        record(&self.log, format!("decision/{id}"), true).await?;
        all(participants, &format!("commit/{id}")).await?;
        record(&self.log, format!("end/{id}"), true).await
    }
}

/// Sends `order` to every participant at once and waits for all.
async fn all(participants: &[HealthClient<Channel>], order: &str) -> Result<(), Status> {
    let calls = participants.iter().map(|p| {
        let mut p = p.clone();
        let service = order.to_string();
        async move { p.check(HealthCheckRequest { service }).await }
    });
    futures::future::try_join_all(calls).await.map(|_| ())
}

/// A store with its group commit, opened off the runtime (hundreds of opens in a row
/// would starve the workers).
pub async fn store(dir: &Path) -> anyhow::Result<GroupCommit> {
    let path = dir.to_path_buf();
    let kv = tokio::task::spawn_blocking(move || RocksKv::open(&path, &[TABLE])).await??;
    Ok(GroupCommit::start(Arc::new(kv), WriterMode::Thread)?)
}

/// Serves `service` on loopback as Lockstep's servers do; returns a client of it.
async fn serve(role: impl Role) -> anyhow::Result<HealthClient<Channel>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(HealthServer::new(Served(role)))
            .serve_with_incoming(lockstep::edge::incoming(listener)),
    );
    let channel = lockstep::edge::endpoint(&url)?.connect().await?;
    Ok(HealthClient::new(channel))
}

/// One bare participant with its store in `dir`, served on loopback; returns its client
/// (the agent part compares Lockstep's agent with it).
pub async fn participant(dir: &Path) -> anyhow::Result<HealthClient<Channel>> {
    let log = store(dir).await?;
    serve(Participant { log }).await
}

/// The bare stack in `dir`: a coordinator and three participants per client; returns
/// the client of the coordinator.
async fn stack(dir: &Path) -> anyhow::Result<HealthClient<Channel>> {
    let mut groups = Vec::with_capacity(CLIENTS);
    for g in 0..CLIENTS {
        let mut participants = Vec::with_capacity(3);
        for m in 0..3 {
            participants.push(participant(&dir.join(format!("p{g}-{m}"))).await?);
        }
        groups.push(participants);
    }
    let log = store(&dir.join("coordinator")).await?;
    serve(Coordinator { groups, log }).await
}

/// Participants of the bare fan-out stack (the fan-out figure's widest release).
const WIDE: usize = 100;

/// A bare stack of [`WIDE`] participants in `dir`: group 0 is the first three of them,
/// group 1 all of them.
async fn wide_stack(dir: &Path) -> anyhow::Result<HealthClient<Channel>> {
    let mut all = Vec::with_capacity(WIDE);
    for m in 0..WIDE {
        all.push(participant(&dir.join(format!("w{m}"))).await?);
    }
    let groups = vec![all[..3].to_vec(), all];
    let log = store(&dir.join("coordinator")).await?;
    serve(Coordinator { groups, log }).await
}

/// The target of a bare 2PC figure: Lockstep's target for the same figure.
pub fn as_lockstep(target: &str) -> String {
    format!("as Lockstep's, {target}")
}

/// A wide release's bare figures, over 3 participants then over [`WIDE`]: p50
/// latency, and the process's CPU per release (µs).
pub struct Wide {
    /// p50 latency over 3, then over [`WIDE`].
    pub p50: [f64; 2],
    /// CPU per release over 3, then over [`WIDE`].
    pub cpu: [f64; 2],
}

/// The bare floor of a wide release, as the fan-out figure measures Lockstep's:
/// `count` serial releases over 3 participants, then over [`WIDE`].
pub async fn fanout(dir: &Path, count: usize) -> anyhow::Result<Wide> {
    let mut client = wide_stack(&dir.join("bare-wide")).await?;
    let mut wide = Wide {
        p50: [0.0; 2],
        cpu: [0.0; 2],
    };
    for group in 0..2 {
        let mut samples = Vec::with_capacity(count);
        let before = cpu();
        for i in 0..count {
            let started = Instant::now();
            release(&mut client, group, i as u64).await?;
            samples.push(started.elapsed());
        }
        wide.cpu[group] = micros(cpu() - before) / count as f64;
        wide.p50[group] = micros(percentile(&mut samples, 0.5));
    }
    Ok(wide)
}

/// One bare release of client `group`.
async fn release(client: &mut HealthClient<Channel>, group: usize, id: u64) -> anyhow::Result<()> {
    let service = format!("{group}/{id}");
    client.check(HealthCheckRequest { service }).await?;
    Ok(())
}

/// What a run of many releases cost: per second, and CPU (µs) and context switches per
/// release.
struct Run {
    rate: f64,
    cpu: f64,
    switches: f64,
}

/// [`Run`] of bare releases at [`CLIENTS`] clients over `run`.
async fn bare_throughput(client: &HealthClient<Channel>, run: Duration) -> anyhow::Result<Run> {
    let switches_before = context_switches();
    let cpu_before = cpu();
    let started = Instant::now();
    let deadline = started + run;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|g| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    release(&mut client, g, 1_000_000 + done).await?;
                    done += 1;
                }
                Ok::<u64, anyhow::Error>(done)
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await??;
    }
    let (elapsed, used) = (started.elapsed(), cpu() - cpu_before);
    let each = |total: f64| total / done.max(1) as f64;
    Ok(Run {
        rate: done as f64 / elapsed.as_secs_f64(),
        cpu: each(micros(used)),
        switches: each((context_switches() - switches_before) as f64),
    })
}

/// The bare floor's figures, and Lockstep's latency, throughput and CPU per release
/// measured in the same process against them. Each of the bare 2PC's own figures is
/// held to the target Lockstep's is held to, against the same `floors`: where the bare
/// 2PC misses one too, no work of Lockstep's is what stands in the way (README
/// "Performance").
pub async fn figures(
    dir: &Path,
    main: &mut MainStack,
    (count, seconds): (usize, u64),
    floors: &Floors,
) -> anyhow::Result<Vec<Figure>> {
    // Both stacks are up before anything is measured, and the two sides alternate
    // (latency bare first, throughput Lockstep first): each runs beside the other's
    // idle stack, so neither pays alone for sharing the machine (stop 42: stacks left up
    // slowed what ran after them).
    let mut client = stack(&dir.join("bare")).await?;
    let stack = main.get().await?;
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let started = Instant::now();
        release(&mut client, 0, i as u64).await?;
        samples.push(started.elapsed());
    }
    let bare_p50 = micros(percentile(&mut samples, 0.5));
    let three: Vec<String> = (0..3).map(|i| format!("p{i}")).collect();
    let mut samples = serial_releases(stack, "bare-cmp", &three, count).await?;
    let p50 = micros(percentile(&mut samples, 0.5));

    let run = Duration::from_secs(seconds);
    let switches_before = context_switches();
    let t = throughput(stack, CLIENTS, run).await?;
    let each = |total: f64| total / t.committed.max(1) as f64;
    let switches = each((context_switches() - switches_before) as f64);
    let cpu_each = each(micros(t.cpu));
    let bare = bare_throughput(&client, run).await?;
    let against = |name: &str, value: f64, floor: f64, unit| Figure {
        floor: Some(floor),
        ..figure(format!("{name} (floor: bare 2PC)"), value, unit)
    };
    let rpc_cpu = bare.cpu / RPCS as f64;
    Ok(vec![
        Figure {
            floor: Some(floors.release()),
            target: Some(as_lockstep("<= 1.5x floor (2 RTT + 3 fsync)")),
            met: Some(bare_p50 <= 1.5 * floors.release()),
            ..figure("bare 2PC: latency p50, 1 client", bare_p50, "us")
        },
        Figure {
            target: Some(as_lockstep(">= 2000/s")),
            met: Some(bare.rate >= 2000.0),
            ..figure("bare 2PC: throughput, 32 clients", bare.rate, "released/s")
        },
        figure("bare 2PC: CPU per release, 32 clients", bare.cpu, "us"),
        Figure {
            floor: Some(floors.rpc_cpu),
            target: Some(as_lockstep("<= 2x a bare tonic call")),
            met: Some(rpc_cpu <= 2.0 * floors.rpc_cpu),
            ..figure("bare 2PC: CPU per RPC, 32 clients", rpc_cpu, "us")
        },
        figure(
            "bare 2PC: context switches per release, 32 clients",
            bare.switches,
            "switches",
        ),
        against("release latency p50, 3 participants", p50, bare_p50, "us"),
        against("throughput, 32 clients", t.rate(), bare.rate, "committed/s"),
        against("CPU per release, 32 clients", cpu_each, bare.cpu, "us"),
        against(
            "context switches per release, 32 clients",
            switches,
            bare.switches,
            "switches",
        ),
    ])
}
