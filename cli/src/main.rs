//! `lockstep`: the command line for CI jobs and people.
//!
//! Exit codes (PRODUCT.md): 0 committed (or the command succeeded), 1 aborted or refused
//! (a participant refused, a release rule or precondition failed, unknown id), 2 usage
//! (bad flags or a request the coordinator calls malformed), 3 coordinator unreachable
//! (or the outcome could not be learned), 4 not allowed (no or an unknown credential,
//! or a permission the caller lacks), 5 committed but not yet live everywhere, 6 still
//! queued and 7 still preparing or verifying when `--wait-timeout` ran out.

mod access;
mod args;
mod certs;
mod conformance;
mod dial;
mod environments;
mod notify;
mod observed;
mod operate;
mod render;
mod verify;
mod wait;

use std::{collections::BTreeMap, process::ExitCode};

use lockstep::pb;
use tonic::{Code, Status};

use crate::{
    args::{Args, Command, Output, ProjectCommand, ReleaseCommand, WaitArgs},
    dial::{Client, Dial},
};

/// Exit code: committed / success.
const OK: u8 = 0;
/// Exit code: aborted or refused.
const REFUSED: u8 = 1;
/// Exit code: usage error.
const USAGE: u8 = 2;
/// Exit code: coordinator unreachable.
const UNREACHABLE: u8 = 3;
/// Exit code: not allowed (UNAUTHENTICATED or PERMISSION_DENIED).
const NOT_ALLOWED: u8 = 4;
/// Exit code: COMMIT is decided but not every participant went live within
/// `--wait-timeout` (it will, on its own: phase 2 is retried until it finishes).
const NOT_LIVE_EVERYWHERE: u8 = 5;
/// Exit code: `--wait-timeout` ran out while the transaction waited in the queue.
const STILL_QUEUED: u8 = 6;
/// Exit code: `--wait-timeout` ran out before the outcome was decided (preparing or
/// verifying).
const STILL_UNDECIDED: u8 = 7;

/// `lockstep … | head` ends quietly when `head` closes the pipe, as every Unix tool
/// does: Rust ignores SIGPIPE, so without this the first write after `head` exits
/// panics ("failed printing to stdout: Broken pipe"). The default disposition ends
/// the process at that write, with nothing printed.
#[allow(unsafe_code)]
fn quiet_on_closed_pipe() {
    // SAFETY: signal() sets a process-wide disposition (safe with threads running);
    // SIG_DFL is valid for SIGPIPE and no code of ours handles that signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A failure with the exit code it maps to, and the coordinator's status when it
/// answered with one (`-o json` names it).
struct Failure {
    code: u8,
    message: String,
    status: Option<Code>,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            status: None,
        }
    }

    fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }

    /// The failure as `-o json` prints it on stdout, so a job reading stdout with `jq`
    /// learns what failed: the gRPC code's name (`NOT_FOUND`; without a status, the
    /// code the exit code stands for), the message stderr shows, and the exit code.
    fn json(&self) -> serde_json::Value {
        let code = self.status.unwrap_or(match self.code {
            USAGE => Code::InvalidArgument,
            UNREACHABLE => Code::Unavailable,
            NOT_ALLOWED => Code::PermissionDenied,
            _ => Code::FailedPrecondition,
        });
        serde_json::json!({
            "code": lockstep::status::code_name(code),
            "message": self.message,
            "exitCode": self.code,
        })
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        let code = match s.code() {
            // A request the coordinator calls malformed (or too large) is a usage error.
            Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted => USAGE,
            Code::Unauthenticated | Code::PermissionDenied => NOT_ALLOWED,
            code if lockstep::retry::is_transient(code) => UNREACHABLE,
            // A refusal the coordinator stands by.
            Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => {
                REFUSED
            }
            // INTERNAL, UNIMPLEMENTED, DATA_LOSS...: nothing says what became of the
            // call (a create may exist and commit), so the outcome is unknown.
            _ => UNREACHABLE,
        };
        Self {
            code,
            message: match unanswered(&s) {
                true => CALL_TIMED_OUT.to_string(),
                false => format!("{:?}: {}", s.code(), s.message()),
            },
            status: Some(s.code()),
        }
    }
}

