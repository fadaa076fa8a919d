//! What a deploy agent implements: only the deploy logic. The SDK ([`crate::Participant`])
//! turns it into the `lockstep.v1.Participant` service and keeps the protocol rules for
//! it (durable prepared records, idempotent replies, asking the coordinator for the
//! decision after a restart).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One transaction's change for this project, as the coordinator asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Transaction id (the idempotency key).
    pub transaction_id: String,
    /// Environment.
    pub environment: String,
    /// This participant's project.
    pub project: String,
    /// Version to make live.
    pub version: String,
    /// Version live before ("" when none).
    pub from_version: String,
    /// Where the build is (opaque to Lockstep).
    pub artifact: String,
    /// Metadata from the release.
    pub metadata: BTreeMap<String, String>,
    /// This change restores an earlier version (revert, rollback): stage exactly that
    /// version (the build kept from before, or `artifact` again) or refuse naming what is
    /// missing; never stage an empty or partial version in its place.
    #[serde(default)]
    pub restore: bool,
    /// For a restore: the schema version to leave the database at (the SDK reaches it,
    /// with stored downs when the version ships no migrations).
    #[serde(default)]
    pub target_schema: Option<i64>,
    /// The coordinator moves this project back to a version it had live before (a
    /// revert, a rollback, a forced re-activation): only such a change may run the
    /// downs of applied migrations. An ordinary release whose build ships fewer
    /// migrations than are applied is refused rather than drop what they made.
    #[serde(default)]
    pub moving_back: bool,
}

/// What `stage` wants to remember until the decision (stored durably with the PREPARED
/// record, handed back to `go_live` and `undo`, also after a restart).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// Free-form notes of the deployer (e.g. "created releases/T4").
    pub note: serde_json::Value,
    /// Directory of the versioned migrations shipped with this version, if any; the SDK
    /// stages them against the database after the deployer's own staging.
    #[serde(default)]
    pub migrations: Option<std::path::PathBuf>,
    /// Where the staged (green) version answers, if the deployer started one: sent in
    /// the PREPARED vote for the environment's verify steps ("" none).
    #[serde(default)]
    pub test_uri: String,
    /// What was staged, in words for people (`sha256:… from URL`, `no artifact:
    /// version only`): sent in the PREPARED vote and shown by `release get`.
    #[serde(default)]
    pub artifact: String,
}

/// A REFUSED vote: the change cannot be staged. The reason reaches the release driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// A failure to go live or undo after the decision. The coordinator retries until it
/// succeeds, so implementations must be idempotent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DeployError(pub String);

/// The deploy logic of one project.
///
/// # To ensure correctness
/// - `stage` returns `Ok` only when what it staged survives a crash (files synced): the
///   SDK votes PREPARED right after.
/// - `stage` must not change what is live: until `go_live`, the old version serves.
/// - `go_live` and `undo` are idempotent: after a crash the SDK may call them again for
///   the same change, and `undo` may follow a `stage` that failed halfway (`staged` is
///   then `None`).
/// - `undo` restores exactly what was live before `stage`.
pub trait Deployer: Send + Sync + 'static {
    /// Stages `change` without making it live.
    fn stage(&self, change: &Change) -> impl Future<Output = Result<Staged, Refusal>> + Send;

    /// Makes the staged change live.
    fn go_live(
        &self,
        change: &Change,
        staged: &Staged,
    ) -> impl Future<Output = Result<(), DeployError>> + Send;

    /// Discards what `stage` did (fully or partly).
    fn undo(
        &self,
        change: &Change,
        staged: Option<&Staged>,
    ) -> impl Future<Output = Result<(), DeployError>> + Send;

    /// Discards what staging for `tx` left when the SDK has no record of it (a crash
    /// lost the Staging record before the PREPARED one was written), found from the
    /// deployer's own state. Called by an Abort for a transaction the ledger does not
    /// know; the default leaves nothing because it staged nothing it cannot find.
    fn discard_unrecorded(&self, tx: &str) -> impl Future<Output = Result<(), DeployError>> + Send {
        let _ = tx;
        async { Ok(()) }
    }

    /// The version live now (`None` before the first release).
    fn live_version(&self) -> impl Future<Output = Result<Option<String>, DeployError>> + Send;

    /// The migration files (name, content) the change's version ships, read without
    /// staging anything, for dry runs. `None`: it ships no `migrations/` directory (or
    /// the deployer cannot tell before staging).
    fn shipped_migrations(
        &self,
        change: &Change,
    ) -> impl Future<Output = Result<Option<Vec<(String, String)>>, Refusal>> + Send {
        let _ = change;
        async { Ok(None) }
    }
}
