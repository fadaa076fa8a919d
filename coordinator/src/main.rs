//! `lockstep-coordinator`: the coordinator server, on its embedded RocksDB or on etcd.

/// mimalloc instead of the system allocator: the RPC path allocates and frees many small
/// buffers, and glibc's malloc was over a tenth of the CPU in the benchmarks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use lockstep::{edge, names::Environment, shutdown, standby::Standby, tls};
use lockstep_coordinator::{
    Config, Coordinator,
    access::{self, Access, Secure, tokens},
    journal::CommitDelay,
    network::{ParticipantNet, TcpNet},
    notify, server,
    stall::Thresholds,
    standby::{StandbyService, View},
    storage::{self, StoreFlag},
    tables,
};
use lockstep_store::{EtcdKv, Kv, WalRecovery, etcd_lead::Lead};

/// Runs the Lockstep coordinator: two-phase commit of composite releases, with a RocksDB
/// write-ahead log in --data-dir. Prints `listening on ADDR` once it accepts calls.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:7700", env = "LOCKSTEP_LISTEN")]
    listen: SocketAddr,
    /// How to log to stderr: `text`, or `json` (one object per line, with the spans
    /// each line happened in). `RUST_LOG` filters either.
    #[arg(long, value_enum, default_value = "text", env = "LOCKSTEP_LOG_FORMAT")]
    log_format: lockstep::logging::LogFormat,
    /// Export traces (OpenTelemetry, OTLP over gRPC) to this collector, e.g.
    /// `http://127.0.0.1:4317`; default: `OTEL_EXPORTER_OTLP_ENDPOINT`, else none.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Serve Prometheus metrics (OpenMetrics text) at `http://ADDR/metrics` on a plain
    /// HTTP listener beside gRPC (port 0 picks a free port; the address is logged), once
    /// this instance leads. Off unless given; docs/metrics.md lists every metric.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve the HTTP/JSON API (`/api/v1/`, docs/http-api.md) and the web console
    /// (`/`) on this address, over TLS with the server's certificate unless
    /// `--insecure`, once this instance leads. Callers authenticate as over gRPC (a
    /// bearer token or a client certificate) and the same permission table applies.
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Directory of the RocksDB database (created if missing); required with
    /// `--store rocksdb`.
    #[arg(long, env = "LOCKSTEP_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where the tables live: `rocksdb` (in --data-dir, one machine) or
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (default prefix `lockstep`): several
    /// coordinators on one prefix, one leading at a time, every write fenced on its
    /// term. A standby waits, naming the leader, until it leads.
    #[arg(long, default_value = "rocksdb", value_parser = storage::parse_store, env = "LOCKSTEP_STORE")]
    store: StoreFlag,
    /// CA (PEM) of the etcd members, for TLS to them.
    #[arg(long, requires_all = ["etcd_cert", "etcd_key"])]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) towards etcd.
    #[arg(long)]
    etcd_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long)]
    etcd_key: Option<PathBuf>,
    /// TTL of the lease the leadership key lives on: a leader that cannot renew it
    /// within this time stops, and a standby takes over after it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    etcd_lease_ttl: std::time::Duration,
    /// The address other instances and clients are told is the leader's (default:
    /// --listen, as http:// or https://).
    #[arg(long)]
    advertise: Option<String>,
    /// What to do when the write-ahead log's last record is damaged: `strict` refuses
    /// to start (it could be an acknowledged decision); `tolerate-torn-tail` drops it
    /// (right after a power loss, when the damaged write was never acknowledged).
    #[arg(long, default_value = "strict")]
    wal_recovery: WalRecovery,
    /// Default phase 1 deadline for requests that give none.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    prepare_timeout: std::time::Duration,
    /// How long one Commit or Abort call may take before it is counted as failed and
    /// sent again (the agent keeps working on it: a repeated call joins the running
    /// one). Set it above the slowest commit hook.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    delivery_timeout: std::time::Duration,
    /// First delay before a failed call to a participant is made again (it doubles on
    /// each failure, with jitter, up to --retry-max-delay; a retry waits at least 1 ms
    /// whatever is given). `lockstep retry TX` ends a wait at once.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    retry_initial_delay: std::time::Duration,
    /// Longest delay between two calls to a participant that keeps failing.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    retry_max_delay: std::time::Duration,
    /// Under load, how long each of a transaction's synced steps (admission, decision,
    /// end) may wait so that more transactions share one fsync (PostgreSQL's
    /// commit_delay; at most 1s). 0, the default, never waits. Worth it where fsyncs
    /// are the scarce resource (an IOPS-capped disk), not CPU: README "Performance".
    #[arg(long, default_value = "0s", value_parser = parse_commit_delay)]
    commit_delay: std::time::Duration,
    /// --commit-delay applies only while more than this many transactions are in
    /// flight, so a lone release never waits (PostgreSQL's commit_siblings).
    #[arg(long, default_value_t = 16)]
    commit_siblings: usize,
    /// The coordinator's certificate (PEM, URI SAN `spiffe://lockstep/coordinator`):
    /// its server certificate, and its client certificate towards agents.
    #[arg(long, env = "LOCKSTEP_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "LOCKSTEP_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The deployment's CA (PEM): callers' and agents' certificates must chain to it.
    #[arg(long, env = "LOCKSTEP_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// A user (certificate `spiffe://lockstep/user/NAME`) who is admin (repeatable).
    #[arg(long, default_value = "admin")]
    admin: Vec<String>,
    /// A role for a user's certificate: `NAME=ROLE[@ENV,..][/PROJECT,..]` (repeatable;
    /// users without one are viewers).
    #[arg(long, value_parser = access::parse_grant)]
    grant: Vec<(String, access::roles::Grant)>,
    /// Plaintext, and every caller may do everything: for local experiments only (a
    /// warning is logged).
    #[arg(long)]
    insecure: bool,
    /// Connect and read timeout of one webhook delivery (a receiver slower than this
    /// gets the event again, with the same id).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    notify_timeout: std::time::Duration,
    /// Longest wait between two deliveries of an event a receiver keeps refusing (the
    /// first retry waits 200ms, each next one twice as long).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    notify_max_backoff: std::time::Duration,
    /// Where webhooks may go besides loopback and public addresses: a range
    /// (`10.20.0.0/16`), an address or a host name (allowed whatever it resolves to);
    /// repeatable. Private, link-local and cloud-metadata addresses are refused
    /// otherwise, checked after DNS resolution when a subscription is added and at
    /// every delivery.
    #[arg(long, value_name = "CIDR|HOST", value_parser = notify::target::parse_allow)]
    notify_allow: Vec<notify::target::Allowed>,
    /// When a transaction still queued or in phase 2 gets a STALLED event: `DURATION`
    /// for every environment, `ENV=DURATION` for one (repeatable).
    #[arg(long, value_parser = parse_stall, default_value = "10m")]
    stalled_after: Vec<(Option<Environment>, std::time::Duration)>,
    /// How often to ask every agent what it runs and compare it with the live
    /// checkpoint (e.g. `5m`): a difference no transaction explains gets one
    /// DRIFT_DETECTED event (a webhook kind, `drift.detected`) per change and shows in
    /// `lockstep live`. Off unless given.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    drift_check: Option<std::time::Duration>,
}