/// What a call that `--call-timeout` ended says: the coordinator took it and did not
/// answer, so nothing is known of what it did.
const CALL_TIMED_OUT: &str = "the coordinator did not answer within --call-timeout (LOCKSTEP_CALL_TIMEOUT, 60s by default): it may be stalled or paused; a call that changes state may still take effect, so check before repeating it";

/// Whether `s` is tonic's own end of a call at its deadline (`grpc-timeout`), on
/// either side: CANCELLED "Timeout expired".
fn unanswered(s: &Status) -> bool {
    s.code() == Code::Cancelled && s.message() == tonic::TimeoutExpired(()).to_string()
}

type Result<T> = std::result::Result<T, Failure>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { USAGE } else { OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let telemetry = match lockstep::logging::init_traces_only("lockstep") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("lockstep: OTEL_EXPORTER_OTLP_ENDPOINT: {e}");
            return ExitCode::from(USAGE);
        }
    };
    // One span for the whole command: the root of its trace when traces are exported.
    let span = tracing::info_span!("lockstep", otel.name = %command_name());
    let json = args.output == Output::Json;
    let ran = tracing::Instrument::instrument(run(args), span).await;
    // Exported from a thread of its own: the exporter's channel runs on this runtime.
    let _ = tokio::task::spawn_blocking(move || telemetry.flush()).await;
    match ran {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("lockstep: {}", f.message);
            if json {
                // One line: `release watch -o json` prints one event per line.
                println!("{}", f.json());
            }
            ExitCode::from(f.code)
        }
    }
}

/// The arguments, with whether the environment was named on the command line.
fn parse() -> std::result::Result<Args, clap::Error> {
    use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
    let matches = Args::command().try_get_matches()?;
    let mut args = Args::from_arg_matches(&matches).map_err(|e| e.format(&mut Args::command()))?;
    args.environment_named = matches.value_source("environment") == Some(ValueSource::CommandLine);
    Ok(args)
}

/// `lockstep release create`, `lockstep live`: the subcommands asked for, without their
/// arguments (the span's name).
fn command_name() -> String {
    let command = <Args as clap::CommandFactory>::command();
    let matches = command.try_get_matches_from(std::env::args_os()).ok();
    let mut names = vec!["lockstep".to_string()];
    let mut at = matches.as_ref();
    while let Some((name, sub)) = at.and_then(|m| m.subcommand()) {
        names.push(name.to_string());
        at = Some(sub);
    }
    names.join(" ")
}

async fn run(mut args: Args) -> Result<u8> {
    let started = tokio::time::Instant::now();
    // Usage errors first (exit 2), whether or not the coordinator is up.
    if let Command::Release(ReleaseCommand::Create {
        components,
        artifacts,
        metadata,
        ..
    }) = &args.command
    {
        args::components(components, artifacts, metadata)?;
    }
    if let Command::Conformance { .. } = &args.command {
        let out = args.output;
        return conformance::run(conformance::Request::from_args(args), out).await;
    }
    if let Command::Certs(c) = &args.command {
        return certs::run(c, args.output);
    }
    input_files_readable(&args.command)?;
    if let (Command::Notify(c), true) = (&mut args.command, args.environment_named) {
        notify::filter_on(c, &args.environment)?;
    }
    let dial = Dial::new(&args.coordinator, args.credentials())?;
    let mut client = dial.connect().await?;
    let ctx = Context {
        dial,
        env: args.environment.clone(),
        out: args.output,
        started,
    };
    match args.command {
        Command::Project(c) => project(&mut client, &ctx, c).await,
        Command::Release(c) => release(&mut client, &ctx, c).await,
        Command::Live { all: true, .. } => environments::live_all(&mut client, ctx.out).await,
        Command::Env(c) => environments::run(&mut client, ctx.out, c).await,
        Command::Live {
            all: false,
            observed,
        } => live(&mut client, ctx, observed).await,
        Command::History => {
            let h = whole_history(&mut client, ctx.env).await?;
            render::history(ctx.out, &h);
            Ok(OK)
        }
        command @ (Command::Revert { .. } | Command::Rollback { .. } | Command::Promote { .. }) => {
            restore(&mut client, &ctx, command).await
        }
        command @ (Command::Resolve { .. } | Command::Retry { .. }) => {
            operate::run(&mut client, ctx.out, command).await
        }
        Command::Token(c) => access::token(&mut client, ctx.out, c).await,
        Command::Audit { since } => access::audit(&mut client, ctx.out, since).await,
        Command::Cluster(args::ClusterCommand::Status) => {
            let status = client.get_cluster(pb::GetClusterRequest {}).await?;
            Ok(render::cluster(ctx.out, &status.into_inner()))
        }
        Command::Notify(c) => notify::run(&mut client, ctx.out, c).await,
        command @ (Command::Verify(_) | Command::Approve { .. } | Command::Reject { .. }) => {
            verify::run(&mut client, ctx.out, command).await
        }
        Command::Conformance { .. } | Command::Certs(_) => {
            unreachable!("handled before connecting")
        }
    }
}

