//! The coordinator's records: what it stores in RocksDB and reasons about. They are
//! domain types (validated names, plain enums); `convert.rs` turns them into wire
//! messages at the edge.

use std::collections::{BTreeMap, BTreeSet};

use std::time::Duration;

use lockstep::names::{Environment, ProjectName, TxId, Version};
use lockstep::orders::PrepareOrder;
pub use lockstep::orders::{Action, Schema};
use serde::{Deserialize, Serialize};

use crate::access::roles::Authority;

/// A registered project in one environment.
#[derive(Debug, Clone, Eq, Serialize, Deserialize)]
pub struct ProjectRecord {
    /// Project name.
    pub name: ProjectName,
    /// Environment of this registration.
    pub environment: Environment,
    /// Participant endpoint URL.
    pub endpoint: String,
    /// Children that must release with it.
    pub requires: Vec<ProjectName>,
    /// For a project removed and registered again: the newest checkpoint revision at
    /// that registration when its agent did not run what that checkpoint says (a fresh
    /// host, or not asked). Entries of the project in checkpoints up to this revision
    /// belong to the removed registration, so the live state ignores them; 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub live_from: u64,
}

/// Two registrations are the same when their settings are: `live_from` is the
/// coordinator's own bookkeeping, which no request gives and no change may lose.
impl PartialEq for ProjectRecord {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.name,
            &self.environment,
            &self.endpoint,
            &self.requires,
        ) == (
            &other.name,
            &other.environment,
            &other.endpoint,
            &other.requires,
        )
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where a transaction is in its lifecycle (PRODUCT.md: PENDING → PREPARING →
/// [VERIFYING →] COMMITTING | ABORTING → COMMITTED | ABORTED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxState {
    /// Durable and queued.
    Pending,
    /// Phase 1.
    Preparing,
    /// Every vote PREPARED; the verify steps run against the staged set (undecided).
    Verifying,
    /// COMMIT decided durably; phase 2 in progress.
    Committing,
    /// ABORT decided; phase 2 in progress.
    Aborting,
    /// Terminal: target state live.
    Committed,
    /// Terminal: previous state live.
    Aborted,
}

impl TxState {
    /// Committed or aborted: nothing left to do.
    pub fn is_terminal(self) -> bool {
        matches!(self, TxState::Committed | TxState::Aborted)
    }
}

/// What kind of change a transaction makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxKind {
    /// Caller-named versions.
    Release,
    /// Undo of committed release(s).
    Revert,
    /// Restore of a checkpoint.
    Rollback,
}

/// A participant's phase 1 answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Vote {
    /// Not answered yet.
    #[default]
    None,
    /// Staged durably; waits for the decision.
    Prepared,
    /// Cannot stage.
    Refused,
    /// No answer before the deadline.
    NoAnswer,
}

/// One project's part in a transaction and its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// Project.
    pub project: ProjectName,
    /// Endpoint used for this transaction.
    pub endpoint: String,
    /// Live before ("None": never released).
    pub from_version: Option<Version>,
    /// Target.
    pub to_version: Version,
    /// Upgrade, downgrade or unchanged.
    pub action: Action,
    /// Artifact reference passed to Prepare.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub artifact: String,
    /// Metadata passed to Prepare.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Phase 1 answer.
    #[serde(default, skip_serializing_if = "is_default")]
    pub vote: Vote,
    /// Reason of a refusal or missing vote.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vote_reason: String,
    /// Phase 2 acknowledged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub acknowledged: bool,
    /// Phase 2 wave.
    pub wave: u32,
    /// Schema live before, as reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_schema: Option<Schema>,
    /// Schema staged, as reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_schema: Option<Schema>,
    /// Migration files staged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<String>,
    /// Where its staged version answers, as its PREPARED vote said ("" none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub test_uri: String,
    /// What it staged, as its PREPARED vote said ("" when it did not say).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub staged_artifact: String,
    /// Last phase 2 delivery error (memory only: not part of any decision).
    #[serde(default, skip_serializing)]
    pub delivery_error: String,
    /// It answered the decision with something retrying cannot fix (memory only: after
    /// a restart the decision is sent again and the same answer sets it again).
    #[serde(default, skip_serializing)]
    pub needs_resolution: bool,
    /// How a person resolved it by hand, if they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// This part restores an earlier version (revert, rollback): the participant must
    /// reproduce it exactly (from `artifact`, the one it was first staged from) or
    /// refuse.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restore: bool,
    /// For a restore: the schema version the project was at with that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_schema: Option<Schema>,
}

