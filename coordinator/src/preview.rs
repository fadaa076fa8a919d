//! The participants' side of a dry run: each one's read-only Preview says which
//! migration files its Prepare would run, or why it would certainly refuse. Only the
//! agent can see its artifact and its database, so the coordinator asks rather than
//! guesses; an agent that cannot be asked makes the dry run say so.

use lockstep::names::{Environment, TxId};

use crate::{
    model::Participant,
    planner::{Plan, Precondition},
    ports::{Participants, Preview},
};

/// Fills each planned change's migrations and schema versions from its participant's
/// Preview, and adds the `participants-ready` precondition.
pub async fn ask_participants(
    net: &dyn Participants,
    tx: &TxId,
    env: &Environment,
    waits_for: &[TxId],
    plan: &mut Plan,
) {
    let calls = plan
        .participants
        .iter()
        .map(|p| net.preview(&p.endpoint, p.prepare_order(tx, env)));
    let answers = futures::future::join_all(calls).await;
    // While queued, the live version will change before this runs: a "live version
    // differs" answer is expected then, not a problem.
    let queued = !waits_for.is_empty();
    let mut problems = Vec::new();
    for (p, answer) in plan.participants.iter_mut().zip(answers) {
        if let Some(problem) = apply(p, answer, queued) {
            problems.push(problem);
        }
    }
    plan.preconditions.push(participants_ready(&problems));
}

/// Puts a participant's preview into its planned change; returns the problem, if any.
fn apply(p: &mut Participant, answer: Result<Preview, String>, queued: bool) -> Option<String> {
    match answer {
        Ok(r) => {
            p.migrations = r.migrations;
            p.from_schema = r.from_schema;
            p.to_schema = r.to_schema;
            (!r.would_prepare && !queued)
                .then(|| format!("{} would refuse: {}", p.project, r.reason))
        }
        Err(e) => Some(format!("{} could not be asked: {e}", p.project)),
    }
}

fn participants_ready(problems: &[String]) -> Precondition {
    Precondition {
        name: "participants-ready",
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            "every participant previewed its part (prepare hooks and SQL errors can only show in the real run)".into()
        } else {
            problems.join("; ")
        },
    }
}