/// The files a command reads open, checked before connecting: a missing one is a usage
/// error (exit 2) naming its flag, whether or not the coordinator is up (before stop 55
/// an unreachable coordinator was reported first, exit 3).
fn input_files_readable(command: &Command) -> Result<()> {
    let (flag, path) = match command {
        Command::Env(args::EnvCommand::Apply { file, .. }) => ("-f", file),
        Command::Notify(args::NotifyCommand::Add {
            secret_file: Some(path),
            ..
        }) => ("--secret-file", path),
        _ => return Ok(()),
    };
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| Failure::usage(format!("{flag} {}: {e}", path.display())))
}

/// `revert`, `rollback` and `promote`: transactions made from an earlier state.
async fn restore(client: &mut Client, ctx: &Context, command: Command) -> Result<u8> {
    let (created, wait) = match command {
        Command::Revert {
            release,
            id,
            cascade,
            ticket,
            wait,
        } => {
            let request = pb::RevertReleaseRequest {
                release_id: release,
                id: id.unwrap_or_default(),
                environment: ctx.env.clone(),
                cascade,
                prepare_timeout: wait.timeout.map(lockstep::wire::duration),
                dry_run: wait.dry_run,
                ticket: ticket.unwrap_or_default(),
                wait: false,
            };
            (client.revert_release(request).await?.into_inner(), wait)
        }
        Command::Rollback {
            revision,
            id,
            allow_quarantined,
            ticket,
            wait,
        } => {
            let request = pb::RollbackRequest {
                revision: revision.unwrap_or(0),
                id: id.unwrap_or_default(),
                environment: ctx.env.clone(),
                prepare_timeout: wait.timeout.map(lockstep::wire::duration),
                dry_run: wait.dry_run,
                ticket: ticket.unwrap_or_default(),
                allow_quarantined,
                wait: false,
            };
            (client.rollback(request).await?.into_inner(), wait)
        }
        Command::Promote {
            from,
            to,
            checkpoint,
            release,
            id,
            force,
            ticket,
            wait,
        } => {
            let request = pb::PromoteRequest {
                from,
                to,
                checkpoint: checkpoint.unwrap_or(0),
                release: release.unwrap_or_default(),
                id: id.unwrap_or_default(),
                dry_run: wait.dry_run,
                force,
                prepare_timeout: wait.timeout.map(lockstep::wire::duration),
                ticket: ticket.unwrap_or_default(),
                wait: false,
            };
            (client.promote(request).await?.into_inner(), wait)
        }
        _ => unreachable!("only revert, rollback and promote are routed here"),
    };
    finish_create(client, ctx, created, &wait).await
}

