//! What operators do to a transaction stuck in phase 2: `resolve` a participant by hand
//! and `retry` every delivery now.

use lockstep::pb;

use crate::{
    OK, Result,
    args::{Command, Outcome, Output},
    dial::Client,
    render,
};

/// Runs `lockstep resolve` or `lockstep retry`.
pub async fn run(client: &mut Client, out: Output, command: Command) -> Result<u8> {
    match command {
        Command::Resolve {
            id,
            participant,
            outcome,
            reason,
            dry_run,
            actor,
        } => {
            let request = pb::ResolveParticipantRequest {
                transaction_id: id,
                project: participant,
                r#as: resolution(outcome) as i32,
                reason,
                actor: actor.name(),
                dry_run,
            };
            let r = client.resolve_participant(request).await?.into_inner();
            render::resolved(out, &r);
            Ok(OK)
        }
        Command::Retry { id, actor } => {
            let request = pb::RetryDeliveryRequest {
                transaction_id: id,
                actor: actor.name(),
            };
            let t = client.retry_delivery(request).await?.into_inner();
            render::transaction(out, &t);
            Ok(OK)
        }
        _ => unreachable!("only resolve and retry are routed here"),
    }
}

fn resolution(outcome: Outcome) -> pb::Resolution {
    match outcome {
        Outcome::Committed => pb::Resolution::Committed,
        Outcome::Aborted => pb::Resolution::Aborted,
    }
}
