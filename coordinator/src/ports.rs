//! The two narrow ports through which a transaction's effects reach the world: the
//! participant network (domain orders in, domain answers out) and the journal (durable
//! records and events, and what readers see). The driver, recovery and dry runs use
//! them; production implements the network over gRPC (the `network` module) and the
//! journal over RocksDB (the `registry` module); the simulation plugs its network in
//! underneath the gRPC one.

use std::{future::Future, pin::Pin};

use lockstep::{
    names::{Environment, ProjectName, TxId},
    orders::{AbortOrder, CommitOrder, PrepareOrder, Schema, VoteAnswer},
    pb,
    retry::Failure,
};

use crate::{
    error::Result,
    model::{Participant, TxRecord},
};

/// A boxed future that a port returns.
pub type Pending<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a participant's read-only Preview says its Prepare would do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preview {
    /// Whether it would vote PREPARED.
    pub would_prepare: bool,
    /// Why not.
    pub reason: String,
    /// Schema live now.
    pub from_schema: Option<Schema>,
    /// Schema it would stage.
    pub to_schema: Option<Schema>,
    /// Migration files it would run.
    pub migrations: Vec<String>,
}

/// What a participant's GetStatus says it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Project it serves.
    pub project: String,
    /// Environment it serves.
    pub environment: String,
    /// Version live there ("" none).
    pub live_version: String,
    /// Schema live there.
    pub schema: Option<Schema>,
    /// Staged and waiting for a decision: (transaction, version).
    pub staged: Vec<(String, String)>,
}

/// The participant network.
///
/// # To ensure correctness
/// - A [`Failure::Transient`] means the order may not have been carried out; the
///   protocol sends it again (every order is idempotent per transaction id). A
///   [`Failure::Final`] is the participant's own answer.
/// - Dropping a returned future abandons the call; it never cancels a decision.
pub trait Participants: Send + Sync + 'static {
    /// Phase 1: the participant's vote.
    fn prepare(&self, endpoint: &str, order: PrepareOrder) -> Pending<Result<VoteAnswer, Failure>>;
    /// Phase 2 after COMMIT: `Ok` once the participant acknowledged.
    fn commit(&self, endpoint: &str, order: CommitOrder) -> Pending<Result<(), Failure>>;
    /// Phase 2 after ABORT: `Ok` once the participant acknowledged.
    fn abort(&self, endpoint: &str, order: AbortOrder) -> Pending<Result<(), Failure>>;
    /// A dry run: what Prepare would do, without staging anything.
    fn preview(&self, endpoint: &str, order: PrepareOrder) -> Pending<Result<Preview, String>>;
    /// What the participant runs now (registration checks, `live --observed`, drift).
    fn status(&self, endpoint: &str) -> Pending<Result<Observed, String>>;
}

/// The requests of http verify steps.
pub trait Probe: Send + Sync + 'static {
    /// GET `url`: the answer's status, or why there is none.
    fn get(&self, url: &str) -> Pending<Result<u16, String>>;
}

/// The journal as a transaction's driver sees it.
///
/// # To ensure correctness
/// - Writes reach the log in call order, and a write's events follow every event held
///   by an earlier [`TxJournal::note`].
/// - [`TxJournal::decide_commit`] resolves only once the decision is durable (fsync).
/// - Readers (GetRelease, GetDecision, watchers) never see a decision before it is
///   durable.
pub trait TxJournal: Send + Sync + 'static {
    /// Holds `events` for the next write (a crash may lose them harmlessly) and shows
    /// readers the `shown` participants of transaction `tx` as they are given.
    fn note(&self, tx: &TxId, shown: &[Participant], events: Vec<pb::Event>);
    /// Writes `record` with `events`; resolves once durable. With `show_now` readers
    /// see it at once, otherwise once durable. Dropping the future does not cancel it.
    fn write(
        &self,
        record: &TxRecord,
        events: Vec<pb::Event>,
        show_now: bool,
    ) -> Pending<Result<()>>;
    /// Writes the COMMIT decision with the checkpoint it produces, with fsync, and
    /// resolves with the checkpoint's revision once durable.
    fn decide_commit(&self, record: &TxRecord, events: Vec<pb::Event>) -> Pending<Result<u64>>;
    /// Writes the terminal record (its end time stamped now), then hands its projects
    /// to the transactions waiting for them.
    fn finish(&self, record: &TxRecord, events: Vec<pb::Event>) -> Pending<Result<()>>;
    /// Where `project` of `environment` is registered now (`None`: not registered), so
    /// that every call goes to the participant's current address.
    fn endpoint(&self, environment: &Environment, project: &ProjectName) -> Option<String>;
}