/// What a committed (project, version) was staged from, so that a revert or rollback
/// can send it again and the participant reproduce the version exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    /// The artifact reference of its newest commit with one.
    pub artifact: String,
    /// Its metadata.
    pub metadata: BTreeMap<String, String>,
    /// The schema it went live with then, when the participant reported one (for
    /// people; a restore takes its target schema from the checkpoint it restores).
    pub schema: Option<Schema>,
}

/// What a person recorded for a participant the protocol could not finish with: phase 2
/// then counts it as acknowledged. Kept with the transaction for the audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// Recorded as committed (true) or aborted.
    pub committed: bool,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// What the participant answered when the decision was sent once more just before.
    pub status: String,
}

impl Resolution {
    /// One line for people: as what, who, why, what the participant said.
    pub fn describe(&self) -> String {
        let outcome = if self.committed {
            "committed"
        } else {
            "aborted"
        };
        format!(
            "resolved as {outcome} by {}: {} (participant answered: {})",
            self.actor, self.reason, self.status
        )
    }
}

/// What the caller asked for, kept to answer idempotent retries and to re-plan a queued
/// transaction when its turn comes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A release of these components.
    Release {
        /// Components, sorted by project.
        components: Vec<ComponentSpec>,
        /// --force.
        force: bool,
        /// --allow-quarantined.
        allow_quarantined: bool,
    },
    /// A revert of a release.
    Revert {
        /// Release to revert.
        release: TxId,
        /// Also revert later releases built on it.
        cascade: bool,
    },
    /// A rollback to a checkpoint.
    Rollback {
        /// Revision to restore (resolved, never 0).
        revision: u64,
        /// Restore versions a revert pulled all the same (operators).
        #[serde(default)]
        allow_quarantined: bool,
    },
    /// A promotion: a release of exactly what an upstream checkpoint (or bracket) ran.
    Promote {
        /// Components, sorted by project, with the upstream's artifacts and metadata.
        components: Vec<ComponentSpec>,
        /// --force (an untested upstream state).
        force: bool,
        /// What was live together upstream: the compatibility guard counts it as
        /// tested here too when it was verified there. `untested` is set when any
        /// version in it was not (promoted with --force): the promotion is then
        /// recorded as forced, so an unverified state never arrives as a tested one.
        upstream: CheckpointRecord,
    },
}

/// One requested component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentSpec {
    /// Project.
    pub project: ProjectName,
    /// Target version.
    pub version: Version,
    /// Artifact reference.
    pub artifact: String,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
}

/// A transaction as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxRecord {
    /// Unique id.
    pub id: TxId,
    /// Creation order: the queue's FIFO order and the storage key.
    pub ordinal: u64,
    /// Environment.
    pub environment: Environment,
    /// Kind.
    pub kind: TxKind,
    /// What was asked.
    pub request: Request,
    /// Lifecycle state.
    pub state: TxState,
    /// Projects taking part, sorted by name.
    pub participants: Vec<Participant>,
    /// Phase 2 waves (children first).
    pub waves: Vec<Vec<ProjectName>>,
    /// Why it is where it is.
    pub reason: String,
    /// Releases a revert undoes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reverts: Vec<TxId>,
    /// Checkpoint a rollback restores.
    #[serde(default, skip_serializing_if = "is_default")]
    pub rollback_to: u64,
    /// Forced into an untested combination.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    /// Pulled by a revert.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quarantined: bool,
    /// Checkpoint produced (0 until committed).
    #[serde(default, skip_serializing_if = "is_default")]
    pub checkpoint: u64,
    /// Phase 1 deadline in milliseconds.
    pub prepare_timeout_ms: u64,
    /// Accepted at (ms since epoch).
    pub created_ms: u64,
    /// Terminal at (ms since epoch; 0 until then).
    #[serde(default, skip_serializing_if = "is_default")]
    pub finished_ms: u64,
    /// Prepare may have reached participants (phase 1 started): an abort must then be
    /// delivered to every one of them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prepare_sent: bool,
    /// Who created it (the principal; empty without authentication).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created_by: String,
    /// What its creator was allowed when it created it: an automatic promotion of it
    /// acts for `created_by` with this, checked in the target.
    #[serde(default, skip_serializing_if = "is_default")]
    pub authority: Authority,
    /// Its release ticket (a URL; empty: none): where its failures are notified.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ticket: String,
    /// The environment's verify steps as they were when it was accepted, with their
    /// outcomes (durable: a restart resumes them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRun>,
    /// For a promotion: the source environment and checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<(Environment, u64)>,
    /// The verification after commit (soak and live steps), for a committed release
    /// in an environment that has one.
    #[serde(default, skip_serializing_if = "is_default")]
    pub live_check: LiveCheck,
    /// The W3C `traceparent` of the call that created it ("" when not traced): its
    /// events, and the webhooks that carry them, continue that trace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_parent: String,
    /// Projects it holds beyond its own until its decision: the family of a move back,
    /// which its compatibility rule judged as it is (`Plan::reads`), held again after a
    /// restart that resumes it.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub held_reads: BTreeSet<ProjectName>,
}

