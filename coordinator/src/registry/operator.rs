//! What operators ask of a transaction in flight, each handed to its driver as a
//! [`Command`]: AbortRelease (undecided only), ResolveParticipant (a person records
//! what a participant the protocol cannot finish with did) and RetryDelivery (end the
//! backoff waits now).

use std::time::Duration;

use lockstep::names::{ProjectName, TxId};
use tokio::sync::oneshot;

use super::{Registry, reads::not_found};
use crate::{
    driver::{Command, Resolved, VerifyCall},
    error::{CoordinatorError, Result},
    model::{Resolution, TxRecord, TxState},
};

/// How long AbortRelease waits for the driver to record the ABORT decision.
const ABORT_WAIT: Duration = Duration::from_secs(30);

impl Registry {
    /// Aborts a transaction that has not decided yet, and waits (briefly) until its
    /// driver has recorded the ABORT decision.
    pub async fn abort(&self, id: &TxId, reason: String, actor: String) -> Result<TxRecord> {
        let mut latest = self.inner.feed.latest();
        if let Some(answer) = self.signal_abort(id, reason, actor)? {
            return Ok(answer);
        }
        let deadline = tokio::time::Instant::now() + ABORT_WAIT;
        loop {
            let record = self.get(id)?;
            match record.state {
                TxState::Pending | TxState::Preparing | TxState::Verifying => {}
                TxState::Committing | TxState::Committed => {
                    return Err(CoordinatorError::Refused(format!(
                        "id: transaction {id} decided COMMIT before the abort arrived"
                    )));
                }
                _ => return Ok(record),
            }
            let changed = tokio::time::timeout_at(deadline, latest.changed()).await;
            if changed.is_err() {
                return Ok(record);
            }
        }
    }

    /// Asks the driver of an undecided transaction to abort. `Some`: the answer is
    /// already known (it is aborting).
    fn signal_abort(&self, id: &TxId, reason: String, actor: String) -> Result<Option<TxRecord>> {
        let s = self.state();
        let Some(active) = s.active.get(id) else {
            let record = self.existing(s, id)?.ok_or_else(|| not_found(id))?;
            return Err(CoordinatorError::Refused(format!(
                "id: transaction {id} is already {:?}; only an undecided transaction can be aborted",
                record.state
            )));
        };
        match active.record.state {
            TxState::Pending | TxState::Preparing | TxState::Verifying => {
                let _ = active.commands.send(Command::Abort { reason, actor });
                Ok(None)
            }
            TxState::Aborting => Ok(Some(active.record.clone())),
            state => Err(CoordinatorError::Refused(format!(
                "id: transaction {id} is {state:?}: COMMIT is decided and durable, it can no longer be aborted; revert it once committed"
            ))),
        }
    }

    /// Resolves `project` of `id` by hand (see [`crate::txn::Transaction::resolve`]):
    /// the driver sends the decision once more, then records `resolution` unless
    /// refused. Returns the transaction as readers see it afterwards.
    pub async fn resolve(
        &self,
        id: &TxId,
        project: ProjectName,
        resolution: Resolution,
        dry_run: bool,
    ) -> Result<(TxRecord, Resolved)> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Resolve {
            project,
            resolution,
            dry_run,
            reply,
        };
        self.command(id, command, "resolve")?;
        let resolved = answer
            .await
            .map_err(|_| CoordinatorError::ShuttingDown)?
            .map_err(CoordinatorError::Refused)?;
        Ok((self.get(id)?, resolved))
    }

    /// Ends every backoff wait of `id` now and asks again the participants that need
    /// resolution.
    pub async fn retry(&self, id: &TxId, actor: String) -> Result<TxRecord> {
        let (reply, answer) = oneshot::channel();
        self.command(id, Command::Retry { actor, reply }, "retry")?;
        answer.await.map_err(|_| CoordinatorError::ShuttingDown)?;
        self.get(id)
    }

    /// Hands a report, approval or rejection to the driver of `id` (which must be in
    /// VERIFYING) and waits until what it changed is durable. Returns the transaction
    /// as readers see it then.
    pub async fn verify(&self, id: &TxId, call: VerifyCall) -> Result<TxRecord> {
        let (reply, answer) = oneshot::channel();
        {
            let s = self.state();
            let Some(active) = s.active.get(id) else {
                let record = self.existing(s, id)?.ok_or_else(|| not_found(id))?;
                return Err(CoordinatorError::Refused(format!(
                    "id: transaction {id} is {:?}; only a transaction in VERIFYING takes reports, approvals and rejections",
                    record.state
                )));
            };
            let command = Command::Verify { call, reply };
            let sent = active.commands.send(command);
            sent.map_err(|_| CoordinatorError::ShuttingDown)?;
        }
        let answered = answer.await.map_err(|_| CoordinatorError::ShuttingDown)?;
        answered.map_err(CoordinatorError::Refused)?;
        self.get(id)
    }

    /// Hands `command` to the driver of `id`, which must be in phase 2.
    fn command(&self, id: &TxId, command: Command, what: &str) -> Result<()> {
        let s = self.state();
        let Some(active) = s.active.get(id) else {
            let record = self.existing(s, id)?.ok_or_else(|| not_found(id))?;
            return Err(CoordinatorError::Refused(format!(
                "id: transaction {id} is {:?}; there is nothing to {what}",
                record.state
            )));
        };
        if !matches!(active.record.state, TxState::Committing | TxState::Aborting) {
            return Err(CoordinatorError::Refused(format!(
                "id: transaction {id} is {:?}; only a transaction in phase 2 (COMMITTING or ABORTING) has deliveries to {what}",
                active.record.state
            )));
        }
        active
            .commands
            .send(command)
            .map_err(|_| CoordinatorError::ShuttingDown)
    }
}