/// `10m` or `production=5m`.
fn parse_stall(value: &str) -> Result<(Option<Environment>, std::time::Duration), String> {
    let (env, duration) = match value.split_once('=') {
        Some((env, d)) => (
            Some(Environment::parse("--stalled-after", env).map_err(|e| e.to_string())?),
            d,
        ),
        None => (None, value),
    };
    let duration = humantime::parse_duration(duration).map_err(|e| format!("{duration:?}: {e}"))?;
    Ok((env, duration))
}

/// The thresholds the `--stalled-after` values give (the last plain one is the default).
fn thresholds(values: &[(Option<Environment>, std::time::Duration)]) -> Thresholds {
    let mut t = Thresholds {
        default: std::time::Duration::from_secs(600),
        ..Thresholds::default()
    };
    for (env, d) in values {
        match env {
            Some(env) => drop(t.environments.insert(env.clone(), *d)),
            None => t.default = *d,
        }
    }
    t
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shutdown::exit_on_panic();
    // Before anything else, so a SIGTERM at any moment stops the server cleanly.
    let mut stop = shutdown::install().context("installing the SIGTERM and SIGINT handlers")?;
    // (Logging starts once the flags are read: --log-format says how.)
    let args = Arc::new(Args::parse());
    let telemetry = lockstep::logging::init(
        "lockstep-coordinator",
        args.log_format,
        args.otlp_endpoint.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    // Bound first, so a standby advertises the port it will serve on once it leads.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let files = tls::files_from_flags(
        args.tls_cert.clone(),
        args.tls_key.clone(),
        args.tls_client_ca.clone(),
        args.insecure,
    )
    .map_err(anyhow::Error::msg)?;
    let (tls, net) = tls_and_net(files.as_ref())?;
    let (store, lead, etcd) =
        open_store(&args, &listener, tls.as_ref(), net.clone(), &mut stop).await?;
    let term = lead
        .as_ref()
        .map_or(0, |l| u64::try_from(l.term).unwrap_or_default());
    let resigning = etcd.clone();
    let config = Config {
        term,
        etcd,
        ..config(&args)
    };
    let coordinator =
        Coordinator::open(store.clone(), net, config).context("recovering coordinator state")?;
    let secure = files.is_some();
    let access = access(tls.as_ref(), &args, &coordinator)?;
    tracing::info!("coordinator incarnation {}", coordinator.incarnation());
    let http = serve_beside(&args, tls.as_ref(), &coordinator, &access).await?;
    warn_of_mismatched_endpoints(&coordinator, secure);
    println!("listening on {}", listener.local_addr()?);
    if let Some(bound) = http {
        let scheme = if secure { "https" } else { "http" };
        println!("console at {scheme}://{bound}/");
    }
    let failed = coordinator.clone();
    let draining = coordinator.clone();
    let serve = |told: tokio::sync::oneshot::Receiver<()>| {
        server::serve(listener, tls, coordinator, access, async move {
            let _ = told.await;
        })
    };
    let failed = async {
        let failing = async move { Err(failed.failed().await) };
        let Err(why) = while_leading::<Infallible>(lead.as_ref(), failing).await;
        why
    };
    let served = shutdown::serve_until_stopped(stop, serve, failed);
    // The lead is kept through the drain and the resignation (`exit_after` never
    // returns): dropped, its lease would no longer be renewed, and a slow drain would
    // end fenced instead of handing over.
    let outcome = match served.await {
        Ok(()) => while_leading(lead.as_ref(), drained(&draining, store.as_ref())).await,
        failed => failed,
    };
    exit_after(outcome, &telemetry, resigning.as_deref(), term)
}

