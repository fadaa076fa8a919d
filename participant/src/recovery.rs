//! After a restart, a participant finishes every transaction it had voted PREPARED for
//! by asking the coordinator for the decision (PRODUCT.md: after its own restart it asks
//! GetDecision). It keeps asking, with capped backoff, until the answer is COMMIT or
//! ABORT; meanwhile the staged version stays staged. A Commit or Abort that the
//! coordinator sends in the meantime is handled as usual: both paths are idempotent.

use std::time::Duration;

use lockstep::pb::{self, coordinator_client::CoordinatorClient};
use tonic::transport::Channel;

use crate::{deployer::Deployer, participant::Participant};

/// Resolves every prepared transaction in the background. Returns at once.
pub fn resolve_prepared<D: Deployer>(
    participant: Participant<D>,
    coordinator: Channel,
    prepared: Vec<String>,
) {
    for tx in prepared {
        let participant = participant.clone();
        let client = CoordinatorClient::new(coordinator.clone());
        tokio::spawn(resolve_one(participant, client, tx));
    }
}

async fn resolve_one<D: Deployer>(
    participant: Participant<D>,
    mut client: CoordinatorClient<Channel>,
    tx: String,
) {
    let mut delay = Duration::from_millis(100);
    loop {
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
                        .abort(&tx, "", "coordinator decided ABORT (asked after restart)")
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
                tracing::info!(%tx, "recovered after restart: {what} by the coordinator's decision");
                return;
            }
            Some(Err(e)) => tracing::warn!(%tx, "applying the decision failed, retrying: {e}"),
            None => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
