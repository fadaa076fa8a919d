//! Accepting a request: the plan with every release rule checked, the id (the
//! client's idempotency key, or a fresh one), the durable PENDING or PREPARING record,
//! its place in the per-project queue, and its driver. The plan is made outside the
//! state lock and kept only if still valid under it (see `planning`); the rest happens
//! under the lock, so a transaction that finishes right now finds this one when it
//! hands over its projects.

use std::{collections::BTreeMap, sync::MutexGuard};

use lockstep::{names::TxId, pb};
use lockstep_store::Batch;
use tokio::sync::{mpsc, oneshot};

use super::{Active, Registry, State};
use crate::{
    error::{CoordinatorError, Result},
    journal::Durable,
    model::{CreateSpec, Request, StepRun, TxKind, TxRecord, TxState},
    planner::{self, Plan},
    ports::Pending,
    queue::Blocked,
    tables::Tables,
    txn::{PRESUMED_ABORT, Transaction, events},
};

/// Decides whether the caller may carry out a plan: `Err` (a
/// [`CoordinatorError::Denied`]) refuses it before anything is written.
pub type Authorize<'a> = &'a (dyn Fn(&Plan) -> Result<()> + Sync);

/// The answer to an idempotent retry, given once it may be given: a refusal at once,
/// an acceptance once everything written before it is durable.
type Replayed = std::pin::Pin<Box<dyn Future<Output = Result<Created>> + Send>>;

/// What a new transaction's write resolves to: its first event's sequence number.
type Written = std::pin::Pin<Box<dyn Future<Output = Result<u64>> + Send>>;

/// What looking a request's id up found.
enum Lookup {
    /// A transaction under the id: the answer to the retry.
    Replay(Replayed),
    /// The id is free (`None`: the request names none).
    Free(Option<TxId>),
    /// Not known yet: read it (as of `State::departed`) and try again.
    Unread(TxId, u64),
}

impl Lookup {
    /// The free id, or the step that ends this try.
    fn free(self) -> std::result::Result<Option<TxId>, Step> {
        match self {
            Lookup::Free(id) => Ok(id),
            Lookup::Replay(replayed) => Err(Step::Replay(replayed)),
            Lookup::Unread(id, departed) => Err(Step::Read(id, departed)),
        }
    }
}

/// How one try at admission ended.
enum Step {
    /// An id must be read from the store first, outside the lock.
    Read(TxId, u64),
    /// The id is taken: the answer to a retry.
    Replay(Replayed),
    /// Accepted: the answer, once its write resolves.
    Accepted(Box<Created>, Written),
}

/// A transaction under an id as far as the lock's holder knows, or the id to read first.
type Found<T = Option<TxRecord>> = std::result::Result<T, TxId>;

/// Ids read outside the lock before an admission reads under it, as it did before
/// stop 60: a chain of ids that keep being taken cannot hold an admission off.
const READS: u32 = 8;

/// What one admission has read outside the state lock, so that a slow store (an etcd
/// round trip, retried) never holds every other call while it looks up an id: the
/// records under the ids it needed, and the plan made before a read turned out to be
/// needed (kept while nothing it read has changed). A record read here is still the
/// truth under the lock unless its transaction left memory since the read
/// (`State::departed_since`): one admitted after the read is in memory until it
/// leaves, and it leaves only once its end is in the store.
struct Stored {
    /// Per id: the departure count when it was read, and what the store held.
    records: BTreeMap<TxId, (u64, Option<TxRecord>)>,
    reads: u32,
    plan: Option<(u64, Result<Plan>)>,
}

impl Stored {
    fn new() -> Self {
        Self {
            records: BTreeMap::new(),
            reads: READS,
            plan: None,
        }
    }

    /// Reads `id` from the store; `departed` is the count when the lock's holder missed it.
    fn read(&mut self, tables: &Tables, id: TxId, departed: u64) -> Result<()> {
        self.reads = self.reads.saturating_sub(1);
        let record = tables.transaction(&id)?;
        self.records.insert(id, (departed, record));
        Ok(())
    }
}

