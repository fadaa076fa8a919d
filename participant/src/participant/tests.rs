//! Unit tests of the participant's protocol rules.

#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use lockstep_store::{MemKv, WriterMode};
use tokio::sync::Notify;

use lockstep::{
    names::{Environment, ProjectName, TxId, Version},
    orders::PrepareOrder,
};

use super::*;
use crate::deployer::{Refusal, Staged};

/// Stages only when the test lets it.
#[derive(Default)]
struct Gated {
    open: Notify,
}

impl Deployer for Gated {
    async fn stage(&self, _change: &Change) -> Result<Staged, Refusal> {
        self.open.notified().await;
        Ok(Staged::default())
    }

    async fn go_live(&self, _change: &Change, _staged: &Staged) -> Result<(), DeployError> {
        Ok(())
    }

    async fn undo(&self, _change: &Change, _staged: Option<&Staged>) -> Result<(), DeployError> {
        Ok(())
    }

    async fn live_version(&self) -> Result<Option<String>, DeployError> {
        Ok(None)
    }
}

#[tokio::test]
async fn a_prepare_repeated_while_staging_gets_the_same_vote() {
    let ledger = Ledger::open(Arc::new(MemKv::new()), WriterMode::Task).unwrap();
    let p = Participant::new(
        "api".into(),
        "production".into(),
        Gated::default(),
        None,
        ledger,
        None,
    );
    let request = order("T4");
    let first = tokio::spawn({
        let (p, r) = (p.clone(), request.clone());
        async move { p.prepare(r).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !matches!(p.inner.ledger.get("T4"), Ok(Some(e)) if e.phase == Phase::Staging) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "staging never started"
        );
        tokio::task::yield_now().await;
    }
    let again = tokio::spawn({
        let (p, r) = (p.clone(), request.clone());
        async move { p.prepare(r).await }
    });
    // Single-threaded test runtime: let the repeat run until it waits.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!again.is_finished(), "the repeat must wait for the vote");
    p.inner.deployer.open.notify_one();
    for answer in [first.await.unwrap().unwrap(), again.await.unwrap().unwrap()] {
        assert!(matches!(answer, VoteAnswer::Prepared(_)), "{answer:?}");
    }
}

/// Keeps what is staged per transaction, as a real deployer's files would, and lets the
/// test hold `live_version` (read under the participant's lock before staging starts).
#[derive(Default)]
struct Tracked {
    hold_live: std::sync::atomic::AtomicBool,
    live_gate: Notify,
    staged: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Tracked {
    fn staged(&self) -> Vec<String> {
        self.staged.lock().unwrap().iter().cloned().collect()
    }
}

impl Deployer for Tracked {
    async fn stage(&self, change: &Change) -> Result<Staged, Refusal> {
        self.staged
            .lock()
            .unwrap()
            .insert(change.transaction_id.clone());
        Ok(Staged::default())
    }

    async fn go_live(&self, _change: &Change, _staged: &Staged) -> Result<(), DeployError> {
        Ok(())
    }

    async fn undo(&self, change: &Change, _staged: Option<&Staged>) -> Result<(), DeployError> {
        self.discard_unrecorded(&change.transaction_id).await
    }

    async fn discard_unrecorded(&self, tx: &str) -> Result<(), DeployError> {
        self.staged.lock().unwrap().remove(tx);
        Ok(())
    }

    async fn live_version(&self) -> Result<Option<String>, DeployError> {
        if self
            .hold_live
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.live_gate.notified().await;
        }
        Ok(None)
    }
}

fn order(tx: &str) -> PrepareOrder {
    PrepareOrder {
        tx: TxId::parse("id", tx).unwrap(),
        environment: Environment::parse("e", "production").unwrap(),
        project: ProjectName::parse("p", "api").unwrap(),
        version: Version::parse("v", "v2").unwrap(),
        from_version: None,
        artifact: String::new(),
        metadata: Default::default(),
        action: None,
        incarnation: String::new(),
        restore: false,
        target_schema: None,
    }
}

fn abort_order(tx: &str) -> lockstep::orders::AbortOrder {
    lockstep::orders::AbortOrder {
        tx: TxId::parse("id", tx).unwrap(),
        project: None,
        reason: "the coordinator decided ABORT".into(),
        incarnation: String::new(),
    }
}

fn tracked() -> Participant<Tracked> {
    tracked_asking(None)
}

/// A [`Tracked`] participant that asks `decisions` (when given) about votes that wait.
fn tracked_asking(decisions: Option<Decisions>) -> Participant<Tracked> {
    let ledger = Ledger::open(Arc::new(MemKv::new()), WriterMode::Task).unwrap();
    Participant::new(
        "api".into(),
        "production".into(),
        Tracked::default(),
        None,
        ledger,
        decisions,
    )
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn an_abort_that_arrives_while_a_prepare_checks_its_preconditions_wins() {
    let p = tracked();
    p.inner
        .deployer
        .hold_live
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let prepare = tokio::spawn({
        let p = p.clone();
        async move { p.prepare(order("T4")).await }
    });
    settle().await;
    // The Prepare holds the lock, reading what is live; the Abort arrives now.
    let abort = tokio::spawn({
        let p = p.clone();
        async move { p.abort(&abort_order("T4")).await }
    });
    settle().await;
    p.inner.deployer.live_gate.notify_one();
    let vote = prepare.await.unwrap().unwrap();
    abort.await.unwrap().unwrap();

    assert!(matches!(vote, VoteAnswer::Refused(_)), "{vote:?}");
    let entry = p.inner.ledger.get("T4").unwrap().unwrap();
    assert_eq!(entry.phase, Phase::Aborted);
    assert_eq!(p.inner.deployer.staged(), Vec::<String>::new());
    assert!(!p.is_prepared(&TxId::parse("id", "T4").unwrap()));
}

#[tokio::test]
async fn an_abort_without_a_record_still_undoes_what_a_lost_staging_record_left() {
    let p = tracked();
    // As after a crash that lost the Staging record: the files are there, the ledger
    // knows nothing of T4.
    let change = change_of(&order("T4"));
    p.inner.deployer.stage(&change).await.unwrap();

    p.abort(&abort_order("T4")).await.unwrap();

    assert_eq!(p.inner.deployer.staged(), Vec::<String>::new());
    let vote = p.prepare(order("T4")).await.unwrap();
    assert!(
        matches!(vote, VoteAnswer::Refused(_)),
        "a late Prepare is refused"
    );
}

/// Answers every question as `answer` says (COMMIT in term 0 unless set), and keeps
/// which transactions were asked about.
struct Answering {
    asked: std::sync::Mutex<Vec<String>>,
    answer: std::sync::Mutex<Answer>,
}

impl Default for Answering {
    fn default() -> Self {
        let answer = Answer {
            decision: lockstep::orders::Decision::Commit,
            term: Some(0),
        };
        Self {
            asked: Default::default(),
            answer: std::sync::Mutex::new(answer),
        }
    }
}

impl DecisionSource for Answering {
    fn decision(&self, question: &Question) -> Pending<Result<Answer, String>> {
        self.asked.lock().unwrap().push(question.tx.to_string());
        let answer = *self.answer.lock().unwrap();
        Box::pin(async move { Ok(answer) })
    }
}

/// Review finding of stop 60: a deposed leader that still answers GetDecision does
/// not know a transaction its successor admitted an instant ago and presumes it
/// aborted, while the successor commits it. Given T4 prepared under term 2, when an
/// instance of term 1 answers ABORT, then T4 stays prepared; the answer of term 2
/// decides it.
#[tokio::test]
async fn a_decision_answered_in_an_older_term_is_not_acted_on() {
    let source = Arc::new(Answering::default());
    *source.answer.lock().unwrap() = Answer {
        decision: lockstep::orders::Decision::Abort,
        term: Some(1),
    };
    let decisions = Decisions {
        source: source.clone(),
        ask_after: Duration::from_millis(20),
    };
    let p = tracked_asking(Some(decisions));
    p.admit_term(2).await.unwrap();
    let vote = p.prepare(order("T4")).await.unwrap();
    assert!(matches!(vote, VoteAnswer::Prepared(_)), "{vote:?}");

    let t4 = TxId::parse("id", "T4").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while source.asked.lock().unwrap().len() < 3 && p.is_prepared(&t4) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "T4 was not asked about"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(p.is_prepared(&t4), "a deposed leader's ABORT was acted on");
    assert_eq!(p.inner.deployer.staged(), ["T4"]);

    *source.answer.lock().unwrap() = Answer {
        decision: lockstep::orders::Decision::Commit,
        term: Some(2),
    };
    while p.is_prepared(&t4) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "term 2's COMMIT was not applied"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let phase = p.inner.ledger.get("T4").unwrap().unwrap().phase;
    assert_eq!(phase, Phase::Committed);
}

#[tokio::test]
async fn only_a_vote_left_waiting_past_ask_after_is_asked_about() {
    let source = Arc::new(Answering::default());
    let decisions = Decisions {
        source: source.clone(),
        ask_after: Duration::from_millis(50),
    };
    let p = tracked_asking(Some(decisions));
    // T3 is decided at once; T4, voted after it, waits for a Commit that never comes.
    let vote = p.prepare(order("T3")).await.unwrap();
    assert!(matches!(vote, VoteAnswer::Prepared(_)), "{vote:?}");
    let commit = lockstep::orders::CommitOrder {
        tx: TxId::parse("id", "T3").unwrap(),
        project: None,
        incarnation: String::new(),
    };
    p.commit(&commit).await.unwrap();
    let vote = p.prepare(order("T4")).await.unwrap();
    assert!(matches!(vote, VoteAnswer::Prepared(_)), "{vote:?}");

    let t4 = TxId::parse("id", "T4").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.is_prepared(&t4) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "T4 was never asked about"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        p.inner.ledger.get("T4").unwrap().unwrap().phase,
        Phase::Committed
    );
    // T3 waited as long as T4 did, but was decided: nobody asked about it.
    assert_eq!(*source.asked.lock().unwrap(), ["T4"]);
}

/// Given T1 prepared here with a test instance of v2 up (blue/green), when T2 for the
/// same version is refused as busy and then aborted, then the Abort undoes nothing:
/// T1's test instance keeps running and no abort hook runs for T2, which staged
/// nothing here.
#[tokio::test]
async fn an_abort_of_a_refused_transaction_touches_nothing_staged() {
    use crate::agent::{FsDeployer, Hooks};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    let hooks = Hooks {
        serve: Some(format!(
            "echo $LOCKSTEP_PHASE $LOCKSTEP_TX $LOCKSTEP_VERSION >> {0}; echo http://127.0.0.1:9301/",
            log.display()
        )),
        abort: Some(format!("echo abort $LOCKSTEP_TX >> {}", log.display())),
        ..Hooks::default()
    };
    let deployer = FsDeployer::new(dir.path().join("deploy"), hooks).unwrap();
    let ledger = Ledger::open(Arc::new(MemKv::new()), WriterMode::Task).unwrap();
    let p = Participant::new(
        "api".into(),
        "production".into(),
        deployer,
        None,
        ledger,
        None,
    );
    let first = p.prepare(order("T1")).await.unwrap();
    assert!(matches!(first, VoteAnswer::Prepared(_)), "{first:?}");
    let second = p.prepare(order("T2")).await.unwrap();
    assert!(
        matches!(&second, VoteAnswer::Refused(r) if r.contains("busy")),
        "{second:?}"
    );

    p.abort(&abort_order("T2")).await.unwrap();

    let hooks = std::fs::read_to_string(&log).unwrap();
    assert_eq!(hooks, "serve T1 v2\n", "T2's Abort ran hooks");
    assert!(p.inner.deployer.release_dir("v2").is_dir());
}

/// Panics while staging, as a deployer with a bug might.
struct Panicking;

impl Deployer for Panicking {
    async fn stage(&self, _change: &Change) -> Result<Staged, Refusal> {
        panic!("a deployer bug while staging")
    }

    async fn go_live(&self, _change: &Change, _staged: &Staged) -> Result<(), DeployError> {
        Ok(())
    }

    async fn undo(&self, _change: &Change, _staged: Option<&Staged>) -> Result<(), DeployError> {
        Ok(())
    }

    async fn live_version(&self) -> Result<Option<String>, DeployError> {
        Ok(None)
    }
}

// Review finding of stop 55: a staging task that panicked never took its transaction
// out of the in-flight map nor sent a vote, so the Abort the coordinator then sent
// waited for that vote in a loop for ever (and the transaction stayed open, so every
// later Prepare was refused as busy).
#[tokio::test]
async fn an_abort_after_staging_panicked_ends_and_frees_the_participant() {
    let ledger = Ledger::open(Arc::new(MemKv::new()), WriterMode::Task).unwrap();
    let p = Participant::new(
        "api".into(),
        "production".into(),
        Panicking,
        None,
        ledger,
        None,
    );
    let vote = p.prepare(order("T1")).await.unwrap();
    assert!(matches!(vote, VoteAnswer::Refused(_)), "{vote:?}");

    let aborted = tokio::time::timeout(Duration::from_secs(10), p.abort(&abort_order("T1"))).await;

    aborted.expect("the Abort never ended").unwrap();
    let phase = p.inner.ledger.get("T1").unwrap().map(|e| e.phase);
    assert_eq!(phase, Some(Phase::Aborted));
    assert!(p.inner.ledger.open_ids().is_empty(), "T1 is still open");
}

/// A disk whose fsync fails and, when full, whose writes fail too.
#[derive(Default)]
struct SyncFails(MemKv, bool);

impl lockstep_store::Kv for SyncFails {
    fn get(
        &self,
        table: &'static str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, lockstep_store::StoreError> {
        self.0.get(table, key)
    }

    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        to: Option<&[u8]>,
        order: lockstep_store::Order,
        limit: usize,
    ) -> Result<Vec<lockstep_store::Entry>, lockstep_store::StoreError> {
        self.0.scan(table, from, to, order, limit)
    }

    fn write(
        &self,
        batch: lockstep_store::Batch,
        durability: lockstep_store::Durability,
    ) -> Result<(), lockstep_store::StoreError> {
        if self.1 {
            let full = "IO error: No space left on device (test)";
            return Err(lockstep_store::StoreError::Stopped(full.into()));
        }
        self.0.write(batch, durability)
    }

    fn sync(&self) -> Result<(), lockstep_store::StoreError> {
        Err(lockstep_store::StoreError::Corrupt(
            "fsync failed (test)".into(),
        ))
    }
}

