//! The journal port ([`TxJournal`]) that every driver writes through: undecided progress
//! shown at once, decisions shown once durable, the COMMIT decision written with fsync
//! in one batch with the checkpoint it produces (and, for a revert, the quarantine of
//! what it pulls), and the end, which hands the transaction's projects to the next ones
//! in the queue.

use lockstep::{
    names::{Environment, ProjectName, TxId},
    pb,
};
use std::{collections::BTreeSet, sync::Arc, time::Instant};

use lockstep_store::Batch;

use super::{Registry, State, live_check::AUTO_REVERT};
use crate::{
    access::{roles::Scope, table},
    error::Result,
    journal::Durable,
    model::{
        Action, BuildRecord, CheckpointRecord, LiveCheck, LiveEntry, Participant, QuarantineRecord,
        Request, TxKind, TxRecord,
    },
    planner,
    ports::{Pending, TxJournal},
    tables::Tables,
    txn::{PRESUMED_ABORT, Turn, events},
};

impl TxJournal for Registry {
    fn note(&self, tx: &TxId, shown: &[Participant], events: Vec<pb::Event>) {
        self.inner.journal.append_quietly(Batch::default(), events);
        self.show_participants(tx, shown);
    }

    fn write(
        &self,
        record: &TxRecord,
        events: Vec<pb::Event>,
        show_now: bool,
    ) -> Pending<Result<()>> {
        let mut batch = Batch::default();
        put_record(&self.state(), &mut batch, record);
        // Decisions other than COMMIT need no fsync of their own (presumed abort).
        let written = self.inner.journal.append(batch, events, Durable::Soon);
        if show_now {
            self.show(record);
        }
        // Only a write shown once durable needs the record after this call.
        let show_later = (!show_now).then(|| (self.clone(), record.clone()));
        Box::pin(async move {
            written.await?;
            if let Some((this, record)) = show_later {
                this.show(&record);
            }
            Ok(())
        })
    }

    fn decide_commit(&self, record: &TxRecord, events: Vec<pb::Event>) -> Pending<Result<u64>> {
        let mut record = record.clone();
        let decided = self.write_commit(&mut record, events);
        let this = self.clone();
        Box::pin(async move {
            let checkpoint = decided?.await?;
            this.commit_durable(&record, checkpoint);
            Ok(record.checkpoint)
        })
    }

    fn finish(&self, record: &TxRecord, events: Vec<pb::Event>) -> Pending<Result<()>> {
        let mut record = record.clone();
        // Never 0: 0 means "its end is not written" (the active index and recovery).
        record.finished_ms = self.now().max(1);
        if self.live_check_due(&record).is_some() {
            record.live_check = LiveCheck::Soaking;
        }
        let mut batch = Batch::default();
        if let Some(owed) = self.revert_paid(&record) {
            Tables::delete_revert_due(&mut batch, &owed);
        }
        let s = self.state();
        put_record(&s, &mut batch, &record);
        // Durable before readers see the end. With other transactions in flight it
        // rides on their next fsync; alone, nobody would share one, so it forces its own.
        let durability = match s.active.len() {
            0 | 1 => Durable::Now,
            n => self.inner.journal.under_load(Durable::Soon, n),
        };
        drop(s);
        let written = self.inner.journal.append(batch, events, durability);
        let this = self.clone();
        Box::pin(async move {
            written.await?;
            this.hand_over(&record.id);
            this.after_commit(&record);
            Ok(())
        })
    }

    fn endpoint(&self, environment: &Environment, project: &ProjectName) -> Option<String> {
        let s = self.state();
        let registered = s.projects.get(environment).and_then(|p| p.get(project));
        registered.map(|p| p.endpoint.clone())
    }
}

impl Registry {
    /// The release whose failed live check `ended`, an automatic revert, was owed
    /// for: its `revert-due` mark goes in the end's batch, whatever the outcome, unless
    /// a restart cut the attempt off before its decision (the next start makes another).
    /// A read that fails leaves the mark: the next start finds the attempt ended.
    fn revert_paid(&self, ended: &TxRecord) -> Option<TxRecord> {
        let automatic = ended.kind == TxKind::Revert && ended.id.as_str().starts_with(AUTO_REVERT);
        if !automatic || ended.reason == PRESUMED_ABORT {
            return None;
        }
        let release = ended.reverts.first()?;
        self.tables().transaction(release).unwrap_or_else(|e| {
            tracing::warn!(tx = %ended.id, "revert-due mark of {release} left for the next start: {e}");
            None
        })
    }