/// What every command needs besides its own arguments.
struct Context {
    dial: Dial,
    env: String,
    out: Output,
    /// When the command started: `--wait-timeout` counts from here.
    started: tokio::time::Instant,
}

async fn project(client: &mut Client, ctx: &Context, c: ProjectCommand) -> Result<u8> {
    match c {
        ProjectCommand::Add {
            name,
            endpoint,
            requires,
            unchecked,
        } => {
            let request = pb::RegisterProjectRequest {
                name,
                environment: ctx.env.clone(),
                endpoint,
                requires,
                unchecked,
            };
            let r = client.register_project(request).await?.into_inner();
            render::project_registered(ctx.out, &r);
        }
        ProjectCommand::Set {
            name,
            endpoint,
            requires,
            no_requires,
            unchecked,
        } => {
            let names = if no_requires {
                Some(Vec::new())
            } else {
                requires
            };
            let request = pb::UpdateProjectRequest {
                name,
                environment: ctx.env.clone(),
                endpoint,
                requires: names.map(|names| pb::ProjectChildren { names }),
                unchecked,
            };
            let r = client.update_project(request).await?.into_inner();
            render::project_updated(ctx.out, &r);
        }
        ProjectCommand::Remove { name } => {
            let request = pb::RemoveProjectRequest {
                name,
                environment: ctx.env.clone(),
            };
            let r = client.remove_project(request).await?.into_inner();
            render::project_removed(ctx.out, &r);
        }
        ProjectCommand::List => {
            let request = pb::ListProjectsRequest {
                environment: ctx.env.clone(),
            };
            let r = client.list_projects(request).await?.into_inner();
            let scheme = match ctx.dial.url.starts_with("https://") {
                true => "https://",
                false => "http://",
            };
            render::projects(ctx.out, &r, scheme);
        }
    }
    Ok(OK)
}

async fn release(client: &mut Client, ctx: &Context, c: ReleaseCommand) -> Result<u8> {
    match c {
        ReleaseCommand::Create {
            id,
            components,
            artifacts,
            metadata,
            force,
            allow_quarantined,
            ticket,
            wait,
        } => {
            let request = pb::CreateReleaseRequest {
                id,
                environment: ctx.env.clone(),
                components: args::components(&components, &artifacts, &metadata)?,
                prepare_timeout: wait.timeout.map(lockstep::wire::duration),
                dry_run: wait.dry_run,
                force,
                allow_quarantined,
                ticket: ticket.unwrap_or_default(),
                // --wait follows the event stream, printing each event (also in
                // revert, rollback and promote).
                wait: false,
            };
            let created = client.create_release(request).await?.into_inner();
            finish_create(client, ctx, created, &wait).await
        }
        ReleaseCommand::Get { id } => {
            let t = client
                .get_release(pb::GetReleaseRequest { id })
                .await?
                .into_inner();
            render::transaction(ctx.out, &t);
            Ok(outcome_code(&t))
        }
        ReleaseCommand::List {
            limit,
            active,
            project,
            page_token,
        } => {
            let request = pb::ListReleasesRequest {
                environment: ctx.env.clone(),
                active_only: active,
                page_size: limit,
                page_token,
                project,
                ..Default::default()
            };
            list_releases(client, ctx, request).await
        }
        ReleaseCommand::Watch { id, from } => {
            let from = match (from, &id) {
                (Some(from), _) => from,
                (None, Some(_)) => 1,
                (None, None) => next_event(client, ctx).await?,
            };
            wait::watch(&ctx.dial, ctx.out, id.unwrap_or_default(), from).await?;
            Ok(OK)
        }
        ReleaseCommand::Abort { id, reason } => {
            let request = pb::AbortReleaseRequest { id, reason };
            let t = client.abort_release(request).await?.into_inner();
            render::transaction(ctx.out, &t);
            Ok(OK)
        }
    }
}

/// One page of releases, with the next page's token on stderr under a table.
async fn list_releases(
    client: &mut Client,
    ctx: &Context,
    request: pb::ListReleasesRequest,
) -> Result<u8> {
    let r = client.list_releases(request).await?.into_inner();
    render::transactions(ctx.out, &r);
    if ctx.out == Output::Table && !r.next_page_token.is_empty() {
        eprintln!("more: --page-token {}", r.next_page_token);
    }
    Ok(OK)
}