/// `work`, ended early with why if this instance, leading on etcd, loses its lease.
async fn while_leading<T>(
    lead: Option<&Lead>,
    work: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let Some(lead) = lead else {
        return work.await;
    };
    tokio::select! {
        done = work => done,
        why = lead.clone().lost() => Err(format!("no longer leading ({why}); a standby takes over")),
    }
}

/// How long a planned stop waits for the appends made before it to be durable.
const DRAIN_FOR: Duration = Duration::from_secs(10);

/// Waits (for at most [`DRAIN_FOR`]) until every append made before the stop is
/// durable, then syncs the store: on etcd, where a sync does nothing, the journal's
/// queue is what a planned handover must not drop.
async fn drained(coordinator: &Coordinator, store: &dyn Kv) -> Result<(), String> {
    let settled = tokio::time::timeout(DRAIN_FOR, coordinator.settled()).await;
    let settled = settled.map_err(|_| format!("appends not durable within {DRAIN_FOR:?}"))?;
    settled.map_err(|e| e.to_string())?;
    store.sync().map_err(|e| e.to_string())
}

/// Exits: 1 (saying why) when serving failed; otherwise 0, once a leader on etcd has
/// given its leadership up, so that a standby leads at once, not when the lease runs
/// out (a planned restart or handover).
fn exit_after(
    outcome: Result<(), String>,
    telemetry: &lockstep::logging::Telemetry,
    etcd: Option<&EtcdKv>,
    term: u64,
) -> ! {
    if let Err(error) = outcome {
        eprintln!("stopping: {error}; restart to recover from the durable log");
        telemetry.flush();
        shutdown::exit(1);
    }
    if let Some(etcd) = etcd.filter(|_| term > 0) {
        let term = i64::try_from(term).unwrap_or(i64::MAX);
        match etcd.resign(term) {
            Ok(()) => tracing::info!("gave up leadership: a standby leads at once"),
            Err(e) => tracing::warn!(
                "leadership not given up ({e}); a standby leads once the lease runs out"
            ),
        }
    }
    telemetry.flush();
    shutdown::exit(0)
}