    /// Shows readers the record as the driver has it.
    fn show(&self, record: &TxRecord) {
        if let Some(active) = self.state().active.get_mut(&record.id) {
            active.record.clone_from(record);
        }
    }

    /// Shows readers the new state of some participants (a vote, an acknowledgement):
    /// copies only those, so a transaction with a hundred participants does not copy its
    /// whole record for each of its hundred votes.
    fn show_participants(&self, tx: &TxId, participants: &[Participant]) {
        let mut s = self.state();
        let Some(active) = s.active.get_mut(tx) else {
            return;
        };
        for new in participants {
            if let Some(shown) = active.record.participant_mut(&new.project) {
                shown.clone_from(new);
            }
        }
    }

    /// Writes the decision with the checkpoint it produces, numbered after the
    /// environment's newest (decided) one, under the lock so that concurrent decisions
    /// of one environment build on each other. Durability point: COMMIT forces an fsync
    /// before any Commit is sent.
    fn write_commit(
        &self,
        tx: &mut TxRecord,
        mut written: Vec<pb::Event>,
    ) -> Result<impl Future<Output = Result<Arc<CheckpointRecord>>> + use<>> {
        // Read before anything changes; a read that fails stops the process (the
        // driver's contract: only a failed journal ends it), so recovery decides again.
        let reverted = self.reverted(tx).inspect_err(|e| {
            let why = format!("transaction {}: its COMMIT decision not made: {e}", tx.id);
            self.inner.journal.halt(why);
        })?;
        let mut s = self.state();
        let checkpoint = self.next_checkpoint(&s, tx);
        tx.checkpoint = checkpoint.revision;
        let mut batch = Batch::default();
        put_record(&s, &mut batch, tx);
        Tables::put_checkpoint(&mut batch, &checkpoint);
        let previous = s.head.get(&tx.environment).map(|h| &**h);
        Tables::put_seen(&mut batch, previous, &checkpoint);
        Tables::put_starts(&mut batch, previous, &checkpoint);
        Self::record_builds(tx, &mut batch);
        Self::quarantine_reverted(&mut s, tx, &reverted, &mut batch);
        let description = format!(
            "checkpoint {}: {}",
            checkpoint.revision, checkpoint.description
        );
        let mut recorded = events::event(tx, pb::EventKind::CheckpointRecorded, None, description);
        recorded.revision = checkpoint.revision;
        written.push(recorded);
        let checkpoint = Arc::new(checkpoint);
        s.head.insert(tx.environment.clone(), checkpoint.clone());
        s.changed(&tx.environment);
        let durability = self.inner.journal.under_load(Durable::Now, s.active.len());
        let durable = self.inner.journal.append(batch, written, durability);
        let (timings, started) = (self.inner.journal.timings().clone(), Instant::now());
        Ok(async move {
            let written = durable.await;
            timings.phase(
                checkpoint.environment.as_str(),
                "decision_fsync",
                started.elapsed(),
            );
            written.map(|_| checkpoint)
        })
    }

    /// Records what each version `tx` makes live was staged from, in the decision's
    /// batch, without reading anything (this runs on every COMMIT, under the lock). A
    /// version has one artifact (the planner refuses another for a committed version),
    /// and a part staged without one (a kept build, a restore of a version released
    /// without an artifact) leaves the earlier record as it is.
    fn record_builds(tx: &TxRecord, batch: &mut Batch) {
        let env = &tx.environment;
        let changed = tx
            .participants
            .iter()
            .filter(|p| p.action != Action::Unchanged);
        for p in changed.filter(|p| !p.artifact.is_empty()) {
            let record = BuildRecord {
                artifact: p.artifact.clone(),
                metadata: p.metadata.clone(),
                schema: p.to_schema.clone(),
            };
            Tables::put_build(batch, (env, &p.project, &p.to_version), &record);
        }
    }