// Review finding of stop 55: when the PREPARED record's fsync failed, the vote went out
// REFUSED, but the record stayed readable (in memory and in the store's memtable), so
// a repeated Prepare, before the agent's fail-stop, was answered PREPARED from a record
// that never reached the disk.
#[tokio::test]
async fn a_vote_whose_record_failed_to_sync_is_never_answered_prepared() {
    let ledger = Ledger::open(Arc::new(SyncFails::default()), WriterMode::Task).unwrap();
    let p = Participant::new(
        "api".into(),
        "production".into(),
        Tracked::default(),
        None,
        ledger,
        None,
    );
    let first = p.prepare(order("T1")).await.unwrap();
    assert!(matches!(first, VoteAnswer::Refused(_)), "{first:?}");

    let again = p.prepare(order("T1")).await;

    assert!(!matches!(again, Ok(VoteAnswer::Prepared(_))), "{again:?}");
}

/// Review finding of stop 60: when the Staging record (the intent a restart undoes)
/// could not be written, staging went ahead all the same, and what it staged (a
/// reversible migration applied to the database) was left behind with no record to
/// undo it. Given a full disk, when a Prepare comes, then nothing is staged.
#[tokio::test]
async fn nothing_is_staged_when_its_intent_cannot_be_recorded() {
    let full = SyncFails(MemKv::new(), true);
    let ledger = Ledger::open(Arc::new(full), WriterMode::Task).unwrap();
    let p = Participant::new(
        "api".into(),
        "production".into(),
        Tracked::default(),
        None,
        ledger,
        None,
    );

    let vote = p.prepare(order("T1")).await;

    assert!(!matches!(vote, Ok(VoteAnswer::Prepared(_))), "{vote:?}");
    settle().await;
    assert_eq!(p.inner.deployer.staged(), Vec::<String>::new());
}

