//! What follows a committed release: the environment's verification after commit (a
//! soak, then its live http steps against the live set), and then the promotions its
//! auto-promoting downstreams take. A live step that fails records the failure on the
//! transaction (so it is never promoted as verified) and, as the pipeline file says,
//! creates the revert of that transaction (id `auto-revert-<tx>`) or only notifies.
//!
//! It is outside two-phase commit: the transaction is COMMITTED and stays so; a revert
//! is a new transaction with every rule of its own. A restart during the soak starts
//! the newest such check again (soak included); a check superseded by a later
//! checkpoint is not run (that transaction stays `soaking`, and is promoted only with
//! --force). A failure is written together with the revert it owes (a `revert-due`
//! mark, cleared once the revert is created or refused), so a restart creates every
//! revert a crash cut off, however many releases committed after the failed one.

use std::time::Duration;

use lockstep::{names::TxId, pb};
use lockstep_store::Batch;

use super::Registry;
use crate::{
    error::Result,
    journal::Durable,
    model::{
        CreateSpec, LiveCheck, LiveFailure, Request, Stages, StepKind, TxKind, TxRecord, TxState,
    },
    tables::Tables,
    txn::{events, verify::render},
};

impl Registry {
    /// The stages of `record`'s environment if a verification after commit is due for
    /// it (a committed release in an environment with a soak or live steps).
    pub(super) fn live_check_due(&self, record: &TxRecord) -> Option<Stages> {
        let committed = record.state == TxState::Committed && record.kind == TxKind::Release;
        let s = self.state();
        let stages = s
            .environments
            .get(&record.environment)
            .map(|e| e.stages.clone());
        stages.filter(|st| committed && (st.soak_ms.is_some() || !st.verify_live.is_empty()))
    }

    /// After `record` finished: its live check (then the promotions), or the
    /// promotions at once.
    pub(super) fn after_commit(&self, record: &TxRecord) {
        match (&record.live_check, self.live_check_due(record)) {
            (LiveCheck::Soaking, Some(stages)) => {
                let (this, record) = (self.clone(), record.clone());
                tokio::spawn(async move { this.check_live(record, stages).await });
            }
            (LiveCheck::Soaking, None) => {
                let (this, record) = (self.clone(), record.clone());
                tokio::spawn(async move { this.no_check_due(record).await });
            }
            _ => self.auto_promote(record),
        }
    }

    /// `record` soaked (its check cut off by a restart, or just done soaking), and the
    /// pipeline applied since has no soak or live steps for its environment: no check
    /// is due any more. That is recorded (it would stay `soaking` for good, and its
    /// versions could not be promoted without --force), then it is promoted as a
    /// release without a check is.
    async fn no_check_due(&self, record: TxRecord) {
        let message = format!(
            "{} was soaking, and its environment's pipeline (applied since it committed) has no soak or live steps any more: no live check is due",
            record.id
        );
        let kind = pb::EventKind::Recovered;
        if self
            .record_check(&record, LiveCheck::None, kind, "", message)
            .await
        {
            let settled = TxRecord {
                live_check: LiveCheck::None,
                ..record
            };
            self.auto_promote(&settled);
        }
    }

    /// Soaks, then runs the live steps of the pipeline in force then (one applied
    /// during the soak counts, as a restart would read it; none due any more settles
    /// the check as not due).
    async fn check_live(&self, record: TxRecord, stages: Stages) {
        tokio::time::sleep(Duration::from_millis(stages.soak_ms.unwrap_or(0))).await;
        let Some(stages) = self.live_check_due(&record) else {
            return self.no_check_due(record).await;
        };
        match self.run_live_steps(&record, &stages).await {
            Ok(message) => {
                let kind = pb::EventKind::LiveVerifyPassed;
                if self
                    .record_check(&record, LiveCheck::Passed, kind, "", message)
                    .await
                {
                    let passed = TxRecord {
                        live_check: LiveCheck::Passed,
                        ..record
                    };
                    self.auto_promote(&passed);
                }
            }
            Err((step, why)) => self.live_failed(&record, &stages, step, why).await,
        }
    }

