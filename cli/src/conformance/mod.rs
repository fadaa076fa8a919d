//! `lockstep conformance`: plays the coordinator against a running agent and checks the
//! rules of `proto/lockstep/v1/participant.proto` one by one, so an agent written in any
//! language can be checked before it joins a release. It serves GetDecision itself
//! (`--serve`), for the check of an agent restarted with a PREPARED vote.
//!
//! The agent should be a test instance: the checks stage and commit versions named
//! `<run>-v<N>` on it.
//!
//! # Layout
//! - `checks`: the checks, in the order they run (later ones build on earlier state).
//! - `decisions`: the kit's GetDecision server.

mod checks;
mod decisions;

use std::net::SocketAddr;

use serde::Serialize;

use crate::{Failure, OK, REFUSED, Result, args::Output};

/// What `lockstep conformance` was asked.
pub struct Request {
    /// The agent's URL.
    pub agent: String,
    /// The project it serves.
    pub project: String,
    /// The environment it serves.
    pub environment: String,
    /// A command that restarts the agent and returns once it listens again.
    pub restart_cmd: Option<String>,
    /// Where the kit serves GetDecision (the agent's `--coordinator` must point here).
    pub serve: SocketAddr,
    /// Whether a skipped check may pass the run.
    pub allow_skip: bool,
    /// How long one call may go unanswered before the agent is taken to have stopped
    /// answering (the run ends there; before stop 55 a hung agent hung the kit).
    pub call_timeout: std::time::Duration,
}

impl Request {
    /// The request `lockstep conformance` was given.
    pub fn from_args(args: crate::args::Args) -> Self {
        let crate::args::Command::Conformance {
            agent,
            project,
            restart_cmd,
            serve,
            allow_skip,
        } = args.command
        else {
            unreachable!("only conformance is routed here");
        };
        Request {
            agent,
            project,
            environment: args.environment,
            restart_cmd,
            serve,
            allow_skip,
            call_timeout: args.call_timeout,
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    /// What was checked.
    pub name: &'static str,
    /// `pass`, `fail` or `skip`.
    pub outcome: &'static str,
    /// Why it failed or was skipped (empty when it passed).
    pub reason: String,
}

/// The report `-o json` prints.
#[derive(Serialize)]
struct Report {
    agent: String,
    project: String,
    passed: bool,
    checks: Vec<Checked>,
}

/// Runs every check against the agent; exit 0 only when none failed and none was
/// skipped (unless skips are allowed): a run without `--restart-cmd` leaves durability
/// unchecked, and must not read as a pass by accident (before stop 54 it did).
pub async fn run(request: Request, out: Output) -> Result<u8> {
    let decisions = decisions::serve(request.serve)
        .await
        .map_err(|e| Failure::new(crate::USAGE, format!("--serve {}: {e}", request.serve)))?;
    let agent = connect(&request.agent, request.call_timeout).await?;
    let mut kit = checks::Kit::new(agent, &request, decisions);
    let results = kit.run_all().await;
    let counted = |c: &&Checked| c.outcome == "pass" || (c.outcome == "skip" && request.allow_skip);
    let passed = results.iter().all(|c| counted(&c));
    print(out, &request, &results, passed);
    Ok(if passed { OK } else { REFUSED })
}

async fn connect(url: &str, call_timeout: std::time::Duration) -> Result<checks::Agent> {
    let endpoint = lockstep::edge::agent_endpoint(url)
        .map_err(|e| Failure::usage(format!("--agent {url:?} is not a URL: {e}")))?
        .timeout(call_timeout);
    let channel = endpoint.connect().await.map_err(|e| {
        Failure::new(
            crate::UNREACHABLE,
            format!("cannot reach the agent at {url}: {e}"),
        )
    })?;
    Ok(checks::Agent::new(channel))
}

fn print(out: Output, request: &Request, results: &[Checked], passed: bool) {
    if out == Output::Json {
        let report = Report {
            agent: request.agent.clone(),
            project: request.project.clone(),
            passed,
            checks: results.to_vec(),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        );
        return;
    }
    for c in results {
        let reason = if c.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", c.reason)
        };
        println!("{:<4}  {}{reason}", c.outcome.to_uppercase(), c.name);
    }
    let count = |outcome: &str| results.iter().filter(|c| c.outcome == outcome).count();
    let (failed, skipped) = (count("fail"), count("skip"));
    let mut summary = format!("{} of {} checks passed", count("pass"), results.len());
    if failed > 0 {
        summary.push_str(&format!(", {failed} failed"));
    }
    if skipped > 0 && !request.allow_skip {
        summary.push_str(&format!(
            ", {skipped} skipped (a skip fails the run without --allow-skip)"
        ));
    } else if skipped > 0 {
        summary.push_str(&format!(", {skipped} skipped"));
    }
    println!("{summary}");
}
