//! Command-line arguments of `lockstep`.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use lockstep::pb;

use crate::{Failure, Result, pairs};

/// Drive Lockstep, the all-or-nothing release coordinator: register projects, create
/// releases, revert and roll back, watch events, read the live state and history.
///
/// Exit codes: 0 committed or done, 1 aborted or refused, 2 usage error, 3 coordinator
/// unreachable, 4 not allowed (no or an unknown credential, or a missing permission),
/// 5 committed but not yet live everywhere, 6 still queued, 7 still preparing or
/// verifying (when `--wait-timeout` ran out).
#[derive(Parser)]
#[command(name = "lockstep", version)]
pub struct Args {
    /// Coordinator URL.
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_COORDINATOR",
        default_value = "http://127.0.0.1:7700"
    )]
    pub coordinator: String,
    /// Environment to act on.
    #[arg(long, short = 'e', global = true, env = "LOCKSTEP_ENVIRONMENT", default_value = lockstep::DEFAULT_ENVIRONMENT, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub environment: String,
    /// Output format: a table for people, or JSON (the proto3 JSON mapping, as grpcurl
    /// prints it) for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The CA (PEM) the coordinator's certificate chains to: TLS (an https:// URL).
    #[arg(long, global = true, env = "LOCKSTEP_CA")]
    pub ca: Option<PathBuf>,
    /// Your client certificate (PEM; with --key), e.g. `user-alice.crt` from `certs init`.
    #[arg(long, global = true, env = "LOCKSTEP_CERT")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, global = true, env = "LOCKSTEP_KEY")]
    pub key: Option<PathBuf>,
    /// A bearer token (from `lockstep token create`), sent with every call over TLS.
    #[arg(long, global = true, env = "LOCKSTEP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How long each call waits for its answer: a coordinator that takes a call and
    /// never answers (stalled, paused) fails the command (exit 3) after this long
    /// instead of hanging it; a wait (`--wait`) also ends at its `--wait-timeout`.
    /// `conformance`: the agent is then taken to have stopped answering, and the later
    /// checks fail as not run (raise it for an agent whose Prepare fetches large
    /// artifacts).
    #[arg(long, global = true, env = "LOCKSTEP_CALL_TIMEOUT", default_value = "60s", value_parser = call_timeout)]
    pub call_timeout: Duration,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Whether -e/--environment was given on the command line (not taken from
    /// LOCKSTEP_ENVIRONMENT or its default): `notify add` then takes it as its --env,
    /// as a person who names an environment means it.
    #[arg(skip)]
    pub environment_named: bool,
}

impl Args {
    /// The credentials flags, for [`crate::dial::Dial`].
    pub fn credentials(&self) -> crate::dial::Credentials {
        crate::dial::Credentials {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            token: self.token.clone(),
            call_timeout: self.call_timeout,
        }
    }
}

/// Output format.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// JSON.
    Json,
}

