//! Read-only reports: GetStatus (what is live and staged here) and Preview (what a
//! Prepare would do, for dry runs). Their wire forms are the reports themselves, so
//! they are built here directly.

use lockstep::{
    orders::{PrepareOrder, VoteAnswer},
    pb,
};

use super::{Participant, ParticipantError, answer_again, change_of};
use crate::{
    deployer::Deployer,
    ledger::{Entry, Phase},
    schema::Schema,
};

impl<D: Deployer> Participant<D> {
    /// What is live and staged here.
    pub async fn status(&self) -> Result<pb::ParticipantStatus, ParticipantError> {
        let live = self.live().await?;
        let mut staged = Vec::new();
        for id in self.open() {
            let entry = self.inner.ledger.get(&id)?;
            if let Some(e) = entry.filter(|e| e.phase == Phase::Prepared) {
                staged.push(staged_transaction(id, &e));
            }
        }
        let schema = match &self.inner.schema {
            Some(s) => Some(s.live().await?.message()),
            None => None,
        };
        Ok(pb::ParticipantStatus {
            project: self.inner.project.clone(),
            environment: self.inner.environment.clone(),
            live_version: live,
            staged,
            schema,
        })
    }

    /// What Prepare would do, without staging anything: the migration files it would
    /// run, or why it would certainly refuse (for dry runs).
    pub async fn preview(
        &self,
        order: PrepareOrder,
    ) -> Result<pb::PreviewResponse, ParticipantError> {
        if let Some(refusal) = self.misaddressed(&order) {
            return Ok(refuse(refusal));
        }
        if let Some(entry) = self.inner.ledger.get(order.tx.as_str())? {
            return Ok(preview_again(&entry));
        }
        // Not the "busy" rule: a real run would queue behind the other transaction.
        if let Some(refusal) = self.drift_refusal(&order).await? {
            return Ok(refuse(refusal));
        }
        match &self.inner.schema {
            None => Ok(pb::PreviewResponse {
                would_prepare: true,
                ..Default::default()
            }),
            Some(schema) => self.preview_schema(schema, &order).await,
        }
    }

    /// The migrations the change's version ships, planned against the live schema.
    async fn preview_schema(
        &self,
        schema: &Schema,
        order: &PrepareOrder,
    ) -> Result<pb::PreviewResponse, ParticipantError> {
        let change = change_of(order);
        let shipped = match self.inner.deployer.shipped_migrations(&change).await {
            Ok(Some(files)) => match schema.parse(files) {
                Ok(m) => Some(m),
                Err(e) => return Ok(refuse(e)),
            },
            Ok(None) => None,
            Err(refusal) => return Ok(refuse(refusal.0)),
        };
        Ok(match schema.plan(shipped, change.moving_back).await {
            Ok(Some(plan)) => pb::PreviewResponse {
                would_prepare: true,
                reason: String::new(),
                from_schema: Some(plan.from.message()),
                to_schema: Some(plan.to.message()),
                migrations: plan.files(),
            },
            Ok(None) => {
                let live = schema.live().await?.message();
                pb::PreviewResponse {
                    would_prepare: true,
                    from_schema: Some(live.clone()),
                    to_schema: Some(live),
                    ..Default::default()
                }
            }
            Err(refusal) => refuse(refusal.0),
        })
    }
}

fn staged_transaction(id: String, e: &Entry) -> pb::StagedTransaction {
    let change = e.change.as_ref();
    pb::StagedTransaction {
        transaction_id: id,
        version: change.map(|c| c.version.clone()).unwrap_or_default(),
        from_version: change.map(|c| c.from_version.clone()).unwrap_or_default(),
        schema: e.schema.as_ref().map(|s| s.to.message()),
    }
}

/// A transaction this participant has seen: the preview is its earlier answer.
fn preview_again(entry: &Entry) -> pb::PreviewResponse {
    let again = pb::PrepareResponse::from(&answer_again(entry));
    pb::PreviewResponse {
        would_prepare: matches!(answer_again(entry), VoteAnswer::Prepared(_)),
        reason: again.reason,
        from_schema: again.from_schema,
        to_schema: again.to_schema,
        migrations: again.migrations,
    }
}

fn refuse(reason: String) -> pb::PreviewResponse {
    pb::PreviewResponse {
        would_prepare: false,
        reason,
        ..Default::default()
    }
}
