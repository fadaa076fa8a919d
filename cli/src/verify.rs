//! What test runners and people say about a transaction in VERIFYING: `verify report`
//! on an external step, `approve` an approval step, `reject` whatever step it is on.
//! Each answers with the transaction as it stands once what it changed is durable.

use lockstep::pb;

use crate::{
    OK, Result,
    args::{ActorArg, Command, Output, StepOutcome, VerifyCommand},
    dial::Client,
    render,
};

/// Runs `lockstep verify report`, `approve` or `reject`.
pub async fn run(client: &mut Client, out: Output, command: Command) -> Result<u8> {
    let t = match command {
        Command::Verify(VerifyCommand::Report {
            id,
            step,
            outcome,
            reason,
            link,
            actor,
        }) => {
            let request = pb::ReportVerifyRequest {
                transaction_id: id,
                step,
                outcome: wire(&outcome) as i32,
                reason,
                link,
                actor: actor.name(),
            };
            client.report_verify(request).await?.into_inner()
        }
        Command::Approve { id, reason, actor } => client
            .approve(approval(id, reason, &actor))
            .await?
            .into_inner(),
        Command::Reject { id, reason, actor } => client
            .reject(approval(id, reason, &actor))
            .await?
            .into_inner(),
        _ => unreachable!("only verify, approve and reject are routed here"),
    };
    render::transaction(out, &t);
    Ok(OK)
}

fn approval(id: String, reason: String, actor: &ActorArg) -> pb::ApprovalRequest {
    pb::ApprovalRequest {
        transaction_id: id,
        reason,
        actor: actor.name(),
    }
}

fn wire(o: &StepOutcome) -> pb::VerifyOutcome {
    match (o.started, o.passed) {
        (true, _) => pb::VerifyOutcome::Started,
        (_, true) => pb::VerifyOutcome::Passed,
        _ => pb::VerifyOutcome::Failed,
    }
}
