//! The verification calls: a test runner's report on an external step (`release` over
//! the transaction's projects in `access::table`: what CI runners hold); approving and
//! rejecting (`operate`: people who steer releases). Who made the call is the principal; the
//! request's `actor` counts only when callers are not authenticated.

use lockstep::{limits::MAX_TEXT_LEN, names::TxId, pb};
use tonic::{Request, Response, Status};

use super::CoordinatorService;
use crate::{
    convert,
    driver::VerifyCall,
    txn::verify::{Outcome, Report},
};

impl CoordinatorService {
    pub(super) async fn report(
        &self,
        request: Request<pb::ReportVerifyRequest>,
    ) -> Result<Response<pb::Transaction>, Status> {
        let r = request.get_ref();
        let id = TxId::parse("transaction_id", &r.transaction_id)?;
        let outcome = outcome(r.outcome)?;
        if r.step.is_empty() {
            return Err(Status::invalid_argument("step: required (the step's name)"));
        }
        convert::text("step", &r.step, MAX_TEXT_LEN)?;
        convert::text("link", &r.link, MAX_TEXT_LEN)?;
        let (who, _) = self.allow_on(&request, "ReportVerify", &id).await?;
        let report = report(&who, &r.actor, &r.reason, &r.link)?;
        let step = r.step.clone();
        self.answer_verify(
            &id,
            VerifyCall::Report {
                step,
                outcome,
                report,
            },
        )
        .await
    }

    pub(super) async fn decide_approval(
        &self,
        request: Request<pb::ApprovalRequest>,
        approve: bool,
    ) -> Result<Response<pb::Transaction>, Status> {
        let r = request.get_ref();
        let id = TxId::parse("transaction_id", &r.transaction_id)?;
        let call = if approve { "Approve" } else { "Reject" };
        let (who, _) = self.allow_on(&request, call, &id).await?;
        let report = report(&who, &r.actor, &r.reason, "")?;
        let call = if approve {
            VerifyCall::Approve(report)
        } else {
            VerifyCall::Reject(report)
        };
        self.answer_verify(&id, call).await
    }

    async fn answer_verify(
        &self,
        id: &TxId,
        call: VerifyCall,
    ) -> Result<Response<pb::Transaction>, Status> {
        let record = self.coordinator.verify(id, call).await?;
        Ok(Response::new(convert::transaction(&record)))
    }
}

fn outcome(value: i32) -> Result<Outcome, Status> {
    match pb::VerifyOutcome::try_from(value) {
        Ok(pb::VerifyOutcome::Started) => Ok(Outcome::Started),
        Ok(pb::VerifyOutcome::Passed) => Ok(Outcome::Passed),
        Ok(pb::VerifyOutcome::Failed) => Ok(Outcome::Failed),
        _ => Err(Status::invalid_argument(
            "outcome: required (VERIFY_OUTCOME_STARTED, _PASSED or _FAILED)",
        )),
    }
}

fn report(
    who: &crate::access::Principal,
    actor: &str,
    reason: &str,
    link: &str,
) -> Result<Report, Status> {
    convert::text("reason", reason, MAX_TEXT_LEN)?;
    let given = if actor.is_empty() {
        String::new()
    } else {
        convert::actor(actor)?
    };
    Ok(Report {
        actor: who.actor_or(&given),
        reason: reason.to_string(),
        link: link.to_string(),
    })
}