/// `replayed`, if the caller may see it carried out.
fn authorized(replayed: Result<Created>, authorize: Authorize<'_>) -> Result<Created> {
    let created = replayed?;
    authorize(&created.plan)?;
    Ok(created)
}

/// Answer to a create call.
pub struct Created {
    /// The transaction (None for a dry run).
    pub transaction: Option<TxRecord>,
    /// Its plan.
    pub plan: Plan,
    /// Waiting behind these transactions.
    pub waits_for: Vec<TxId>,
    /// False for an idempotent retry.
    pub created: bool,
    /// Sequence number of its first event (0 when not known).
    pub first_event_seq: u64,
}

impl Registry {
    /// Plans a transaction, accepts it durably and queues it. Resolves once the
    /// transaction is durable ("nothing valid is lost"); a failed write stops the
    /// coordinator (fail-stop), and recovery then aborts it.
    ///
    /// `authorize` sees the final plan (what the transaction would change) before
    /// anything is written, so a caller allowed some projects only can never start a
    /// transaction that touches another, however the plan came out.
    pub async fn admit(&self, spec: CreateSpec, authorize: Authorize<'_>) -> Result<Created> {
        let mut stored = Stored::new();
        loop {
            match self.try_admit(&spec, authorize, &mut stored)? {
                Step::Read(id, departed) => stored.read(&self.inner.tables, id, departed)?,
                Step::Replay(replayed) => return replayed.await,
                Step::Accepted(created, written) => {
                    let first_event_seq = written.await?;
                    let created = Created {
                        first_event_seq,
                        ..*created
                    };
                    return Ok(created);
                }
            }
        }
    }

    /// One try: the id looked up (before planning, so that a read costs no plan), the
    /// plan, the id looked up again under the plan's lock, and acceptance.
    fn try_admit(
        &self,
        spec: &CreateSpec,
        authorize: Authorize<'_>,
        stored: &mut Stored,
    ) -> Result<Step> {
        if let Err(step) = self.admitted_as(&self.state(), spec, authorize, stored)? {
            return Ok(step);
        }
        let (mut s, plan) = self.planned(spec, stored.plan.take());
        // Someone may have created the same id while this one was planned.
        let id = match self.admitted_as(&s, spec, authorize, stored)? {
            Ok(id) => id,
            Err(step) => {
                stored.plan = Some((s.generation(&spec.environment), plan));
                return Ok(step);
            }
        };
        let plan = plan?;
        authorize(&plan)?;
        self.accept(&mut s, spec, plan, id)
    }

    /// The plan of `spec` under the lock: `kept` from an earlier try while nothing a
    /// plan reads has changed since (see `planning`), else a new one.
    fn planned(
        &self,
        spec: &CreateSpec,
        kept: Option<(u64, Result<Plan>)>,
    ) -> (MutexGuard<'_, State>, Result<Plan>) {
        if let Some((generation, plan)) = kept {
            let s = self.state();
            if s.generation(&spec.environment) == generation {
                return (s, plan);
            }
        }
        self.plan_for(&spec.environment, &spec.request)
    }

    /// The id `spec` would be admitted under (the one it names, or a fresh one), or
    /// the step that ends this try: a retry's answer, or an id to read first.
    fn admitted_as(
        &self,
        s: &State,
        spec: &CreateSpec,
        authorize: Authorize<'_>,
        stored: &Stored,
    ) -> Result<std::result::Result<TxId, Step>> {
        let hint = spec.id_hint.as_deref().unwrap_or("tx");
        Ok(match self.replayed(s, spec, authorize, stored)?.free() {
            Ok(Some(id)) => Ok(id),
            Ok(None) => self
                .fresh_id(s, hint, stored)?
                .map_err(|unread| Step::Read(unread, s.departed)),
            Err(step) => Err(step),
        })
    }