/// Where a committed release stands in its environment's verification after commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LiveCheck {
    /// None is due (not a release, or the environment has none).
    #[default]
    None,
    /// Soaking, or its live steps running.
    Soaking,
    /// Every live step passed.
    Passed,
    /// A live step failed (why).
    Failed(String),
}

impl LiveCheck {
    /// Whether the live set counts as verified for promotion.
    pub fn verified(&self) -> bool {
        matches!(self, Self::None | Self::Passed)
    }
}

/// One verify step of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRun {
    /// What the pipeline file says it is.
    pub step: Step,
    /// Where it stands.
    pub status: StepStatus,
    /// Why it passed or failed.
    #[serde(default)]
    pub reason: String,
    /// Where its results are.
    #[serde(default)]
    pub link: String,
    /// Who reported, approved or rejected.
    #[serde(default)]
    pub actor: String,
}

impl StepRun {
    /// A step not reached yet.
    pub fn waiting(step: Step) -> Self {
        Self {
            step,
            status: StepStatus::Waiting,
            reason: String::new(),
            link: String::new(),
            actor: String::new(),
        }
    }
}

/// Where a verify step stands. Steps run one at a time, in the file's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepStatus {
    /// Not reached.
    Waiting,
    /// Running, or waiting for its report or a person.
    Triggered,
    /// Its runner said it started.
    Started,
    /// Passed.
    Passed,
    /// Failed, rejected or late.
    Failed,
}

impl StepStatus {
    /// Triggered or started: the step the transaction waits on.
    pub fn is_running(self) -> bool {
        matches!(self, Self::Triggered | Self::Started)
    }
}

impl Participant {
    /// The Prepare order for this part of transaction `tx` (also what a dry run's
    /// Preview is asked about).
    pub fn prepare_order(&self, tx: &TxId, environment: &Environment) -> PrepareOrder {
        PrepareOrder {
            tx: tx.clone(),
            environment: environment.clone(),
            project: self.project.clone(),
            version: self.to_version.clone(),
            from_version: self.from_version.clone(),
            artifact: self.artifact.clone(),
            metadata: self.metadata.clone(),
            action: Some(self.action),
            incarnation: String::new(),
            restore: self.restore,
            target_schema: self.target_schema.clone(),
        }
    }
}

impl TxRecord {
    /// The participant record of `project`.
    pub fn participant(&self, project: &ProjectName) -> Option<&Participant> {
        self.participants.iter().find(|p| &p.project == project)
    }

    /// The participant record of `project`, to change.
    pub fn participant_mut(&mut self, project: &ProjectName) -> Option<&mut Participant> {
        self.participants.iter_mut().find(|p| &p.project == project)
    }

    /// Projects taking part.
    pub fn projects(&self) -> impl Iterator<Item = &ProjectName> {
        self.participants.iter().map(|p| &p.project)
    }

    /// Whether COMMIT was decided: its checkpoint is in the history (the live state),
    /// though some participants may not have acknowledged it yet.
    pub fn made_its_checkpoint(&self) -> bool {
        let decided = matches!(self.state, TxState::Committed | TxState::Committing);
        decided && self.checkpoint != 0
    }
}