/// Review finding of stop 64: an Abort checked the incarnation of the recorded
/// transaction before it took the participant's lock, and not again after. Given an
/// Abort of T7 from one coordinator incarnation that found no record and waits for the
/// lock, when another incarnation's Prepare of T7 records its PREPARED vote meanwhile,
/// then the Abort leaves that vote as it is: only the coordinator that made a
/// transaction decides it.
#[tokio::test]
async fn an_abort_from_another_incarnation_never_undoes_a_vote_recorded_while_it_waited() {
    let p = tracked();
    let guard = p.inner.lock.lock().await;
    let abort = tokio::spawn({
        let p = p.clone();
        let mut order = abort_order("T7");
        order.incarnation = "incarnation-a".into();
        async move { p.abort(&order).await }
    });
    settle().await;
    // What the other incarnation's Prepare left, under the lock the Abort waits for.
    let prepare = PrepareOrder {
        incarnation: "incarnation-b".into(),
        ..order("T7")
    };
    let change = change_of(&prepare);
    let staged = p.inner.deployer.stage(&change).await.unwrap();
    let entry = Entry {
        change: Some(change),
        phase: Phase::Prepared,
        staged: Some(staged),
        schema: None,
        reason: String::new(),
        incarnation: "incarnation-b".into(),
    };
    p.record("T7", &entry, Durability::Sync).await.unwrap();
    drop(guard);
    abort.await.unwrap().unwrap();

    let entry = p.inner.ledger.get("T7").unwrap().unwrap();
    assert_eq!(entry.phase, Phase::Prepared, "{entry:?}");
    assert_eq!(p.inner.deployer.staged(), vec!["T7".to_string()]);
}
