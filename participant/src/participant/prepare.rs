//! Phase 1 on the participant: check, record the intent, stage in a task of its own,
//! record PREPARED with fsync, and only then vote.

use lockstep::orders::{PrepareOrder, VoteAnswer};
use lockstep_store::Durability;
use tokio::sync::watch;

use super::{
    CRASH_BEFORE_PREPARED_RECORD, InFlight, Participant, ParticipantError, answer_again, change_of,
    other_incarnation, prepared, shown,
};
use crate::{
    deployer::{Change, Deployer, Refusal, Staged},
    ledger::{Entry, Phase},
    schema::SchemaStaged,
};

/// What staging produced, or why it stopped (with what the deployer staged, to undo).
type StageOutcome = Result<(Staged, Option<SchemaStaged>), (Refusal, Option<Staged>)>;

impl<D: Deployer> Participant<D> {
    /// Stages the change and votes. Idempotent per transaction id.
    pub async fn prepare(&self, order: PrepareOrder) -> Result<VoteAnswer, ParticipantError> {
        tracing::debug!(tx = %order.tx, "Prepare received");
        if let Some(refusal) = self.misaddressed(&order) {
            return Ok(VoteAnswer::Refused(refusal));
        }
        let mut vote = {
            let _guard = self.inner.lock.lock().await;
            match self.vote_or_start(&order).await? {
                Ok(vote) => vote,
                Err(answer) => return Ok(answer),
            }
        };
        loop {
            if let Some(answer) = vote.borrow_and_update().clone() {
                return Ok(answer);
            }
            if vote.changed().await.is_err() {
                return Ok(VoteAnswer::Refused(
                    "prepare was interrupted; ask again".into(),
                ));
            }
        }
    }

    /// Under the lock: where the vote will appear (a Prepare already staging, or one
    /// started now), or the answer at once (a repeated Prepare, a refusal).
    async fn vote_or_start(
        &self,
        order: &PrepareOrder,
    ) -> Result<Result<watch::Receiver<Option<VoteAnswer>>, VoteAnswer>, ParticipantError> {
        let tx = order.tx.as_str();
        let recorded = self.inner.ledger.get(tx)?;
        // The same id with other content, or from another coordinator, is another
        // transaction: refused, and the record of the first one is left as it is.
        if let Some(refusal) = recorded
            .as_ref()
            .and_then(|e| another_transaction(order, e))
        {
            return Ok(Err(VoteAnswer::Refused(refusal)));
        }
        // A repeated Prepare while staging runs waits for the same vote (the ledger
        // already says Staging, which after a restart means "interrupted").
        if let Some(vote) = self.in_flight().get(tx).map(|f| f.vote.clone()) {
            return Ok(Ok(vote));
        }
        if let Some(entry) = recorded {
            return Ok(Err(answer_again(&entry)));
        }
        if let Some(refusal) = self.precondition_refusal(order).await? {
            let mut entry = staging_entry(order);
            entry.phase = Phase::Refused;
            entry.reason = refusal.clone();
            self.record(tx, &entry, Durability::Buffered).await?;
            return Ok(Err(VoteAnswer::Refused(refusal)));
        }
        let entry = staging_entry(order);
        // Written before anything is staged, and its error seen (a buffered write is
        // not synced: this waits for nothing). Staged work without its intent is what
        // a restart cannot undo: a reversible migration left applied under the old
        // version (review finding of stop 60). A crash may still lose the intent before
        // its sync; that is the window `abort_unrecorded` covers.
        self.record(tx, &entry, Durability::Buffered).await?;
        Ok(Ok(self.start_staging(order, entry)))
    }

    /// A Prepare meant for another project or environment is refused, never staged.
    pub(super) fn misaddressed(&self, order: &PrepareOrder) -> Option<String> {
        if order.project.as_str() != self.inner.project {
            return Some(format!(
                "this agent serves project {}, not {}",
                self.inner.project, order.project
            ));
        }
        if order.environment.as_str() != self.inner.environment {
            return Some(format!(
                "this agent serves environment {}, not {}",
                self.inner.environment, order.environment
            ));
        }
        None
    }