    /// The checkpoint `tx` produces: the newest one with `tx`'s versions (and schemas)
    /// laid over it.
    fn next_checkpoint(&self, s: &State, tx: &TxRecord) -> CheckpointRecord {
        let previous = s.head.get(&tx.environment);
        let mut versions = previous.map(|p| p.versions.clone()).unwrap_or_default();
        // A removed project leaves the live state with the next checkpoint, and so does
        // the entry of one removed and registered again since (see `live_from`).
        let registered = s.projects.get(&tx.environment);
        let revision = previous.map_or(0, |p| p.revision);
        let kept = |p: &ProjectName| {
            registered
                .and_then(|m| m.get(p))
                .is_some_and(|r| r.live_from < revision)
        };
        versions.retain(|p, _| kept(p));
        for p in &tx.participants {
            let kept = versions.get(&p.project).and_then(|e| e.schema.clone());
            let schema = p.to_schema.clone().or(kept);
            let entry = LiveEntry {
                version: p.to_version.clone(),
                schema,
            };
            versions.insert(p.project.clone(), entry);
        }
        CheckpointRecord {
            revision: previous.map(|p| p.revision).unwrap_or(0) + 1,
            environment: tx.environment.clone(),
            versions,
            transaction: tx.id.clone(),
            kind: tx.kind,
            description: planner::checkpoint_description(tx),
            untested: tx.forced,
            committed_ms: self.now(),
        }
    }