    /// Every live step in order; `Err` names the first that failed and why.
    async fn run_live_steps(
        &self,
        record: &TxRecord,
        stages: &Stages,
    ) -> std::result::Result<String, (String, String)> {
        for step in &stages.verify_live {
            let StepKind::Http { url, expect_status } = &step.kind else {
                continue;
            };
            let failed = |why: String| (step.name.clone(), why);
            let url = render(url, &record.participants).map_err(failed)?;
            let deadline = Duration::from_millis(step.deadline_ms);
            let request = self.inner.settings.probe.get(&url);
            let answer = tokio::time::timeout(deadline, request).await;
            match answer {
                Ok(Ok(status)) if status == *expect_status => {}
                Ok(Ok(status)) => {
                    return Err(failed(format!(
                        "GET {url} answered {status}, expected {expect_status}"
                    )));
                }
                Ok(Err(e)) => return Err(failed(format!("GET {url}: {e}"))),
                Err(_) => return Err(failed(format!("GET {url}: no answer within {deadline:?}"))),
            }
        }
        let soak = stages
            .soak_ms
            .map(|ms| format!("soaked {:?}; ", Duration::from_millis(ms)));
        let steps = events::plural(stages.verify_live.len(), "live step");
        Ok(format!(
            "{}{} passed {steps}",
            soak.unwrap_or_default(),
            record.id
        ))
    }

    async fn live_failed(&self, record: &TxRecord, stages: &Stages, step: String, why: String) {
        let revert = stages.on_live_failure == LiveFailure::Revert;
        let then = if revert {
            format!("reverting it as {}", revert_id(record))
        } else {
            "only notified (on_live_failure = \"notify\")".into()
        };
        let message = format!("{} failed live step {step}: {why}; {then}", record.id);
        let check = LiveCheck::Failed(format!("{step}: {why}"));
        let kind = pb::EventKind::LiveVerifyFailed;
        let mut owed = Batch::default();
        if revert {
            Tables::put_revert_due(&mut owed, record);
        }
        if self
            .record_check_with(owed, record, check, kind, &step, message)
            .await
            && revert
        {
            crate::crash::point(crate::crash::AFTER_LIVE_CHECK_FAILED);
            self.revert_automatically(record).await;
        }
    }

    /// Writes the outcome beside the stored transaction (its `tx_marks` entry) with
    /// its event; false when the write failed (then nothing follows from it).
    async fn record_check(
        &self,
        record: &TxRecord,
        check: LiveCheck,
        kind: pb::EventKind,
        step: &str,
        message: String,
    ) -> bool {
        let batch = Batch::default();
        self.record_check_with(batch, record, check, kind, step, message)
            .await
    }