    /// The rules checked before staging anything: one transaction at a time, and the
    /// live version the coordinator expects.
    async fn precondition_refusal(
        &self,
        order: &PrepareOrder,
    ) -> Result<Option<String>, ParticipantError> {
        if let Some(other) = self.open().first() {
            return Ok(Some(format!(
                "busy: transaction {other} is open here (prepared and awaiting its decision, or staging a restart interrupted, not yet undone)"
            )));
        }
        self.drift_refusal(order).await
    }

    /// Refuses when what is live here is not what the coordinator believes.
    pub(super) async fn drift_refusal(
        &self,
        order: &PrepareOrder,
    ) -> Result<Option<String>, ParticipantError> {
        let live = self.live().await?;
        let expected = order
            .from_version
            .as_ref()
            .map(|v| v.as_str())
            .unwrap_or_default();
        if live != expected {
            return Ok(Some(format!(
                "the live version here is {} but the coordinator expects {}; refusing rather than guess",
                shown(&live),
                shown(expected)
            )));
        }
        Ok(None)
    }

    /// Stages what the recorded intent `entry` says, in a task of its own: a cancelled
    /// RPC does not cut staging in half, and an Abort can stop it.
    fn start_staging(
        &self,
        order: &PrepareOrder,
        entry: Entry,
    ) -> watch::Receiver<Option<VoteAnswer>> {
        let tx = order.tx.to_string();
        let (cancel, cancelled) = watch::channel(false);
        let (answer, vote) = watch::channel(None);
        let in_flight = InFlight {
            cancel,
            vote: vote.clone(),
        };
        self.in_flight().insert(tx.clone(), in_flight);
        let this = self.clone();
        // In the span of the Prepare that started it, so staging, hooks and migrations
        // belong to the release's trace.
        let staging = async move {
            let response = this.stage_and_vote(entry, cancelled).await;
            let response = response
                .unwrap_or_else(|e| VoteAnswer::Refused(format!("could not record the vote: {e}")));
            this.in_flight().remove(&tx);
            answer.send_replace(Some(response));
        };
        tokio::spawn(tracing::Instrument::in_current_span(staging));
        vote
    }

    /// Stages what the Staging record `entry` says, then records the vote in it.
    async fn stage_and_vote(
        &self,
        entry: Entry,
        mut cancelled: watch::Receiver<bool>,
    ) -> Result<VoteAnswer, ParticipantError> {
        let change = entry
            .change
            .clone()
            .expect("a Staging record has its change");
        let outcome = self.stage_all(&change, &mut cancelled).await;
        // Crash test: everything is staged (the database committed its part) and the
        // PREPARED record is not yet written.
        lockstep::crash::point(CRASH_BEFORE_PREPARED_RECORD);
        let _guard = self.inner.lock.lock().await;
        let aborted = *cancelled.borrow();
        match outcome {
            Ok((staged, schema)) if !aborted => self.vote_prepared(entry, staged, schema).await,
            Ok((staged, _)) => {
                self.vote_refused(entry, aborted_while_preparing(), Some(staged), true)
                    .await
            }
            Err((refusal, staged)) => self.vote_refused(entry, refusal, staged, aborted).await,
        }
    }

    async fn vote_prepared(
        &self,
        mut entry: Entry,
        staged: Staged,
        schema: Option<SchemaStaged>,
    ) -> Result<VoteAnswer, ParticipantError> {
        let tx = entry.change.as_ref().map(|c| c.transaction_id.clone());
        let tx = tx.unwrap_or_default();
        entry.phase = Phase::Prepared;
        let vote = staged.clone();
        entry.staged = Some(staged);
        entry.schema = schema.clone();
        // Durability point: the PREPARED record is synced before the vote leaves.
        tracing::debug!(%tx, "staged; syncing the PREPARED record");
        self.record(&tx, &entry, Durability::Sync).await?;
        tracing::debug!(%tx, "PREPARED record durable: voting");
        self.ask_later(&tx);
        Ok(prepared(schema.as_ref(), Some(&vote)))
    }

