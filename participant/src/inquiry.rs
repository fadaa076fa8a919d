//! Asking the coordinator for a decision (GetDecision). A participant that voted
//! PREPARED never decides alone; it asks:
//! - after its own restart, at once, for every transaction it holds PREPARED;
//! - while a PREPARED vote waits longer than [`DecisionSource::ask_after`] for Commit or
//!   Abort, because the coordinator may have lost an undecided transaction in a crash
//!   (presumed abort: it then answers ABORT) and will never send anything for it.
//!
//! It keeps asking with capped backoff until the answer is COMMIT or ABORT, and stops as
//! soon as the transaction is decided here by any path: Commit and Abort are idempotent.

use std::time::Duration;

use lockstep::pb::{self, coordinator_client::CoordinatorClient};
use tonic::transport::Channel;

use crate::{deployer::Deployer, participant::Participant};

/// Where and when to ask for decisions.
#[derive(Clone)]
pub struct DecisionSource {
    /// The coordinator (connected lazily).
    pub coordinator: Channel,
    /// How long a PREPARED vote waits for Commit or Abort before asking.
    pub ask_after: Duration,
}

/// After a restart: resolves every prepared transaction in the background, asking at
/// once. Returns immediately.
pub fn resolve_prepared<D: Deployer>(participant: &Participant<D>, prepared: Vec<String>) {
    for tx in prepared {
        watch(participant, tx, Duration::ZERO);
    }
}

/// Asks for `tx`'s decision after `first_delay`, and again until it is decided here.
pub fn watch<D: Deployer>(participant: &Participant<D>, tx: String, first_delay: Duration) {
    let Some(source) = participant.decision_source().cloned() else {
        return;
    };
    let participant = participant.clone();
    tokio::spawn(async move {
        tokio::time::sleep(first_delay).await;
        resolve(participant, CoordinatorClient::new(source.coordinator), tx).await;
    });
}

async fn resolve<D: Deployer>(
    participant: Participant<D>,
    mut client: CoordinatorClient<Channel>,
    tx: String,
) {
    let mut delay = Duration::from_millis(100);
    while participant.is_prepared(&tx) {
        let request = pb::GetDecisionRequest {
            transaction_id: tx.clone(),
            project: participant.project().to_string(),
        };
        let outcome = match client.get_decision(request).await {
            Ok(r) => match pb::Decision::try_from(r.into_inner().decision) {
                Ok(pb::Decision::Commit) => {
                    Some(participant.commit(&tx, "").await.map(|_| "committed"))
                }
                Ok(pb::Decision::Abort) => Some(
                    participant
                        .abort(
                            &tx,
                            "",
                            "the coordinator decided ABORT (asked with GetDecision)",
                        )
                        .await
                        .map(|_| "aborted"),
                ),
                _ => None,
            },
            Err(status) => {
                tracing::warn!(%tx, "asking the coordinator for the decision: {}", status.message());
                None
            }
        };
        match outcome {
            Some(Ok(what)) => {
                tracing::info!(%tx, "{what} by the coordinator's decision (asked with GetDecision)");
                return;
            }
            Some(Err(e)) => tracing::warn!(%tx, "applying the decision failed, retrying: {e}"),
            None => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