/// Every checkpoint of `environment`, page after page, as one response.
async fn whole_history(client: &mut Client, environment: String) -> Result<pb::GetHistoryResponse> {
    let mut all = pb::GetHistoryResponse::default();
    loop {
        let request = pb::GetHistoryRequest {
            environment: environment.clone(),
            page_token: all.next_page_token.clone(),
            ..Default::default()
        };
        let page = client.get_history(request).await?.into_inner();
        all.checkpoints.extend(page.checkpoints);
        all.next_page_token = page.next_page_token;
        if all.next_page_token.is_empty() {
            return Ok(all);
        }
    }
}

/// The sequence number the next event will have: where `release watch` starts to
/// follow from now on.
/// Any environment the caller may read tells it: a caller scoped to `dev` may follow
/// the whole log (what it may read of it) without naming `-e dev`.
async fn next_event(client: &mut Client, ctx: &Context) -> Result<u64> {
    let live = |client: &mut Client, environment: String| {
        let request = pb::GetLiveStateRequest {
            environment,
            observe: false,
        };
        let mut client = client.clone();
        async move { client.get_live_state(request).await }
    };
    let refused = match live(client, ctx.env.clone()).await {
        Ok(l) => return Ok(l.into_inner().last_event_seq + 1),
        Err(s) if matches!(s.code(), Code::PermissionDenied | Code::NotFound) => s,
        Err(s) => return Err(s.into()),
    };
    let listed = client
        .list_environments(pb::ListEnvironmentsRequest {})
        .await?;
    let Some(readable) = listed.into_inner().environments.into_iter().next() else {
        return Err(refused.into());
    };
    Ok(live(client, readable.name)
        .await?
        .into_inner()
        .last_event_seq
        + 1)
}

/// Shows what a create call returned and, with --wait, follows it to its outcome or
/// until `--wait-timeout` from the start of the command.
async fn finish_create(
    client: &mut Client,
    ctx: &Context,
    created: pb::CreateTransactionResponse,
    wait: &WaitArgs,
) -> Result<u8> {
    let out = ctx.out;
    let plan = created.plan.clone().unwrap_or_default();
    let Some(tx) = created.transaction.clone() else {
        render::plan(out, &plan, "dry run");
        return Ok(if plan.allowed { OK } else { REFUSED });
    };
    if !wait.wait {
        render::accepted(out, &created);
        // An existing transaction of that id may have ended aborted.
        return Ok(outcome_code(&tx));
    }
    if out == Output::Table {
        render::accepted_brief(&created);
    }
    let (from, deadline) = (created.first_event_seq, ctx.started + wait.wait_timeout);
    let final_tx = wait::until_settled(client, &ctx.dial, out, &tx, from, deadline).await?;
    render::transaction(out, &final_tx);
    Ok(settled_code(&final_tx))
}

/// `lockstep live [--observed]`: the checkpoint, what is in flight, and (in table
/// mode) what agents run and the drift found.
async fn live(client: &mut Client, ctx: Context, observed: bool) -> Result<u8> {
    let request = pb::GetLiveStateRequest {
        environment: ctx.env,
        observe: observed,
    };
    let live = client.get_live_state(request).await?.into_inner();
    render::live(ctx.out, &live);
    if ctx.out == Output::Table {
        observed::observed(&live.observed);
        observed::drift(&live.drift);
    }
    Ok(OK)
}