/// One project's version in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveEntry {
    /// Version live.
    pub version: Version,
    /// Schema live with it, when the participant reports one (left out of the stored
    /// checkpoint when none: a checkpoint holds one entry per project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Schema>,
}

/// The composite live state after a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// 1, 2, 3... per environment.
    pub revision: u64,
    /// Environment.
    pub environment: Environment,
    /// Every project's version.
    pub versions: BTreeMap<ProjectName, LiveEntry>,
    /// Producing transaction.
    pub transaction: TxId,
    /// Its kind.
    pub kind: TxKind,
    /// `release T4`, `revert of T4`, `rollback to 3`.
    pub description: String,
    /// Produced by --force.
    pub untested: bool,
    /// Decision time (ms since epoch).
    pub committed_ms: u64,
}

/// An agent the drift check found running other than the live checkpoint says,
/// until it is seen running what it should again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftRecord {
    /// Environment.
    pub environment: Environment,
    /// Project.
    pub project: ProjectName,
    /// What the agent ran when last found drifting ("" none).
    pub running_version: String,
    /// Its schema then.
    #[serde(default)]
    pub running_schema: Option<Schema>,
    /// What the checkpoint said should run then ("" none).
    pub expected_version: String,
    /// When it was found (ms since the epoch).
    pub observed_ms: u64,
}

/// A (project, version) pair that a revert pulled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    /// Release whose version was pulled.
    pub release: TxId,
    /// The revert that pulled it.
    pub revert: TxId,
}

/// What a create call asks for, validated (by `convert` from a release, revert or
/// rollback request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSpec {
    /// Client-chosen id (idempotency key), if any.
    pub id: Option<TxId>,
    /// Id to derive a fresh one from when `id` is None (e.g. `revert-T4`).
    pub id_hint: Option<String>,
    /// Environment.
    pub environment: Environment,
    /// What to do.
    pub request: Request,
    /// Phase 1 deadline (None: default).
    pub prepare_timeout: Option<Duration>,
    /// Plan only.
    pub dry_run: bool,
    /// Who asks (the principal; empty without authentication).
    pub actor: String,
    /// What the one who asks is allowed (recorded on the transaction).
    pub authority: Authority,
    /// Release ticket URL ("" none).
    pub ticket: String,
    /// For a promotion: the source environment and checkpoint.
    pub promoted_from: Option<(Environment, u64)>,
    /// The coordinator's own transaction (an automatic revert or promotion), made
    /// again when it starts: an attempt under `id` that a restart aborted before its
    /// decision (presumed abort) is not the answer, the next attempt (`ID-2`, `ID-3`...)
    /// is admitted instead. A caller's id is an idempotency key and stays one.
    pub again_after_restart: bool,
}

/// What a promotion asks for, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromoteAsk {
    /// Source environment.
    pub from: Environment,
    /// Target environment.
    pub to: Environment,
    /// Source checkpoint (None: the newest verified one, unless `release` is given).
    pub checkpoint: Option<u64>,
    /// A release of the source whose moved projects go (a bracket).
    pub release: Option<TxId>,
    /// Promote an untested checkpoint all the same.
    pub force: bool,
}

/// A declared environment and its upstreams on the promotion path (the stages' graph:
/// dev → hardening → production, a DAG).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentRecord {
    /// Its name.
    pub name: Environment,
    /// Upstream environments, sorted.
    pub after: Vec<Environment>,
    /// Who declared it.
    #[serde(default)]
    pub created_by: String,
    /// Its stages, from the pipeline file (none when only declared).
    #[serde(default)]
    pub stages: Stages,
    /// The pipeline file version that set it (0: `env add`).
    #[serde(default)]
    pub pipeline_version: u64,
}