    /// As [`Registry::record_check`], in one write with `batch`.
    async fn record_check_with(
        &self,
        mut batch: Batch,
        record: &TxRecord,
        check: LiveCheck,
        kind: pb::EventKind,
        step: &str,
        message: String,
    ) -> bool {
        let written = async {
            // A mark of its own beside the record, never a read-modify-write of the
            // record: a revert committing now marks it quarantined beside it.
            let mut event = events::event(record, kind, None, message);
            event.step = step.to_string();
            Tables::put_live_check(&mut batch, record.ordinal, &check);
            self.inner
                .journal
                .append(batch, vec![event], Durable::Soon)
                .await?;
            Ok::<(), crate::error::CoordinatorError>(())
        };
        match written.await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(tx = %record.id, "live check not recorded: {e}");
                false
            }
        }
    }

    /// Creates the revert `record`'s failed live check owes. The mark that says so
    /// goes with the revert's end (its batch), so that a restart that cuts the revert
    /// off before its decision leaves it owed, and the next start makes another
    /// attempt; here it goes only when the revert is refused, or found ended already.
    /// A refusal is recorded on `record`; a failure that retrying may cure (storage)
    /// is tried again, and the mark stays for the next start if it lasts, so no
    /// revert is dropped on a transient error.
    async fn revert_automatically(&self, record: &TxRecord) {
        let mut delay = Duration::from_millis(100);
        let created = loop {
            match self.admit(automatic_revert(record), &|_| Ok(())).await {
                Err(e) if e.retryable() && delay < REVERT_RETRY_FOR => {
                    tracing::warn!(tx = %record.id, "automatic revert not created yet: {e}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                outcome => break outcome,
            }
        };
        match created {
            Err(e) if e.retryable() => {
                tracing::error!(tx = %record.id, "automatic revert not created: {e}; the next start tries again");
                return;
            }
            Err(e) => {
                let message = format!("the automatic revert of {} was refused: {e}", record.id);
                let kind = pb::EventKind::LiveVerifyFailed;
                let check = LiveCheck::Failed(message.clone());
                self.record_check(record, check, kind, "", message).await;
            }
            Ok(created) => {
                let ended = created.transaction.is_some_and(|t| t.state.is_terminal());
                if !ended {
                    return;
                }
            }
        }
        let mut paid = Batch::default();
        Tables::delete_revert_due(&mut paid, record);
        let cleared = self.inner.journal.append(paid, Vec::new(), Durable::Soon);
        if let Err(e) = cleared.await {
            tracing::error!(tx = %record.id, "revert-due mark not cleared: {e}");
        }
    }

    /// At start: the automatic reverts a restart cut off, the live check it
    /// interrupted (each environment's newest checkpoint only) and the auto-promotions
    /// of each upstream's newest verified release (idempotent: their ids are
    /// deterministic).
    pub fn resume_after_commit(&self) -> Result<()> {
        let mut due = Vec::new();
        for id in self.tables().reverts_due()?.into_iter().rev() {
            due.extend(self.tables().transaction(&id)?);
        }
        // Newest first, one at a time: a revert of a release a later one built on
        // waits for the later one's.
        let this = self.clone();
        tokio::spawn(async move {
            for record in due {
                this.revert_automatically(&record).await;
            }
        });
        let environments: Vec<_> = self.state().environments.keys().cloned().collect();
        for env in environments {
            let Some(cp) = self.tables().latest_checkpoint(&env)? else {
                continue;
            };
            let Some(record) = self.tables().transaction(&cp.transaction)? else {
                continue;
            };
            if record.state == TxState::Committed {
                self.after_commit(&record);
            }
        }
        Ok(())
    }
}

/// How long an automatic revert is tried again while storage fails.
const REVERT_RETRY_FOR: Duration = Duration::from_secs(30);

/// The revert a failed live check owes, made by "verification after commit".
fn automatic_revert(record: &TxRecord) -> CreateSpec {
    CreateSpec {
        id: Some(revert_id(record)),
        id_hint: None,
        environment: record.environment.clone(),
        request: Request::Revert {
            release: record.id.clone(),
            cascade: false,
        },
        prepare_timeout: None,
        dry_run: false,
        actor: "verification after commit".into(),
        authority: Default::default(),
        ticket: record.ticket.clone(),
        promoted_from: None,
        again_after_restart: true,
    }
}

/// The id of the automatic revert of `record`, in the coordinator's own namespace
/// (`auto-`: no caller may choose such an id, and no id the coordinator picks for a
/// person's revert begins so), always valid however long `record`'s own is.
fn revert_id(record: &TxRecord) -> TxId {
    TxId::derived(&format!("{AUTO_REVERT}{}", record.id))
}

/// How the id of every automatic revert begins (and of its attempts after restarts).
pub(super) const AUTO_REVERT: &str = "auto-revert-";