/// The server's TLS (re-read on SIGHUP) and the network to agents (with the same
/// certificate), or plaintext for both.
fn tls_and_net(
    files: Option<&tls::TlsFiles>,
) -> anyhow::Result<(Option<tls::ServerTls>, Arc<dyn ParticipantNet>)> {
    let Some(f) = files else {
        return Ok((None, Arc::new(TcpNet::default())));
    };
    let server = tls::ServerTls::load(f.clone())?;
    tls::reload_on_sighup(server.clone()).context("installing the SIGHUP handler")?;
    let net = TcpNet::with_tls(tls::client_config(&f.ca, Some((&f.cert, &f.key)))?);
    Ok((Some(server), Arc::new(net)))
}

/// Serves the metrics (`--metrics-listen`) and the HTTP API and console
/// (`--http-listen`) beside gRPC; returns the HTTP API's bound address.
async fn serve_beside(
    args: &Args,
    tls: Option<&tls::ServerTls>,
    coordinator: &Coordinator,
    access: &Access,
) -> anyhow::Result<Option<SocketAddr>> {
    if let Some(addr) = args.metrics_listen {
        serve_metrics(addr, coordinator).await?;
    }
    let Some(addr) = args.http_listen else {
        return Ok(None);
    };
    let started =
        lockstep_coordinator::http::start(addr, tls.cloned(), coordinator.clone(), access.clone());
    let bound = started
        .await
        .with_context(|| format!("binding --http-listen {addr}"))?;
    Ok(Some(bound))
}

/// Serves the coordinator's metrics on `addr` (`--metrics-listen`).
async fn serve_metrics(addr: SocketAddr, coordinator: &Coordinator) -> anyhow::Result<()> {
    let mut registry = prometheus_client::registry::Registry::default();
    lockstep_coordinator::metrics::register(&mut registry, coordinator);
    let bound = lockstep::metrics::start(addr, registry).await;
    let bound = bound.with_context(|| format!("binding --metrics-listen {addr}"))?;
    tracing::info!("metrics at http://{bound}/metrics");
    Ok(())
}