    /// The releases a committing revert pulls (none for other transactions).
    fn reverted(&self, tx: &TxRecord) -> Result<Vec<TxRecord>> {
        if tx.kind != TxKind::Revert {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for id in &tx.reverts {
            found.extend(self.inner.tables.transaction(id)?);
        }
        Ok(found)
    }

    /// Marks the `reverted` releases as quarantined (same batch as the decision, so they
    /// are quarantined exactly when the revert is decided).
    fn quarantine_reverted(s: &mut State, tx: &TxRecord, reverted: &[TxRecord], batch: &mut Batch) {
        for release in reverted {
            // A mark of its own: the release's record is never read and rewritten
            // here, so its live check (recorded beside it) is never lost.
            Tables::put_quarantined(batch, release.ordinal);
            let changed = release
                .participants
                .iter()
                .filter(|p| p.action != Action::Unchanged);
            for p in changed {
                let record = QuarantineRecord {
                    release: release.id.clone(),
                    revert: tx.id.clone(),
                };
                let env = &tx.environment;
                Tables::put_quarantine(batch, env, &p.project, &p.to_version, &record);
                let quarantined = s.quarantine.entry(env.clone()).or_default();
                quarantined.insert((p.project.clone(), p.to_version.clone()), record);
            }
        }
    }

    /// The decision is durable: readers see it and its checkpoint (unless a newer one
    /// became durable first).
    fn commit_durable(&self, tx: &TxRecord, checkpoint: Arc<CheckpointRecord>) {
        let mut s = self.state();
        let live = s.live.get(&tx.environment);
        if live.is_none_or(|l| l.revision <= checkpoint.revision) {
            s.live.insert(tx.environment.clone(), checkpoint);
        }
        if let Some(active) = s.active.get_mut(&tx.id) {
            active.record.clone_from(tx);
        }
    }

    /// Frees the projects of an ended transaction and starts those waiting for them.
    fn hand_over(&self, id: &TxId) {
        let started = {
            let mut s = self.state();
            if s.active.remove(id).is_some() {
                s.departs(id);
            }
            let started = s.queue.finish(id);
            // Still-waiting transactions may now wait for someone else: refresh their
            // reasons (only the queue's, not every active transaction's).
            for (ordinal, id, blocked) in s.queue.waiting() {
                let reason = blocked.map(|b| b.explain()).unwrap_or_default();
                if let Some(a) = s.active.get_mut(&id)
                    && a.record.ordinal == ordinal
                {
                    a.record.reason = reason;
                }
            }
            started
        };
        self.inner.feed.ended(id.as_str());
        for next in started {
            self.start_queued(&next);
        }
    }

    /// Gives a queued transaction, which now holds its projects, its turn: re-planned,
    /// since the live state may have moved while it waited (from-versions refreshed,
    /// the rules checked again).
    fn start_queued(&self, id: &TxId) {
        let Some((env, request, creator)) = self.state().active.get(id).map(|a| {
            let r = &a.record;
            (
                r.environment.clone(),
                r.request.clone(),
                r.created_by.clone(),
            )
        }) else {
            return;
        };
        // Read before the state's lock is taken (they read the store).
        let refused = (self.creator_revoked_now(&creator))
            .or_else(|| self.path_changed_now(&env, &request))
            .or_else(|| self.promotion_refused_now(&request).map(source_changed));
        let (mut s, plan) = self.plan_for(&env, &request);
        let turn = match refused {
            Some(why) => Turn::Refused(why),
            None => Self::turn(&s, id, plan),
        };
        if let Some(start) = s.active.get_mut(id).and_then(|a| a.start.take()) {
            let _ = start.send(turn);
        }
    }

    /// Why a queued transaction may not go ahead at its turn for who created it: the
    /// token they acted through was revoked while it waited, and a revoked credential
    /// acts no more, not even through what it set going.
    fn creator_revoked_now(&self, creator: &str) -> Option<String> {
        match self.tables().revoked_token_of(creator) {
            Ok(None) => None,
            Ok(Some(token)) => Some(format!(
                "while it was queued, token {token} it was created through (by {creator}) was revoked"
            )),
            Err(e) => Some(format!(
                "whether its creator's token was revoked could not be read: {e}"
            )),
        }
    }

    /// Why a promotion may not go ahead at its turn: its target no longer comes after
    /// its source (a pipeline applied, or `env add`, while it waited), so it would go
    /// live credited as tested by an environment that is no longer upstream (review
    /// finding of stop 60).
    fn path_changed_now(&self, to: &Environment, request: &Request) -> Option<String> {
        let Request::Promote { upstream, .. } = request else {
            return None;
        };
        let refused = self.downstream(&upstream.environment, to).err()?;
        Some(format!(
            "while it was queued, the promotion path changed: {refused}"
        ))
    }

    /// Why a promotion may not go ahead at its turn: the source checkpoint it stored is
    /// no longer verified (a revert upstream pulled the release that made it while it
    /// waited). A forced promotion is recorded untested and goes ahead.
    fn promotion_refused_now(&self, request: &Request) -> Option<String> {
        let Request::Promote {
            force,
            upstream,
            components,
        } = request
        else {
            return None;
        };
        if *force || upstream.untested {
            return None;
        }
        // As when it was asked for: a whole checkpoint is judged by every version, a
        // bracket (`--release`, fewer projects) by its release alone.
        let refusal = match components.len() == upstream.versions.len() {
            true => self.refusal_of(upstream),
            false => self.bracket_refusal(upstream),
        };
        match refusal {
            Ok(None) => None,
            Ok(Some(why)) => Some(why.to_string()),
            Err(e) => Some(format!("its source could not be checked: {e}")),
        }
    }

    /// What a queued transaction does with its new plan.
    fn turn(s: &State, id: &TxId, plan: Result<planner::Plan>) -> Turn {
        let Some(active) = s.active.get(id) else {
            return Turn::Refused("transaction vanished from memory".into());
        };
        let record = &active.record;
        match plan {
            Err(e) => Turn::Refused(format!("while it was queued the state changed: {e}")),
            Ok(plan) if !plan.allowed() => Turn::Refused(format!(
                "while it was queued the state changed; {}",
                plan.refusal()
            )),
            Ok(plan) if !fits(record, &plan, &s.queue.held_by(id)) => {
                Turn::Refused(
                "while it was queued the state changed so that it would need other projects than the ones it queued for; create it again".into(),
            )
            }
            Ok(plan) => match beyond_authority(record, &plan) {
                Some(why) => Turn::Refused(why),
                None => Turn::Go(Some(Box::new(plan))),
            },
        }
    }
}

/// Why a rollback's plan made at its turn is not its creator's to make. At its turn a
/// rollback moves every project of its checkpoint that changed meanwhile (see
/// [`fits`]), and each must be one its creator was allowed to roll back when it asked
/// (its recorded authority), as the plan checked at admission was: a releaser of A
/// alone must not restore B over a release of B that committed while the rollback
/// waited (review of stop 63).
fn beyond_authority(record: &TxRecord, plan: &planner::Plan) -> Option<String> {
    let Request::Rollback {
        allow_quarantined, ..
    } = &record.request
    else {
        return None;
    };
    let key = match allow_quarantined {
        true => "Rollback --allow-quarantined",
        false => "Rollback",
    };
    let rule = table::rule(key).expect("the table has a row for every rpc");
    let permission = rule.permission;
    let scope = Scope::projects(&record.environment, plan.projects());
    let (creator, authority) = (&record.created_by, &record.authority);
    if authority.allows(creator, permission, &scope) {
        return None;
    }
    Some(format!(
        "while it was queued the state changed so that it would move {scope}, and its creator {creator} needs permission {} there; {creator} holds {authority}; create it again",
        permission.name()
    ))
}

fn source_changed(why: String) -> String {
    format!("while it was queued its source changed: {why}")
}

/// Whether a plan made at a queued transaction's turn fits what it queued for: only
/// projects it holds, and the participants it was admitted with (the ones its caller
/// was allowed to change). A rollback may move any project it holds: it restores the
/// whole checkpoint it names and holds every project of it, so a project a release in
/// flight changed meanwhile is restored too, as far as its creator may
/// ([`beyond_authority`]).
fn fits(record: &TxRecord, plan: &planner::Plan, held: &BTreeSet<ProjectName>) -> bool {
    let within = plan.held().is_subset(held);
    let same = plan.projects() == record.projects().cloned().collect();
    within && (same || record.kind == TxKind::Rollback)
}

/// Adds `record` to `batch`, with its keys (id, indexes, active) only when the record
/// shown (written earlier in the log) has other participants, as after a plan made
/// again when its turn came: the admission wrote them, and they never change otherwise.
fn put_record(s: &State, batch: &mut Batch, record: &TxRecord) {
    let shown = s.active.get(&record.id).map(|a| &a.record);
    if shown.is_some_and(|shown| same_projects(shown, record)) {
        Tables::put_progress(batch, record);
    } else {
        Tables::put_transaction(batch, record);
    }
}

/// Whether two records of one transaction name the same participants, in order.
fn same_projects(a: &TxRecord, b: &TxRecord) -> bool {
    let pairs = a.participants.iter().zip(&b.participants);
    a.participants.len() == b.participants.len()
        && pairs.into_iter().all(|(x, y)| x.project == y.project)
}

#[cfg(test)]
mod tests {
    use lockstep_store::{Durability, MemKv, Op};
    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        model::TxState,
        tables::{ACTIVE, TRANSACTIONS, TX_BY_PROJECT},
        txn::tests::t4,
    };