/// The exit code of `--wait`, saying on stderr (in every output mode) where the
/// transaction stands when its outcome is not yet all done.
fn settled_code(t: &pb::Transaction) -> u8 {
    let (code, note) = match pb::TransactionState::try_from(t.state) {
        Ok(pb::TransactionState::Aborting) => (
            REFUSED,
            format!(
                "{} is aborted ({}); not yet restored on {}",
                t.id,
                t.reason,
                unacknowledged(t)
            ),
        ),
        Ok(pb::TransactionState::Committing) => (
            NOT_LIVE_EVERYWHERE,
            format!(
                "{} is committed but not yet live on {}{}",
                t.id,
                unacknowledged(t),
                // Learned from the event log when the coordinator stopped answering.
                if t.reason.contains("stopped answering") {
                    format!(" ({})", t.reason)
                } else {
                    String::new()
                }
            ),
        ),
        Ok(pb::TransactionState::Pending) => (
            STILL_QUEUED,
            format!(
                "{} is still queued ({}) after --wait-timeout",
                t.id, t.reason
            ),
        ),
        Ok(pb::TransactionState::Preparing) => (
            STILL_UNDECIDED,
            format!(
                "{} is still preparing ({}) after --wait-timeout",
                t.id, t.reason
            ),
        ),
        Ok(pb::TransactionState::Verifying) => (
            STILL_UNDECIDED,
            format!(
                "{} is still verifying ({}) after --wait-timeout",
                t.id, t.reason
            ),
        ),
        Ok(pb::TransactionState::Committed) => return OK,
        Ok(pb::TransactionState::Aborted) => {
            // Said on stderr too, where `-o json` users read notes.
            eprintln!("{} is aborted: {}", t.id, t.reason);
            return REFUSED;
        }
        // A state this CLI does not know (a newer coordinator's): not a success.
        _ => (
            UNREACHABLE,
            format!(
                "{} is in a state this lockstep does not know ({}); its outcome is unknown here: check with `lockstep release get {}`",
                t.id, t.state, t.id
            ),
        ),
    };
    eprintln!(
        "{note}; it goes on on its own (follow it with `lockstep release watch {}`)",
        t.id
    );
    for hint in undelivered(t) {
        eprintln!("{hint}");
    }
    code
}

/// For each participant whose decision could not be delivered: the last error, and
/// what ends the wait when it will not get through by itself (a wrong address, an
/// agent gone for good).
fn undelivered(t: &pb::Transaction) -> Vec<String> {
    let stuck = t
        .participants
        .iter()
        .filter(|p| !p.acknowledged && !p.delivery_error.is_empty());
    let outcome = match t.state == pb::TransactionState::Committing as i32 {
        true => "committed",
        false => "aborted",
    };
    stuck
        .map(|p| {
            format!(
                "  {}: {}; if its address is wrong, `lockstep -e {} project set {} --endpoint URL` (deliveries follow it); if it is gone, `lockstep resolve {} --participant {} --as {outcome} --reason WHY` records what you checked happened there",
                p.project, p.delivery_error, t.environment, p.project, t.id, p.project
            )
        })
        .collect()
}

/// The participants of `t` that have not acknowledged its decision.
fn unacknowledged(t: &pb::Transaction) -> String {
    let who: Vec<&str> = t
        .participants
        .iter()
        .filter(|p| !p.acknowledged)
        .map(|p| p.project.as_str())
        .collect();
    who.join(", ")
}

/// 1 when aborted (or aborting: ABORT is decided), else 0 (committed, or anything
/// still in progress).
fn outcome_code(t: &pb::Transaction) -> u8 {
    let aborted = [
        pb::TransactionState::Aborted,
        pb::TransactionState::Aborting,
    ];
    match aborted.iter().any(|s| t.state == *s as i32) {
        true => REFUSED,
        false => OK,
    }
}

/// Parses `KEY=VALUE` pairs keyed by the part before `=`.
fn pairs(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            return Err(Failure::usage(format!(
                "{flag} {item:?}: expected PROJECT=VALUE"
            )));
        };
        // An unset variable (`--artifact A=$BUILD`) is a mistake, not "none".
        if k.is_empty() || v.is_empty() {
            return Err(Failure::usage(format!(
                "{flag} {item:?}: the project and the value must not be empty"
            )));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(Failure::usage(format!("{flag}: {k} is given twice")));
        }
    }
    Ok(out)
}