/// The store `--store` names; on etcd, once this instance leads (it waits until then).
async fn open_store(
    args: &Arc<Args>,
    listener: &tokio::net::TcpListener,
    tls: Option<&tls::ServerTls>,
    net: Arc<dyn ParticipantNet>,
    stop: &mut shutdown::Stop,
) -> anyhow::Result<(Arc<dyn Kv>, Option<Lead>, Option<Arc<EtcdKv>>)> {
    let bound = listener.local_addr()?;
    let target = match &args.store {
        StoreFlag::Rocks => {
            let dir = args
                .data_dir
                .as_ref()
                .context("--data-dir: required with --store rocksdb")?;
            let kv = storage::open_rocks(dir, args.wal_recovery).map_err(anyhow::Error::msg)?;
            return Ok((kv, None, None));
        }
        StoreFlag::Etcd(target) => etcd_target(target, args)?,
    };
    let me = args.advertise.clone().unwrap_or_else(|| {
        let scheme = if args.insecure { "http" } else { "https" };
        format!("{scheme}://{bound}")
    });
    let ttl = args.etcd_lease_ttl;
    let opened = tokio::task::spawn_blocking(move || EtcdKv::open(&target, tables::ALL));
    let kv = Arc::new(opened.await?.context("opening the etcd store")?);
    let checked = kv.clone();
    let limits = tokio::task::spawn_blocking(move || checked.check_limits());
    if let Err(refused) = limits
        .await?
        .context("asking etcd for its transaction limits")?
    {
        // A usage error, as a bad flag is: nothing was written, and serving would stop
        // at the first large write (lockstep_store::etcd_limits).
        tracing::error!("--store: {refused}");
        eprintln!("lockstep-coordinator: --store: {refused}");
        std::process::exit(2);
    }
    let standby = Standby::default();
    let view = read_view(kv.clone(), args.clone(), tls.cloned(), net);
    let service = StandbyService::new(standby.clone(), view);
    let (stop_standby, standing) = serve_standby(listener, tls, service)?;
    let leading = kv.clone();
    let campaign = tokio::task::spawn_blocking(move || {
        leading.lead(&me, ttl, move |leader| {
            standby.set_leader(leader);
            tracing::info!("standby: {leader} leads; waiting to take over");
        })
    });
    // A standby stopped while it waits has nothing to hand over: it ends at once
    // (before stop 57 it ignored the signal, then led, recovered and only then stopped).
    let lead = tokio::select! {
        lead = campaign => lead?.context("campaigning for leadership on etcd")?,
        () = stop.requested() => {
            tracing::info!("stopped while standing by");
            shutdown::exit(0);
        }
    };
    let _ = stop_standby.send(());
    stop_standing(standing).await;
    tracing::info!("leading with term {}", lead.term);
    let store: Arc<dyn Kv> = kv.clone();
    Ok((store, Some(lead), Some(kv)))
}

/// Waits for the standby's server to stop: calls still open (a health Watch never ends
/// on its own) get the same grace as at shutdown, then are cut, so a standby that won
/// serves instead of waiting for its clients.
async fn stop_standing(mut standing: tokio::task::JoinHandle<()>) {
    let grace = lockstep::shutdown::GRACE;
    if tokio::time::timeout(grace, &mut standing).await.is_err() {
        tracing::info!("standby calls still open after {grace:?}: closing them");
        standing.abort();
    }
}

/// What a standby's reads see: the tables in etcd as they are at the call, read through
/// a view that cannot write, with callers authenticated as the leader would.
fn read_view(
    kv: Arc<EtcdKv>,
    args: Arc<Args>,
    tls: Option<tls::ServerTls>,
    net: Arc<dyn ParticipantNet>,
) -> View {
    Arc::new(move || {
        let config = Config {
            etcd: Some(kv.clone()),
            ..config(&args)
        };
        let store: Arc<dyn Kv> = kv.clone();
        let coordinator =
            Coordinator::read_only(store, net.clone(), config).map_err(|e| e.to_string())?;
        let access = access(tls.as_ref(), &args, &coordinator).map_err(|e| format!("{e:#}"))?;
        Ok((coordinator, access))
    })
}

/// While this instance waits to lead, its port answers reads from etcd and every other
/// coordinator call with UNAVAILABLE naming the leader (on a second handle of the same
/// socket, closed once it leads).
fn serve_standby(
    listener: &tokio::net::TcpListener,
    tls: Option<&tls::ServerTls>,
    standby: StandbyService,
) -> anyhow::Result<(
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)> {
    use std::os::fd::AsFd;
    let fd = listener.as_fd().try_clone_to_owned()?;
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    let tcp = edge::incoming(tokio::net::TcpListener::from_std(std)?);
    let tls = tls.cloned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let until = async move {
        let _ = stopped.await;
    };
    let task = tokio::spawn(async move {
        let served = match tls {
            Some(tls) => lockstep::standby::serve(standby, tls.incoming(tcp), until).await,
            None => lockstep::standby::serve(standby, tcp, until).await,
        };
        if let Err(e) = served {
            tracing::warn!("the standby's port: {e}");
        }
    });
    Ok((stop, task))
}