    /// Never voted yes: undo on our own, then remember the refusal. A refusal with
    /// something staged (`staged` is `Some`: the schema's stage refused, or an Abort cut
    /// it short) asks the database too, since a migration commit that failed in
    /// transit may have committed all the same; only a refusal of the deployer's stage
    /// left the database untouched.
    async fn vote_refused(
        &self,
        mut entry: Entry,
        refusal: Refusal,
        staged: Option<Staged>,
        aborted: bool,
    ) -> Result<VoteAnswer, ParticipantError> {
        let change = entry
            .change
            .clone()
            .expect("a Staging record has its change");
        // Nothing was recorded staged in the database yet (no PREPARED vote).
        let schema_touched = (aborted || staged.is_some()).then_some(None);
        let undone = self
            .undo_all(&change, staged.as_ref(), schema_touched)
            .await;
        if let Err(e) = undone {
            // Left STAGING: tried again here until undone (the Abort that follows the
            // refusal undoes it too, but a coordinator that crashed before this
            // transaction's start was durable never sends one).
            self.undo_later(change.transaction_id.clone(), refusal.0.clone());
            return Ok(VoteAnswer::Refused(format!(
                "{}; undoing what was staged failed ({e}): tried again until undone",
                refusal.0
            )));
        }
        entry.phase = if aborted {
            Phase::Aborted
        } else {
            Phase::Refused
        };
        entry.reason = refusal.0.clone();
        self.record(&change.transaction_id, &entry, Durability::Buffered)
            .await?;
        Ok(VoteAnswer::Refused(refusal.0))
    }

    /// Deployer first, then migrations; a failure of either undoes the other. An Abort
    /// stops the deployer's staging (its hooks are killed) but never a migration that
    /// has started: a database transaction cut off mid-statement would stay open on a
    /// pooled connection with its locks, so migrations run to their end and are then
    /// undone like any staged change.
    async fn stage_all(
        &self,
        change: &Change,
        cancelled: &mut watch::Receiver<bool>,
    ) -> StageOutcome {
        let staged = tokio::select! {
            biased;
            _ = cancelled.wait_for(|c| *c) => return Err((aborted_while_preparing(), None)),
            staged = self.inner.deployer.stage(change) => staged.map_err(|r| (r, None))?,
        };
        let Some(schema) = &self.inner.schema else {
            return Ok((staged, None));
        };
        if *cancelled.borrow() {
            return Err((aborted_while_preparing(), Some(staged)));
        }
        let migrations = staged.migrations.as_deref();
        let target = change.target_schema;
        match schema
            .stage(
                &change.transaction_id,
                migrations,
                target,
                change.moving_back,
            )
            .await
        {
            Ok(s) => Ok((staged, Some(s))),
            Err(refusal) => Err((refusal, Some(staged))),
        }
    }
}

fn aborted_while_preparing() -> Refusal {
    Refusal("aborted while preparing".into())
}

/// The record of a Prepare about to stage: its change and who sent it.
fn staging_entry(order: &PrepareOrder) -> Entry {
    Entry {
        change: Some(change_of(order)),
        phase: Phase::Staging,
        staged: None,
        schema: None,
        reason: String::new(),
        incarnation: order.incarnation.clone(),
    }
}

/// Why `order` is not a repetition of the Prepare recorded in `entry` (`None`: it is,
/// or there is nothing to compare: an Abort came first).
fn another_transaction(order: &PrepareOrder, entry: &Entry) -> Option<String> {
    let recorded = entry.change.as_ref()?;
    let tx = &order.tx;
    if other_incarnation(&entry.incarnation, &order.incarnation) {
        return Some(format!(
            "transaction {tx} here was prepared by another coordinator (incarnation {}, this one is {}): a coordinator whose data was replaced reused the id; refusing rather than answering for the old transaction; use a new id",
            entry.incarnation, order.incarnation
        ));
    }
    let mut asked = change_of(order);
    // Derived from the order's action; a record an older agent wrote has none.
    asked.moving_back = recorded.moving_back;
    (asked != *recorded).then(|| {
        format!(
            "transaction {tx} was already prepared here with other content (version {}, from {}, artifact {:?}); this Prepare asks for version {}, from {}, artifact {:?}: refusing rather than answering for another change",
            recorded.version,
            shown(&recorded.from_version),
            recorded.artifact,
            asked.version,
            shown(&asked.from_version),
            asked.artifact
        )
    })
}