/// Top-level commands.
#[derive(Subcommand)]
pub enum Command {
    /// Register and list projects.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Create, inspect, watch and abort releases.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Show the composite live state (current checkpoint, transactions in flight).
    Live {
        /// Every environment: the environment × project matrix (version, schema,
        /// checkpoint), in promotion order.
        #[arg(long)]
        all: bool,
        /// Also ask every agent what it runs now, beside what should run, marking
        /// drift (a version or schema no transaction explains).
        #[arg(long, conflicts_with = "all")]
        observed: bool,
    },
    /// Environments and the promotion path between them.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Show every checkpoint, oldest first.
    History,
    /// Revert a committed release: restore, for exactly the projects it touched, the
    /// versions live just before it.
    Revert {
        /// Release to revert.
        release: String,
        /// Id for the revert transaction (default `revert-<release>`).
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: Option<String>,
        /// Also revert later releases that built on it.
        #[arg(long)]
        cascade: bool,
        /// Release ticket URL: failures are notified to it.
        #[arg(long)]
        ticket: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Restore a checkpoint as one transaction (default: the one before the current).
    Rollback {
        /// Checkpoint revision to restore (revisions start at 1).
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        revision: Option<u64>,
        /// Id for the rollback transaction (default `rollback-to-<N>`).
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: Option<String>,
        /// Restore versions a revert pulled (quarantined) all the same (operators).
        #[arg(long)]
        allow_quarantined: bool,
        /// Release ticket URL: failures are notified to it.
        #[arg(long)]
        ticket: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Promote a tested state downstream as one release in the target environment:
    /// exactly the versions, artifacts and metadata of a source checkpoint (default:
    /// the newest verified one) or of the projects one release moved.
    Promote {
        /// Source environment.
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        from: String,
        /// Target environment (downstream of the source).
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        to: String,
        /// Source checkpoint to promote whole (revisions start at 1).
        #[arg(long, conflicts_with = "release", value_parser = clap::value_parser!(u64).range(1..))]
        checkpoint: Option<u64>,
        /// A committed release of the source: only the projects it moved go.
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        release: Option<String>,
        /// Id for the promotion (default `promote-<from>-<checkpoint>-to-<to>`).
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: Option<String>,
        /// Promote an untested (forced) checkpoint or release all the same (operators).
        #[arg(long)]
        force: bool,
        /// Release ticket URL: failures are notified to it.
        #[arg(long)]
        ticket: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Record by hand what a participant in phase 2 did, when the coordinator cannot
    /// bring it to the decision (it needs resolution, or cannot be reached). The
    /// decision is sent to it once more first; refused if it acknowledges. Recorded in
    /// the log with who, why and what the participant answered. The call waits for
    /// that delivery (up to the coordinator's `--delivery-timeout`): with one above
    /// 60 s, raise `--call-timeout` above it too.
    Resolve {
        /// Transaction id.
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
        /// The participant's project.
        #[arg(long)]
        participant: String,
        /// What you checked it did (only the decided outcome is accepted).
        #[arg(long = "as", value_enum)]
        outcome: Outcome,
        /// Why (required; kept in the log).
        #[arg(long)]
        reason: String,
        /// Only check and say what would be recorded.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Check a running agent against every rule of participant.proto, playing the
    /// coordinator (it stages and commits test versions: use a test instance). Start
    /// the agent with `--coordinator` at `--serve` for the restart check.
    Conformance {
        /// The agent's URL, e.g. http://127.0.0.1:7711.
        #[arg(long)]
        agent: String,
        /// The project it serves.
        #[arg(long)]
        project: String,
        /// A shell command that restarts the agent and returns once it listens again
        /// (without it, the restart check is skipped, and the run fails unless
        /// --allow-skip).
        #[arg(long)]
        restart_cmd: Option<String>,
        /// Pass with checks skipped (without --restart-cmd, durability and GetDecision
        /// after a restart go unchecked).
        #[arg(long)]
        allow_skip: bool,
        /// Where the kit serves GetDecision for the agent.
        #[arg(long, default_value = "127.0.0.1:7799")]
        serve: std::net::SocketAddr,
    },
    /// Retry every phase 2 delivery of a transaction now (after an outage), and ask
    /// again participants that need resolution.
    Retry {
        /// Transaction id.
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Make and revoke bearer tokens (admins).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The coordinator's instances: which leads, on which store; on etcd its members,
    /// the leader's term and its lease.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The audit log: what each principal did, and every refused attempt (operators).
    Audit {
        /// Start at this sequence number.
        #[arg(long, default_value_t = 1)]
        since: u64,
    },
    /// Development certificates for a local deployment.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Webhook subscriptions: CloudEvents from the log, in order, at least once.
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Report on an external verify step of a transaction in VERIFYING (test runners).
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// Approve the current approval step of a transaction in VERIFYING (operators; not
    /// the transaction's creator).
    Approve {
        /// Transaction id.
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
        /// Why (kept in the log).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Reject a transaction in VERIFYING, whatever step it is on: it aborts, and every
    /// staged part is undone.
    Reject {
        /// Transaction id.
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
        /// Why (kept in the log).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        actor: ActorArg,
    },
}

/// Exactly one of `--started`, `--passed`, `--failed`.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct StepOutcome {
    /// The runner began.
    #[arg(long)]
    pub started: bool,
    /// The staged set passed.
    #[arg(long)]
    pub passed: bool,
    /// The staged set failed: the transaction aborts.
    #[arg(long)]
    pub failed: bool,
}

/// `lockstep verify ...`.
#[derive(Subcommand)]
pub enum VerifyCommand {
    /// Say an external step started, passed or failed (Keptn's started/finished).
    Report {
        /// Transaction id.
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
        /// The step's name, as the pipeline file names it.
        step: String,
        #[command(flatten)]
        outcome: StepOutcome,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
        /// Where the results are (a CI run, a dashboard).
        #[arg(long, default_value = "")]
        link: String,
        #[command(flatten)]
        actor: ActorArg,
    },
}

/// `lockstep env ...`.
#[derive(Subcommand)]
pub enum EnvCommand {
    /// Declare an environment (operators), after its upstreams on the promotion path
    /// (declared first; no cycles). Again with other upstreams: changes them.
    Add {
        /// Its name.
        name: String,
        /// Upstream environments, comma-separated (e.g. --after hardening).
        #[arg(long, value_parser = comma_list)]
        after: Vec<String>,
    },
    /// Apply a pipeline file (TOML: every environment with its upstreams and stages,
    /// and the projects it declares; docs/stages.md), as one new pipeline version
    /// (operators).
    Apply {
        /// The file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Only check it and print what would change.
        #[arg(long)]
        dry_run: bool,
        /// Register the file's projects without asking their endpoints first.
        #[arg(long)]
        unchecked: bool,
    },
    /// Every environment (declared, or with projects) in promotion order.
    List,
    /// One environment: upstreams, downstreams, projects, live checkpoint.
    Show {
        /// Its name.
        name: String,
    },
}

/// `lockstep notify ...`.
#[derive(Subcommand)]
pub enum NotifyCommand {
    /// Subscribe a URL to the event log (operators). Without --events it gets every
    /// event from --from-seq (default: from its own `subscription.added` on).
    Add {
        /// Unique name.
        name: String,
        /// Where events are POSTed (http:// or https://).
        #[arg(long)]
        url: String,
        /// Event names, comma-separated (e.g. transaction.aborted,stalled); see
        /// docs/notifications.md for the list.
        #[arg(long, value_parser = comma_list)]
        events: Vec<String>,
        /// Only this environment's events (and its failures' route). `-e ENV` given on
        /// the command line means the same (LOCKSTEP_ENVIRONMENT does not).
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        env: Option<String>,
        /// Only events of transactions that include this project (and failures it
        /// caused).
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        project: Option<String>,
        /// structured (default) or binary CloudEvents.
        #[arg(long)]
        mode: Option<String>,
        /// A file holding the HMAC-SHA256 key that signs every request.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Deliver from this log sequence number on.
        #[arg(long)]
        from_seq: Option<u64>,
        /// Accepts release tickets: gets the events of transactions with --ticket, and
        /// their failures.
        #[arg(long)]
        ticket_sink: bool,
    },
    /// Show every subscription with its cursor, lag, last status and error.
    List,
    /// Remove a subscription (operators).
    Remove {
        /// Its name.
        name: String,
    },
    /// Send one ping CloudEvent to a subscription now and print what it answered.
    Test {
        /// Its name.
        name: String,
    },
}

/// `lockstep cluster ...`.
#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Which instance leads, its term, the etcd members and the leader's lease.
    Status,
}

/// `lockstep token ...`.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a signed token and print it (once: only its id is kept).
    Create {
        /// viewer, releaser, operator or admin.
        #[arg(long)]
        role: String,
        /// Environments it holds in, comma separated (default: every one).
        #[arg(long = "env", value_delimiter = ',')]
        environments: Vec<String>,
        /// Projects it holds for, comma separated (default: every one).
        #[arg(long = "project", value_delimiter = ',')]
        projects: Vec<String>,
        /// How long it works (default 7d, at most 366d).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Who it is for, as the log names it (default: you).
        #[arg(long)]
        subject: Option<String>,
    },
    /// Revoke a token by id, for every call from now on.
    Revoke {
        /// The token's id (`tok-...`).
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
    },
}

/// `lockstep certs ...`.
#[derive(Subcommand)]
pub enum CertsCommand {
    /// Write a development CA and certificates for the coordinator, agents and users
    /// into DIR (an existing CA there is reused, so rerunning renews the others).
    Init {
        /// Where to write them.
        dir: PathBuf,
        /// The agents' environment.
        #[arg(long = "env", default_value = lockstep::DEFAULT_ENVIRONMENT)]
        environment: String,
        /// Agents (projects) to make certificates for, comma separated.
        #[arg(long, value_delimiter = ',')]
        agents: Vec<String>,
        /// Users to make certificates for, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "admin")]
        users: Vec<String>,
        /// Extra DNS names or IP addresses the servers' certificates are valid for
        /// (localhost and 127.0.0.1 always are), comma separated.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// How long the certificates are valid.
        #[arg(long, default_value = "90d", value_parser = validity)]
        valid_for: Duration,
    },
}

/// What a participant is recorded to have done.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Outcome {
    /// It went live.
    Committed,
    /// It restored what was live before.
    Aborted,
}

/// Who is asking, for the log (until authentication names them).
#[derive(clap::Args)]
pub struct ActorArg {
    /// Your name in the log (default: $LOCKSTEP_ACTOR, else $USER).
    #[arg(long, env = "LOCKSTEP_ACTOR")]
    pub actor: Option<String>,
}

impl ActorArg {
    /// The name to record.
    pub fn name(&self) -> String {
        self.actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_default()
    }
}

/// Flags shared by everything that starts a transaction.
#[derive(clap::Args)]
pub struct WaitArgs {
    /// Wait until the transaction is committed (exit 0) or aborted (exit 1), showing its
    /// events as they happen.
    #[arg(long)]
    pub wait: bool,
    /// Prepare deadline: if any participant has not voted within it, everything aborts.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// With --wait: one deadline for the whole wait, from the moment of the call, the
    /// queue included. When it runs out, the exit code says where the transaction
    /// stands: 6 still queued, 7 still preparing or verifying, 5 committed but not yet
    /// live everywhere (naming who is missing). It goes on on its own; `release watch`
    /// follows it.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub wait_timeout: Duration,
    /// Only show the plan (targets, actions, waves, preconditions); change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `lockstep project ...`.
#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Register a project. Registering it again with the same settings changes
    /// nothing; with other settings it is refused, naming what differs (`project set`
    /// changes a project).
    Add {
        /// Project name.
        name: String,
        /// Its participant's URL, e.g. http://127.0.0.1:7711.
        #[arg(long)]
        endpoint: String,
        /// Children that must release with it, comma separated.
        #[arg(long, value_delimiter = ',')]
        requires: Vec<String>,
        /// Register without asking the endpoint first (by default the coordinator
        /// asks its GetStatus and refuses an endpoint that does not answer as this
        /// project and environment).
        #[arg(long)]
        unchecked: bool,
    },
    /// Change a registered project: only what is given changes (moving an endpoint
    /// keeps the children).
    Set {
        /// Project name.
        name: String,
        /// Its participant's new URL.
        #[arg(long)]
        endpoint: Option<String>,
        /// Its new children, comma separated (replacing the current ones).
        #[arg(long, value_delimiter = ',', conflicts_with = "no_requires")]
        requires: Option<Vec<String>>,
        /// Remove every child.
        #[arg(long)]
        no_requires: bool,
        /// Move the endpoint without asking it first.
        #[arg(long)]
        unchecked: bool,
    },
    /// Remove a project: refused while a transaction holds it or another project
    /// requires it. Its history stays; it leaves the live state at once.
    Remove {
        /// Project name.
        name: String,
    },
    /// List projects.
    List,
}

/// `lockstep release ...`.
#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// Create a release: `lockstep release create T4 A=T4A B=T4B C=T4C`.
    Create {
        /// Release id (retrying with the same id and content is safe).
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
        /// PROJECT=VERSION, one per project.
        #[arg(required = true)]
        components: Vec<String>,
        /// PROJECT=ARTIFACT, repeatable: a path on the agent's disk (a directory or a
        /// .tar.gz, `@sha256:HEX` optional) or `https://…/app.tar.gz@sha256:HEX`.
        #[arg(long = "artifact")]
        artifacts: Vec<String>,
        /// PROJECT=KEY=VALUE metadata passed to the participant, repeatable.
        #[arg(long = "meta")]
        metadata: Vec<String>,
        /// Allow moving projects back into a combination never committed (recorded as
        /// untested).
        #[arg(long)]
        force: bool,
        /// Allow versions a revert pulled.
        #[arg(long)]
        allow_quarantined: bool,
        /// Release ticket URL: failures are notified to it (a ticket sink gets them).
        #[arg(long)]
        ticket: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show one transaction.
    Get {
        /// Transaction id.
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
    },
    /// List transactions, newest first.
    List {
        /// How many (one page; at most 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only unfinished ones.
        #[arg(long)]
        active: bool,
        /// Only those this project takes part in.
        #[arg(long, default_value = "")]
        project: String,
        /// Continue after the page that printed this token.
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Follow the event log (of one transaction, or all).
    Watch {
        /// Only this transaction's events (from its first one, unless --from).
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: Option<String>,
        /// Start at this sequence number (resume after the last one seen); default:
        /// what happens from now on (with an id: the transaction's whole story).
        #[arg(long)]
        from: Option<u64>,
    },
    /// Abort a transaction that has not decided yet.
    Abort {
        /// Transaction id.
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
        /// Why (recorded in the event log).
        #[arg(long, default_value = "aborted from the command line")]
        reason: String,
    },
}

/// `--call-timeout`: a duration from a millisecond (the least `grpc-timeout` carries
/// without rounding to nothing) to a day.
fn call_timeout(value: &str) -> std::result::Result<Duration, String> {
    let timeout = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    match (Duration::from_millis(1)..=Duration::from_secs(86_400)).contains(&timeout) {
        true => Ok(timeout),
        false => Err("from 1ms to 1d".into()),
    }
}

/// A certificate's validity: a duration of at most 100 years (`--valid-for 8000y`
/// overflowed the date and panicked).
fn validity(value: &str) -> std::result::Result<Duration, String> {
    let valid_for = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    // humantime's year is 365.25 days.
    match valid_for <= Duration::from_secs(100 * 31_557_600) {
        true => Ok(valid_for),
        false => Err("at most 100y".into()),
    }
}

/// A comma-separated list with no empty item: `--after "$UP"` with `UP` unset would
/// otherwise send no upstreams (cutting an environment off its promotion path), and
/// `--events ""` would subscribe to every event.
fn comma_list(value: &str) -> std::result::Result<String, String> {
    match value.split(',').any(|item| item.trim().is_empty()) {
        true => Err("an empty item (an unset variable?): name each, comma-separated".into()),
        // `--after "a, b"` as `a,b`: a space after a comma is not part of a name.
        false => Ok(value
            .split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(",")),
    }
}

/// Builds the components of a release from `A=T4A` arguments, `--artifact A=PATH` and
/// `--meta A=KEY=VALUE` flags.
pub fn components(
    items: &[String],
    artifacts: &[String],
    metadata: &[String],
) -> Result<Vec<pb::Component>> {
    let versions = pairs("component", items)?;
    let mut artifacts = pairs("--artifact", artifacts)?;
    let mut out: Vec<pb::Component> = versions
        .into_iter()
        .map(|(project, version)| pb::Component {
            artifact: artifacts.remove(&project).unwrap_or_default(),
            project,
            version,
            metadata: Default::default(),
        })
        .collect();
    if let Some(project) = artifacts.keys().next() {
        return Err(Failure::usage(format!(
            "--artifact {project}=...: {project} is not a component of this release"
        )));
    }
    for item in metadata {
        let (project, kv) = item.split_once('=').ok_or_else(|| {
            Failure::usage(format!("--meta {item:?}: expected PROJECT=KEY=VALUE"))
        })?;
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            Failure::usage(format!("--meta {item:?}: expected PROJECT=KEY=VALUE"))
        })?;
        let c = out
            .iter_mut()
            .find(|c| c.project == project)
            .ok_or_else(|| {
                Failure::usage(format!(
                    "--meta {item:?}: {project} is not a component of this release"
                ))
            })?;
        if c.metadata.insert(k.to_string(), v.to_string()).is_some() {
            return Err(Failure::usage(format!(
                "--meta {item:?}: {project} has key {k} twice; give each key once"
            )));
        }
    }
    Ok(out)
}
