//! The participants' side of a dry run: each one's read-only Preview says which
//! migration files its Prepare would run, or why it would certainly refuse. Only the
//! agent can see its artifact and its database, so the coordinator asks rather than
//! guesses; an agent that cannot be asked makes the dry run say so.

use std::time::Duration;

use lockstep::{names::Environment, names::TxId, pb};

use crate::{
    convert,
    coordinator::Coordinator,
    model::Schema,
    planner::{Plan, Precondition},
};

/// How long a dry run waits for each participant's preview.
const PREVIEW_TIMEOUT: Duration = Duration::from_secs(3);

/// Fills each planned change's migrations and schema versions from its participant's
/// Preview, and adds the `participants-ready` precondition.
pub async fn ask_participants(
    c: &Coordinator,
    tx: &str,
    env: &Environment,
    waits_for: &[TxId],
    plan: &mut Plan,
) {
    let calls = plan.participants.iter().map(|p| {
        let request = pb::PrepareRequest {
            transaction_id: tx.to_string(),
            environment: env.to_string(),
            project: p.project.to_string(),
            version: p.to_version.to_string(),
            from_version: p
                .from_version
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default(),
            artifact: p.artifact.clone(),
            metadata: p.metadata.clone().into_iter().collect(),
            action: convert::action(p.action) as i32,
        };
        let client = c.net().client(&p.endpoint);
        async move {
            let mut client = client?;
            match tokio::time::timeout(PREVIEW_TIMEOUT, client.preview(request)).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(status)) => Err(status.message().to_string()),
                Err(_) => Err(format!("no answer within {PREVIEW_TIMEOUT:?}")),
            }
        }
    });
    let answers = futures::future::join_all(calls).await;
    let mut problems = Vec::new();
    let queued = !waits_for.is_empty();
    for (p, answer) in plan.participants.iter_mut().zip(answers) {
        match answer {
            Ok(r) => {
                p.migrations = r.migrations;
                p.from_schema = r.from_schema.map(schema);
                p.to_schema = r.to_schema.map(schema);
                // While queued, the live version will change before this runs: a
                // "live version differs" answer is expected then, not a problem.
                if !r.would_prepare && !queued {
                    problems.push(format!("{} would refuse: {}", p.project, r.reason));
                }
            }
            Err(e) => problems.push(format!("{} could not be asked: {e}", p.project)),
        }
    }
    plan.preconditions.push(Precondition {
        name: "participants-ready",
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            "every participant previewed its part (prepare hooks and SQL errors can only show in the real run)".into()
        } else {
            problems.join("; ")
        },
    });
}

fn schema(s: pb::SchemaVersion) -> Schema {
    Schema {
        version: s.version,
        name: s.name,
    }
}