impl EnvironmentRecord {
    /// `after hardening; verify performance (external, 10m); auto-promote`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.after.is_empty() {
            let after: Vec<&str> = self.after.iter().map(|e| e.as_str()).collect();
            parts.push(format!("after {}", after.join(", ")));
        }
        let steps = |steps: &[Step]| {
            steps
                .iter()
                .map(Step::describe)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.stages.verify.is_empty() {
            parts.push(format!("verify {}", steps(&self.stages.verify)));
        }
        if self.stages.auto_promote {
            parts.push("auto-promote".into());
        }
        if let Some(soak) = self.stages.soak_ms {
            parts.push(format!("soak {:?}", std::time::Duration::from_millis(soak)));
        }
        if !self.stages.verify_live.is_empty() {
            let on = match self.stages.on_live_failure {
                LiveFailure::Revert => "revert",
                LiveFailure::Notify => "notify",
            };
            parts.push(format!(
                "verify live {} (on failure: {on})",
                steps(&self.stages.verify_live)
            ));
        }
        if parts.is_empty() {
            "no upstream, no stages".into()
        } else {
            parts.join("; ")
        }
    }
}

/// What an environment does with a transaction besides 2PC (issue 14's stages).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stages {
    /// Steps run against the staged set, between PREPARED and COMMIT.
    pub verify: Vec<Step>,
    /// Every release an upstream commits (verified there) is promoted here.
    pub auto_promote: bool,
    /// How long the live set soaks after commit (ms), if it does.
    pub soak_ms: Option<u64>,
    /// Steps run against the live set after the soak.
    pub verify_live: Vec<Step>,
    /// What a failure after commit does.
    pub on_live_failure: LiveFailure,
}

/// One verify step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Unique within its list.
    pub name: String,
    /// What it does.
    pub kind: StepKind,
    /// How long it may take (ms).
    pub deadline_ms: u64,
}

impl Step {
    /// `performance (external, 10m)`.
    pub fn describe(&self) -> String {
        let deadline = humanize_ms(self.deadline_ms);
        format!("{} ({}, {deadline})", self.name, self.kind.describe())
    }
}

impl StepKind {
    /// `http URL -> 200`, `external`, `approval`.
    pub fn describe(&self) -> String {
        match self {
            StepKind::Http { url, expect_status } => format!("http {url} -> {expect_status}"),
            StepKind::External => "external".into(),
            StepKind::Approval => "approval".into(),
        }
    }
}

fn humanize_ms(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

/// The kinds of verify step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// The coordinator requests a URL and expects a status.
    Http {
        /// URL template over the staged test URIs.
        url: String,
        /// The status that passes.
        expect_status: u16,
    },
    /// A test runner reports started / passed / failed.
    External,
    /// A person approves or rejects.
    Approval,
}

/// What a failure of the verification after commit does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LiveFailure {
    /// Reverts the transaction automatically.
    #[default]
    Revert,
    /// Only notifies.
    Notify,
}

/// A token made by CreateToken, as stored: what RevokeToken finds by id, and what the
/// deny list is loaded from at start. Never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its id (the `jti` claim).
    pub id: String,
    /// Who it was made for.
    pub subject: String,
    /// The grant it carries, as `lockstep token create` shows it.
    pub grant: String,
    /// When it expires (ms since the epoch).
    pub expires_ms: u64,
    /// Who made it.
    pub created_by: String,
    /// Revoked: refused from then on.
    pub revoked: bool,
}

/// How a webhook subscription's CloudEvents travel in the HTTP request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The whole event as a JSON body (`application/cloudevents+json`).
    #[default]
    Structured,
    /// Attributes as `ce-` headers, the data as the body.
    Binary,
}

/// A subscription, as the `subscriptions` table keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    /// Unique name.
    pub name: String,
    /// Where events are POSTed.
    pub url: String,
    /// Event kinds wanted (empty: every kind).
    pub events: BTreeSet<i32>,
    /// Environment filter.
    pub environment: Option<Environment>,
    /// Project filter.
    pub project: Option<ProjectName>,
    /// Structured or binary.
    pub mode: Mode,
    /// HMAC key ("" none).
    pub secret: String,
    /// Accepts release tickets.
    pub ticket_sink: bool,
    /// Last sequence number delivered or passed over.
    pub cursor: u64,
    /// Why delivery stopped for good ("" while on).
    #[serde(default)]
    pub disabled: String,
    /// Who added it.
    #[serde(default)]
    pub created_by: String,
}

/// Whether `value` is its type's default: such fields are left out of stored records
/// (read back as the default), which keeps the record written at each step of every
/// transaction small.
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}