/// `target` with the TLS files of --etcd-ca/--etcd-cert/--etcd-key read in.
fn etcd_target(
    target: &lockstep_store::EtcdTarget,
    args: &Args,
) -> anyhow::Result<lockstep_store::EtcdTarget> {
    let mut target = target.clone();
    if let (Some(ca), Some(cert), Some(key)) = (&args.etcd_ca, &args.etcd_cert, &args.etcd_key) {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        target.tls = Some((read(ca)?, read(cert)?, read(key)?));
    }
    Ok(target)
}

/// Warns of every project whose endpoint's scheme does not fit the TLS setting (moving
/// to TLS leaves the `http://` registrations behind): a release to it could not reach
/// its agent. docs/security.md says how to move.
fn warn_of_mismatched_endpoints(coordinator: &Coordinator, secure: bool) {
    let wanted = if secure { "https://" } else { "http://" };
    for env in coordinator.registry().environments() {
        let projects = coordinator.projects(&env.record.name);
        for p in projects.iter().filter(|p| !p.endpoint.starts_with(wanted)) {
            tracing::warn!(
                "project {} in environment {} is registered at {}, but this coordinator reaches agents over {wanted}: move it with `lockstep -e {} project set {} --endpoint {wanted}...` (docs/security.md, \"Moving to TLS\")",
                p.name,
                p.environment,
                p.endpoint,
                p.environment,
                p.name
            );
        }
    }
}

/// How callers are authenticated over the server's TLS: certificates chaining to the
/// CA, and tokens signed with the store's secret (none of it without TLS).
fn access(
    server: Option<&tls::ServerTls>,
    args: &Args,
    coordinator: &Coordinator,
) -> anyhow::Result<Access> {
    let Some(server) = server else {
        return Ok(Access::insecure());
    };
    let secret = coordinator.token_secret(tokens::new_secret)?;
    let mut grants = std::collections::BTreeMap::<_, Vec<_>>::new();
    for (name, grant) in &args.grant {
        grants.entry(name.clone()).or_default().push(grant.clone());
    }
    let revoked = coordinator.revoked_tokens()?.into_iter().collect();
    let secure = Secure {
        tls: server.clone(),
        key: tokens::TokenKey::new(&secret),
        admins: args.admin.iter().cloned().collect(),
        grants,
        revoked: std::sync::RwLock::new(revoked),
        clock: Arc::new(lockstep::wire::now_millis),
    };
    Ok(Access::secure(secure))
}

fn config(args: &Args) -> Config {
    Config {
        default_prepare_timeout: args.prepare_timeout,
        delivery_timeout: args.delivery_timeout,
        backoff: lockstep::retry::Backoff {
            initial: args.retry_initial_delay,
            max: args.retry_max_delay.max(args.retry_initial_delay),
        },
        notify: notify::Settings {
            timeout: args.notify_timeout,
            max_backoff: args.notify_max_backoff,
            allow: args.notify_allow.clone(),
            ..notify::Settings::default()
        },
        stalled_after: Some(thresholds(&args.stalled_after)),
        drift_check: args.drift_check,
        commit_delay: CommitDelay {
            delay: args.commit_delay,
            siblings: args.commit_siblings,
        },
        ..Config::default()
    }
}

/// `--commit-delay`: a duration up to a second (a longer wait at every step of every
/// release under load is a mistake, not a setting).
fn parse_commit_delay(s: &str) -> Result<std::time::Duration, String> {
    let delay = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if delay > std::time::Duration::from_secs(1) {
        return Err(format!("{s} is longer than the longest allowed, 1s"));
    }
    Ok(delay)
}