    /// The answer to an idempotent retry, when `spec`'s id exists already, resolving
    /// once everything written before it is durable: the transaction may have been
    /// accepted an instant ago by the first call, its record not yet synced, and a
    /// retry must not hear "accepted" before the first call would have. A refusal
    /// (another request under the id, or a caller who may not) is answered at once
    /// and writes nothing, so nobody can make the coordinator sync at will.
    /// One lookup of the id (in memory, or as `stored` read it), whose answer `accept`
    /// reuses.
    fn replayed(
        &self,
        s: &State,
        spec: &CreateSpec,
        authorize: Authorize<'_>,
        stored: &Stored,
    ) -> Result<Lookup> {
        let existing = match self.attempt(s, spec, stored)? {
            Some((_, Ok(Some(existing)))) => existing,
            Some((id, Ok(None))) => return Ok(Lookup::Free(Some(id))),
            Some((_, Err(unread))) => return Ok(Lookup::Unread(unread, s.departed)),
            None => return Ok(Lookup::Free(None)),
        };
        let answer = authorized(replay(s, existing, spec), authorize);
        // Resolves once every write before it is durable, the first call's included;
        // it writes nothing.
        let durable = answer.is_ok().then(|| self.inner.journal.settled());
        Ok(Lookup::Replay(Box::pin(async move {
            if let Some(durable) = durable {
                durable.await?;
            }
            answer
        })))
    }

    /// The plan and who it would wait for, without writing anything (dry runs).
    pub fn plan_only(
        &self,
        spec: &CreateSpec,
        authorize: Authorize<'_>,
    ) -> Result<(Plan, Vec<TxId>)> {
        let (s, plan) = self.plan_for(&spec.environment, &spec.request);
        let plan = plan?;
        authorize(&plan)?;
        let waits_for = s.queue.waits_for(&spec.environment, &plan.held(), None);
        Ok((plan, waits_for))
    }

    /// Accepts `plan` under `id` (free, as [`Registry::admitted_as`] just found it).
    fn accept(&self, s: &mut State, spec: &CreateSpec, plan: Plan, id: TxId) -> Result<Step> {
        let waits_for = s.queue.waits_for(&spec.environment, &plan.held(), None);
        if !plan.allowed() {
            return Err(CoordinatorError::Refused(plan.refusal()));
        }
        // An id the coordinator chose, or one it makes again after a restart, would be
        // chosen again if this admission were lost: it reaches no agent before it is
        // durable.
        let made_here = spec.id.is_none() || spec.again_after_restart;
        let ordinal = s.next_ordinal;
        s.next_ordinal += 1;
        let mut record = self.new_record(id.clone(), ordinal, spec, &plan);
        record.steps = verify_steps(s, spec);
        let blocked = s
            .queue
            .enqueue(ordinal, id, &record.environment, plan.held());
        let (record, written) = self.start(s, record, blocked, made_here);
        let created = Created {
            transaction: Some(record),
            plan,
            waits_for,
            created: true,
            first_event_seq: 0,
        };
        Ok(Step::Accepted(Box::new(created), Box::pin(written)))
    }

    fn new_record(&self, id: TxId, ordinal: u64, spec: &CreateSpec, plan: &Plan) -> TxRecord {
        let timeout = spec.prepare_timeout;
        let timeout = timeout.unwrap_or(self.inner.settings.default_prepare_timeout);
        TxRecord {
            id,
            ordinal,
            environment: spec.environment.clone(),
            kind: kind_of(&spec.request),
            request: spec.request.clone(),
            state: TxState::Pending,
            participants: plan.participants.clone(),
            waves: plan.waves.clone(),
            reason: String::new(),
            reverts: plan.reverts.clone(),
            rollback_to: plan.rollback_to,
            forced: plan.forced,
            quarantined: false,
            checkpoint: 0,
            prepare_timeout_ms: timeout.as_millis() as u64,
            created_ms: self.now(),
            finished_ms: 0,
            prepare_sent: false,
            created_by: spec.actor.clone(),
            authority: spec.authority.clone(),
            ticket: spec.ticket.clone(),
            steps: Vec::new(),
            promoted_from: spec.promoted_from.clone(),
            live_check: Default::default(),
            // The creating call's span is current here.
            trace_parent: lockstep::trace::current_traceparent(),
            held_reads: plan.reads.clone(),
        }
    }

