//! The names events go by outside the log: in `--events` filters and in the CloudEvent
//! `type` (`dev.lockstep.<name>`), and which of them are failures that the release
//! driver must hear of (the ones routed to tickets, projects or environments).
//!
//! A kind added to the log slots in with one line here: its name, and whether it is a
//! failure.

use lockstep::pb::{self, EventKind};

/// Every named kind, in the proto's order.
const NAMES: &[(EventKind, &str)] = &[
    (EventKind::ProjectRegistered, "project.registered"),
    (EventKind::TransactionCreated, "transaction.created"),
    (EventKind::TransactionQueued, "transaction.queued"),
    (EventKind::PrepareStarted, "prepare.started"),
    (EventKind::VoteReceived, "vote.received"),
    (EventKind::DecidedCommit, "decision.commit"),
    (EventKind::DecidedAbort, "decision.abort"),
    (EventKind::Acknowledged, "participant.acknowledged"),
    (EventKind::TransactionCommitted, "transaction.committed"),
    (EventKind::TransactionAborted, "transaction.aborted"),
    (EventKind::CheckpointRecorded, "checkpoint.recorded"),
    (EventKind::DeliveryRetry, "delivery.retry"),
    (EventKind::Recovered, "transaction.recovered"),
    (EventKind::NeedsResolution, "needs-resolution"),
    (EventKind::Resolved, "participant.resolved"),
    (EventKind::RetryRequested, "retry.requested"),
    (EventKind::AccessDenied, "access.denied"),
    (EventKind::TokenCreated, "token.created"),
    (EventKind::TokenRevoked, "token.revoked"),
    (EventKind::Stalled, "stalled"),
    (EventKind::SubscriptionAdded, "subscription.added"),
    (EventKind::SubscriptionRemoved, "subscription.removed"),
    (EventKind::SubscriptionDisabled, "subscription.disabled"),
    (EventKind::EnvironmentAdded, "environment.added"),
    (EventKind::PipelineApplied, "pipeline.applied"),
    (EventKind::VerifyStarted, "verify.started"),
    (EventKind::VerifyStepTriggered, "verify.triggered"),
    (EventKind::VerifyStepStarted, "verify.step.started"),
    (EventKind::VerifyStepFinished, "verify.finished"),
    (EventKind::PromotionCreated, "promotion.created"),
    (EventKind::LiveVerifyPassed, "verify.live.passed"),
    (EventKind::LiveVerifyFailed, "verify.live.failed"),
    (EventKind::PromotionRefused, "promotion.refused"),
    (EventKind::ProjectRemoved, "project.removed"),
    (EventKind::DriftDetected, "drift.detected"),
    (EventKind::DriftCleared, "drift.cleared"),
];

/// The prefix of every CloudEvent type Lockstep sends.
pub const TYPE_PREFIX: &str = "dev.lockstep.";

/// The name of an event's kind (`unknown` for a kind this build does not know).
pub fn name(kind: i32) -> &'static str {
    let known = NAMES.iter().find(|(k, _)| *k as i32 == kind);
    known.map_or("unknown", |(_, n)| n)
}

/// The kind a filter name stands for; `Err` lists the names.
pub fn parse(name: &str) -> Result<EventKind, String> {
    match NAMES.iter().find(|(_, n)| *n == name) {
        Some((kind, _)) => Ok(*kind),
        None => Err(format!("{name:?} is no event name (one of: {})", all())),
    }
}

fn all() -> String {
    NAMES.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
}

/// Whether `e` is the audit log's own (a refusal naming who holds what, a token made
/// or revoked): readable only by whoever may read that log (ListAudit: `operate` over
/// everything), over a stream or a webhook alike.
pub fn is_audit_only(e: &pb::Event) -> bool {
    use EventKind::{AccessDenied, TokenCreated, TokenRevoked};
    matches!(e.kind(), AccessDenied | TokenCreated | TokenRevoked)
}

/// Whether the release driver must hear of `e` as something that went wrong: a vote
/// against, an abort, a participant that needs a person, a transaction that stalled, a
/// live check that failed, an auto-promotion refused, a host found drifting.
pub fn is_failure(e: &pb::Event) -> bool {
    match EventKind::try_from(e.kind) {
        Ok(EventKind::VoteReceived) => e.vote != pb::Vote::Prepared as i32,
        Ok(kind) => matches!(
            kind,
            EventKind::DecidedAbort
                | EventKind::TransactionAborted
                | EventKind::NeedsResolution
                | EventKind::Stalled
                | EventKind::LiveVerifyFailed
                | EventKind::PromotionRefused
                | EventKind::DriftDetected
        ),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_but_unspecified_has_a_name_that_parses_back() {
        for kind in (1..).take_while(|k| EventKind::try_from(*k).is_ok()) {
            let name = name(kind);
            assert_ne!(name, "unknown", "kind {kind} has no name");
            assert_eq!(parse(name).map(|k| k as i32), Ok(kind));
        }
        assert!(
            parse("transaction.exploded")
                .unwrap_err()
                .contains("stalled")
        );
    }
}