    fn tables_of(batch: &Batch) -> Vec<&'static str> {
        let table = |op: &Op| match op {
            Op::Put { table, .. } | Op::Delete { table, .. } => *table,
        };
        batch.ops.iter().map(table).collect()
    }

    fn shown(record: &TxRecord) -> State {
        let mut s = State::default();
        let commands = mpsc::unbounded_channel().0;
        let active = super::super::Active {
            record: record.clone(),
            start: None,
            commands,
        };
        s.active.insert(record.id.clone(), active);
        s
    }

    /// A step of a transaction rewrites its record alone; a record whose participants
    /// changed since the one shown (a plan made again) gets its keys again, so a
    /// listing by project finds it under each project it names.
    #[test]
    fn keys_are_written_again_only_for_other_participants() {
        let first = t4(TxState::Preparing);
        let s = shown(&first);
        let mut step = Batch::default();
        put_record(&s, &mut step, &first);
        assert_eq!(tables_of(&step), [TRANSACTIONS]);
        let mut replanned = first.clone();
        replanned.participants.pop();
        let mut batch = Batch::default();
        put_record(&s, &mut batch, &replanned);
        let written = tables_of(&batch);
        let by_project = written.iter().filter(|t| **t == TX_BY_PROJECT).count();
        assert_eq!(by_project, replanned.participants.len());
        assert!(written.contains(&ACTIVE));
        let mut ended = replanned;
        ended.state = TxState::Committed;
        ended.finished_ms = 7;
        let mut end = Batch::default();
        put_record(&shown(&ended), &mut end, &ended);
        assert_eq!(
            tables_of(&end),
            [TRANSACTIONS, ACTIVE],
            "the end leaves the active index"
        );
        let tables = Tables::new(Arc::new(MemKv::new()));
        tables.kv().write(batch, Durability::Sync).unwrap();
        tables.kv().write(end, Durability::Sync).unwrap();
        let read = tables.transaction(&ended.id).unwrap().unwrap();
        assert_eq!(
            read, ended,
            "a record left without its default fields reads back whole"
        );
    }
}