    /// Writes the new record and starts its driver: queued behind `blocked`, or with
    /// phase 1 starting in the same write as the creation. The driver sends Prepare
    /// while that write is being synced; safe under presumed abort: if the write is
    /// lost in a crash, the coordinator answers ABORT to a participant asking about it,
    /// and prepared participants do ask when no decision comes. But an id the
    /// coordinator made (`made_here`: `tx-N`, `revert-T2`, an automatic revert's) would
    /// be made again after such a loss, and an agent that prepared and aborted the lost
    /// one refuses the new one ("already aborted here"): its Prepare waits until the
    /// creation is durable (stop 56). A client's own id is the client's to retry.
    fn start(
        &self,
        s: &mut State,
        mut record: TxRecord,
        blocked: Option<Blocked>,
        made_here: bool,
    ) -> (TxRecord, impl Future<Output = Result<u64>> + use<>) {
        let created = describe_request(&record);
        let mut created = events::event(&record, pb::EventKind::TransactionCreated, None, created);
        created.actor = record.created_by.clone();
        let mut written = vec![created];
        if let Some((from, checkpoint)) = &record.promoted_from {
            let promoted = format!("promoted from {from} checkpoint {checkpoint}");
            let kind = pb::EventKind::PromotionCreated;
            let mut promoted = events::event(&record, kind, None, promoted);
            promoted.actor = record.created_by.clone();
            written.push(promoted);
        }
        if let Some(b) = &blocked {
            record.reason = b.explain();
            let queued = pb::EventKind::TransactionQueued;
            written.push(events::event(
                &record,
                queued,
                Some(&b.project),
                b.explain(),
            ));
        }
        let mut machine = Transaction::new(record, self.inner.settings.backoff);
        if blocked.is_none() {
            written.push(machine.start_preparing());
        }
        let record = machine.record().clone();
        let mut batch = Batch::default();
        Tables::put_transaction(&mut batch, &record);
        // Durable before the client hears "accepted", but it forces no fsync of its
        // own: the COMMIT decision written moments later (or the syncer's linger) syncs it.
        let durability = self.inner.journal.under_load(Durable::Soon, s.active.len());
        let pending = self.inner.journal.append(batch, written, durability);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (start, start_rx) = match blocked {
            Some(_) => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let active = Active {
            record: record.clone(),
            start,
            commands,
        };
        s.active.insert(record.id.clone(), active);
        let first = machine.begin();
        // Queued, its start write is awaited before Prepare anyway.
        let taken = (made_here && start_rx.is_none())
            .then(|| Box::pin(self.inner.journal.settled()) as Pending<Result<()>>);
        self.spawn_driver(machine, first, start_rx, commands_rx, taken);
        (record, pending)
    }

    /// A transaction by id: memory for unfinished ones, storage otherwise, read once
    /// the lock is let go (see [`Stored`]). A record read there that has not ended is
    /// one admitted meanwhile, whose write is not yet durable: memory answers for it,
    /// as it would have had the read been made under the lock.
    pub(super) fn existing(&self, s: MutexGuard<'_, State>, id: &TxId) -> Result<Option<TxRecord>> {
        if let Some(a) = s.active.get(id) {
            return Ok(Some(a.record.clone()));
        }
        drop(s);
        let stored = self.inner.tables.transaction(id)?;
        if stored.as_ref().is_none_or(|r| r.finished_ms != 0) {
            return Ok(stored);
        }
        if let Some(a) = self.state().active.get(id) {
            return Ok(Some(a.record.clone()));
        }
        // It left memory since, so its end is in the store: read without the lock.
        Ok(self.inner.tables.transaction(id)?)
    }

    /// The transaction under `id`, from memory, from `stored` while it is current, or,
    /// once `stored` has run out of reads, from the store under the lock.
    fn known(&self, s: &State, stored: &Stored, id: &TxId) -> Result<Found> {
        if let Some(a) = s.active.get(id) {
            return Ok(Ok(Some(a.record.clone())));
        }
        if stored.reads == 0 {
            return Ok(Ok(self.inner.tables.transaction(id)?));
        }
        match stored.records.get(id) {
            Some((read_at, record)) if !s.departed_since(*read_at, id) => Ok(Ok(record.clone())),
            _ => Ok(Err(id.clone())),
        }
    }

    /// The id `spec` is admitted under, with the transaction already under it, if any
    /// (read once): the one it names; for the coordinator's own
    /// transaction made again at a start ([`CreateSpec::again_after_restart`]), the
    /// first of `ID`, `ID-2`, `ID-3`... that is not an attempt a restart aborted before
    /// its decision, so that the retry is not answered with that abort.
    fn attempt(
        &self,
        s: &State,
        spec: &CreateSpec,
        stored: &Stored,
    ) -> Result<Option<(TxId, Found)>> {
        let Some(id) = &spec.id else { return Ok(None) };
        let mut attempt = id.clone();
        for n in 2.. {
            match self.known(s, stored, &attempt)? {
                Ok(Some(cut_off))
                    if spec.again_after_restart && cut_off.reason == PRESUMED_ABORT =>
                {
                    attempt = TxId::derived(&format!("{id}-{n}"));
                }
                found => return Ok(Some((attempt, found))),
            }
        }
        unreachable!("2.. is unbounded")
    }

    /// The first free id of `hint`, `hint-2`, ... (`tx`: `tx-` and the next ordinal).
    fn fresh_id(&self, s: &State, hint: &str, stored: &Stored) -> Result<Found<TxId>> {
        let hint = if hint == "tx" {
            format!("tx-{}", s.next_ordinal)
        } else {
            hint.to_string()
        };
        for n in 1.. {
            let candidate = match n {
                1 => hint.clone(),
                n => format!("{hint}-{n}"),
            };
            let id = TxId::derived(&candidate);
            match self.known(s, stored, &id)? {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(Ok(id)),
                Err(unread) => return Ok(Err(unread)),
            }
        }
        unreachable!("1.. is unbounded")
    }
}

/// An idempotent retry: the same id with the same request returns the transaction.
fn replay(s: &State, existing: TxRecord, spec: &CreateSpec) -> Result<Created> {
    if existing.request != spec.request || existing.environment != spec.environment {
        return Err(CoordinatorError::AlreadyExists(format!(
            "id: transaction {} already exists with different content; choose another id",
            existing.id
        )));
    }
    let plan = Plan {
        participants: existing.participants.clone(),
        waves: existing.waves.clone(),
        preconditions: Vec::new(),
        forced: existing.forced,
        reverts: existing.reverts.clone(),
        rollback_to: existing.rollback_to,
        reads: Default::default(),
    };
    // As the first answer said: who it waits for, if it still waits.
    let wanted = (s.active.get(&existing.id)).and_then(|_| s.queue.wanted_by(existing.ordinal));
    let env = &existing.environment;
    let waits_for = wanted.map(|w| s.queue.waits_for(env, &w, Some(existing.ordinal)));
    Ok(Created {
        transaction: Some(existing),
        plan,
        waits_for: waits_for.unwrap_or_default(),
        created: false,
        first_event_seq: 0,
    })
}

fn kind_of(request: &Request) -> TxKind {
    match request {
        Request::Release { .. } | Request::Promote { .. } => TxKind::Release,
        Request::Revert { .. } => TxKind::Revert,
        Request::Rollback { .. } => TxKind::Rollback,
    }
}

/// `release T4: A=T4A B=T4B C=T4C`.
fn describe_request(tx: &TxRecord) -> String {
    let changes: Vec<String> = tx
        .participants
        .iter()
        .map(|p| format!("{}={}", p.project, p.to_version))
        .collect();
    format!(
        "{}: {}",
        planner::checkpoint_description(tx),
        changes.join(" ")
    )
}

/// The verify steps a new transaction runs: its environment's, as they are now, for a
/// release. A revert or rollback restores a state that was live before and runs none,
/// so that undoing a bad release is never held up by the tests that let it through.
fn verify_steps(s: &State, spec: &CreateSpec) -> Vec<StepRun> {
    if !matches!(
        spec.request,
        Request::Release { .. } | Request::Promote { .. }
    ) {
        return Vec::new();
    }
    let env = s.environments.get(&spec.environment);
    let steps = env.map(|e| e.stages.verify.clone()).unwrap_or_default();
    steps.into_iter().map(StepRun::waiting).collect()
}
