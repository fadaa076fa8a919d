//! `lockstep-agent`: the reference participant for one project.

/// mimalloc instead of the system allocator: the RPC path allocates and frees many small
/// buffers, and glibc's malloc was over a tenth of the CPU in the benchmarks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::Parser;
use lockstep::{identity::Identity, shutdown, tls};
use lockstep_participant::{
    Participant,
    access::OnlyCoordinator,
    agent::{ArtifactRoots, Fetcher, FsDeployer, Hooks},
    inquiry::GrpcDecisions,
    ledger::{self, Ledger},
    participant::Decisions,
    schema, server,
};
use lockstep_store::{Kv, RocksKv, WalRecovery};

/// Runs a Lockstep participant for one project: stages versions under --deploy-root,
/// makes them live by switching the `current` symlink, and keeps its protocol state in
/// RocksDB under --data-dir. Prints `listening on ADDR` once it accepts calls.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Project this agent serves.
    #[arg(long)]
    project: String,
    /// Environment this agent serves.
    #[arg(long, default_value = lockstep::DEFAULT_ENVIRONMENT)]
    environment: String,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:7711")]
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
    /// HTTP listener beside gRPC (port 0 picks a free port; the address is logged). Off
    /// unless given; docs/metrics.md lists every metric.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Directory of the agent's RocksDB state (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Directory holding `releases/<version>` and the `current` symlink.
    #[arg(long)]
    deploy_root: PathBuf,
    /// Coordinator URL, asked for decisions after a restart (`https://` with TLS); every
    /// instance of a coordinator on etcd, comma-separated, to ask whichever leads.
    #[arg(
        long,
        env = "LOCKSTEP_COORDINATOR",
        default_value = "http://127.0.0.1:7700"
    )]
    coordinator: String,
    /// How long a PREPARED vote waits for Commit or Abort before the agent asks the
    /// coordinator for the decision (and again, with backoff, until it has one). The
    /// waiting votes are looked at every quarter of this, so the first ask comes
    /// within 1.25 times it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ask_decision_after: std::time::Duration,
    /// Command run (with `sh -c`) after staging; a non-zero exit refuses the release.
    #[arg(long)]
    prepare_hook: Option<String>,
    /// Command run after going live; a non-zero exit makes the coordinator retry.
    #[arg(long)]
    commit_hook: Option<String>,
    /// Command run after undoing a staged version.
    #[arg(long)]
    abort_hook: Option<String>,
    /// Blue/green: command run at Prepare (LOCKSTEP_PHASE=serve) that starts the staged
    /// version and prints its test URI as the last line of its stdout (a server it
    /// starts must not keep that stdout open); run again with LOCKSTEP_PHASE=stop at
    /// Commit and Abort to stop it. A failure at serve refuses the release.
    #[arg(long)]
    serve_hook: Option<String>,
    /// Database whose schema this project's migrations change (`sqlite://PATH` or
    /// `postgres://...`). Without it, shipped migrations are ignored.
    #[arg(long, env = "LOCKSTEP_DATABASE")]
    database: Option<String>,
    /// What to do when the agent's write-ahead log's last record is damaged: `strict`
    /// refuses to start; `tolerate-torn-tail` drops it (after a power loss).
    #[arg(long, default_value = "strict")]
    wal_recovery: WalRecovery,
    /// How migrations are staged: `reversible` (applied at prepare, inverse on abort) or
    /// `postgres-2pc` (a PostgreSQL prepared transaction until the decision).
    #[arg(long, default_value = "reversible")]
    migration_mode: schema::Mode,
    /// Directory artifacts may be staged from (repeatable); a Prepare naming a path
    /// outside every one is refused. Required with TLS.
    #[arg(long)]
    artifact_root: Vec<PathBuf>,
    /// Refuse a new version released without `--artifact` (by default it is staged as
    /// an empty `releases/<version>` holding only its metadata file, which suits hooks
    /// that deploy by version name). Artifact paths are this agent's, resolved here.
    #[arg(long)]
    require_artifact: bool,
    /// Where artifacts given by URL (`https://…/app.tar.gz@sha256:HEX`) are downloaded
    /// and kept, by digest (default: `<deploy-root>/cache`).
    #[arg(long)]
    artifact_cache: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for `https://` artifact URLs besides the public
    /// roots (an internal artifact store).
    #[arg(long)]
    artifact_ca: Option<PathBuf>,
    /// This agent's certificate (PEM): its server certificate, and its client
    /// certificate towards the coordinator.
    #[arg(long, env = "LOCKSTEP_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "LOCKSTEP_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The deployment's CA (PEM): callers' certificates and the coordinator's must
    /// chain to it.
    #[arg(long, env = "LOCKSTEP_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// The identity orders are taken from (the coordinator's certificate URI SAN).
    #[arg(long, default_value = "spiffe://lockstep/coordinator")]
    coordinator_identity: String,
    /// Plaintext, and anyone who can reach the agent may give it orders: for local
    /// experiments only (a warning is logged).
    #[arg(long)]
    insecure: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shutdown::exit_on_panic();
    // Before anything else, so a SIGTERM at any moment stops the agent cleanly.
    let stop = shutdown::install().context("installing the SIGTERM and SIGINT handlers")?;
    // (Logging starts once the flags are read: --log-format says how.)
    let args = Args::parse();
    let telemetry = lockstep::logging::init(
        "lockstep-agent",
        args.log_format,
        args.otlp_endpoint.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let listen = args.listen;
    let files = tls::files_from_flags(
        args.tls_cert.clone(),
        args.tls_key.clone(),
        args.tls_client_ca.clone(),
        args.insecure,
    )
    .map_err(anyhow::Error::msg)?;
    let (tls, access) = security(files.as_ref(), &args)?;
    let metrics_listen = args.metrics_listen;
    let (participant, store) = participant(args, files).await?;
    let prepared = participant
        .recover_local()
        .await
        .context("recovering local state")?;
    if !prepared.is_empty() {
        tracing::info!(
            "{} prepared transaction(s) await their decision: asking the coordinator",
            prepared.len()
        );
    }
    participant.resolve_prepared(prepared);
    // After recovery, which finds what a previous process left open: the gauge counts
    // the ledger's open records in memory, never scanning the whole history.
    if let Some(addr) = metrics_listen {
        let ledger = participant.ledger().clone();
        let staged = move || ledger.open_ids().len();
        let registry = lockstep_participant::metrics::registry(Box::new(staged));
        let bound = lockstep::metrics::start(addr, registry).await;
        let bound = bound.with_context(|| format!("binding --metrics-listen {addr}"))?;
        tracing::info!("metrics at http://{bound}/metrics");
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding --listen {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    let ledger = participant.ledger().clone();
    let failed = async move { format!("the agent's ledger failed: {}", ledger.failed().await) };
    let serve = |told: tokio::sync::oneshot::Receiver<()>| {
        server::serve(listener, tls, participant, access, async move {
            let _ = told.await;
        })
    };
    let served = shutdown::serve_until_stopped(stop, serve, failed);
    if let Err(error) = served.await.and(store.sync().map_err(|e| e.to_string())) {
        eprintln!("stopping: {error}");
        telemetry.flush();
        shutdown::exit(1);
    }
    telemetry.flush();
    shutdown::exit(0)
}

/// The participant the flags describe (its ledger, deployer, schema and decision
/// source), with the ledger's store to sync at a stop.
async fn participant(
    args: Args,
    files: Option<tls::TlsFiles>,
) -> anyhow::Result<(Participant<FsDeployer>, Arc<RocksKv>)> {
    lockstep::names::ProjectName::parse("--project", &args.project)?;
    lockstep::names::Environment::parse("--environment", &args.environment)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {}", args.data_dir.display()))?;
    let kv =
        RocksKv::open_with(&args.data_dir, ledger::ALL, args.wal_recovery).with_context(|| {
            format!(
                "opening the agent state in --data-dir {}",
                args.data_dir.display()
            )
        })?;
    let roots = ArtifactRoots::new(&args.artifact_root)?;
    if roots.is_empty() && files.is_some() {
        anyhow::bail!("--artifact-root: give at least one directory artifacts may be staged from");
    }
    let fetcher = fetcher(&args, roots)?;
    let decisions = decisions(&args, files.as_ref())?;
    let hooks = Hooks {
        prepare: args.prepare_hook,
        commit: args.commit_hook,
        abort: args.abort_hook,
        serve: args.serve_hook,
    };
    let mut deployer = FsDeployer::new(args.deploy_root.clone(), hooks)
        .with_context(|| format!("preparing --deploy-root {}", args.deploy_root.display()))?
        .with_fetcher(fetcher);
    if args.require_artifact {
        deployer = deployer.requiring_artifacts();
    }
    let schema = match &args.database {
        Some(url) => {
            let s = schema::Schema::open(url, args.migration_mode, &args.project)
                .await
                .map_err(anyhow::Error::msg)?;
            tracing::info!(
                "migrations staged against {} ({})",
                redact(url),
                s.describe()
            );
            Some(s)
        }
        None => None,
    };
    let store = Arc::new(kv);
    let ledger = Ledger::open(store.clone(), lockstep_store::WriterMode::Thread)?;
    let participant = Participant::new(
        args.project,
        args.environment,
        deployer,
        schema,
        ledger,
        Some(decisions),
    );
    Ok((participant, store))
}

/// Where a PREPARED vote that waits asks for its decision: each instance --coordinator
/// names (comma-separated), in turn.
fn decisions(args: &Args, files: Option<&tls::TlsFiles>) -> anyhow::Result<Decisions> {
    let client_tls = files
        .map(|f| tls::client_config(&f.ca, Some((&f.cert, &f.key))))
        .transpose()?;
    let mut coordinators = Vec::new();
    for url in args.coordinator.split(',').map(str::trim) {
        let endpoint = lockstep::edge::endpoint(url)
            .with_context(|| format!("--coordinator {url:?} is not a URL"))?;
        let secured = lockstep::edge::secured(endpoint, client_tls.as_ref())
            .map_err(|e| anyhow::anyhow!("--coordinator {e}"))?;
        coordinators.push(secured.connect_lazy());
    }
    Ok(Decisions {
        source: Arc::new(GrpcDecisions::asking_each(coordinators)),
        ask_after: args.ask_decision_after,
    })
}

/// The artifact fetcher the flags describe: its cache, roots and extra CA.
fn fetcher(args: &Args, roots: ArtifactRoots) -> anyhow::Result<Fetcher> {
    let cache = args.artifact_cache.clone();
    let cache = cache.unwrap_or_else(|| args.deploy_root.join("cache"));
    let ca = match &args.artifact_ca {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("--artifact-ca {}", path.display()))?)
        }
        None => None,
    };
    Fetcher::new(cache, roots, ca.as_deref()).map_err(anyhow::Error::msg)
}

/// The server's TLS (re-read on SIGHUP) and who may call it.
fn security(
    files: Option<&tls::TlsFiles>,
    args: &Args,
) -> anyhow::Result<(Option<tls::ServerTls>, OnlyCoordinator)> {
    let Some(files) = files else {
        return Ok((None, OnlyCoordinator::insecure()));
    };
    let coordinator = Identity::parse(&args.coordinator_identity)
        .map_err(|e| anyhow::anyhow!("--coordinator-identity: {e}"))?;
    let server = tls::ServerTls::load(files.clone())?;
    tls::reload_on_sighup(server.clone()).context("installing the SIGHUP handler")?;
    Ok((
        Some(server.clone()),
        OnlyCoordinator::new(server, coordinator),
    ))
}

/// A database URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}
