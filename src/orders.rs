//! The participant protocol's messages as domain types: what the coordinator orders
//! (Prepare, Commit, Abort), what a participant answers (a vote), and the decision it
//! asks for. The coordinator converts them to the wire when it sends, the participant
//! from the wire when it receives, both with the conversions here, so the two sides
//! cannot disagree on what a field means. Conversions from the wire validate and name
//! the offending field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    names::{Environment, FieldError, ProjectName, TxId, Version},
    pb,
};

/// What a transaction does to one project: told to the participant with its Prepare,
/// shown in plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// A version never live on this project.
    Upgrade,
    /// A version live on this project before.
    Downgrade,
    /// The live version (the project takes part for its family).
    Unchanged,
}

/// A schema position as a participant reports it (newest applied migration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// Newest applied migration version.
    pub version: i64,
    /// Its name.
    pub name: String,
}

/// Phase 1's order: stage this version without making it live, then vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareOrder {
    /// The transaction (idempotency key).
    pub tx: TxId,
    /// Environment the transaction belongs to.
    pub environment: Environment,
    /// The participant's project.
    pub project: ProjectName,
    /// Version to stage.
    pub version: Version,
    /// What the coordinator believes is live (`None`: nothing yet).
    pub from_version: Option<Version>,
    /// Where the build is (opaque to Lockstep).
    pub artifact: String,
    /// Metadata from the release.
    pub metadata: BTreeMap<String, String>,
    /// Upgrade, downgrade or unchanged (`None` when a caller did not say).
    pub action: Option<Action>,
    /// The sending coordinator's incarnation (stamped by its network layer; empty
    /// when unknown).
    pub incarnation: String,
    /// This Prepare restores an earlier version (revert, rollback): stage exactly what
    /// it was, or refuse naming what is missing.
    pub restore: bool,
    /// For a restore: the schema version to reach (with stored downs if the version
    /// ships no migrations).
    pub target_schema: Option<Schema>,
}

/// Phase 2's COMMIT order: make the prepared version live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOrder {
    /// The transaction.
    pub tx: TxId,
    /// The project meant (`None`: whichever this participant serves).
    pub project: Option<ProjectName>,
    /// The sending coordinator's incarnation (empty when unknown).
    pub incarnation: String,
}

/// Phase 2's ABORT order: restore exactly what was live before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbortOrder {
    /// The transaction.
    pub tx: TxId,
    /// The project meant (`None`: whichever this participant serves).
    pub project: Option<ProjectName>,
    /// Why, recorded by the participant.
    pub reason: String,
    /// The sending coordinator's incarnation (empty when unknown).
    pub incarnation: String,
}

/// What a participant staged, as its PREPARED vote reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Staging {
    /// Schema live before.
    pub from_schema: Option<Schema>,
    /// Schema staged.
    pub to_schema: Option<Schema>,
    /// Migration files staged.
    pub migrations: Vec<String>,
    /// Where the staged version answers, for verify steps ("" none).
    pub test_uri: String,
    /// What the participant staged, in its words (a digest and where it came from,
    /// or "no artifact: version only"); "" when it does not say.
    pub artifact: String,
}

/// A participant's phase 1 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteAnswer {
    /// Staged durably; it now waits for the decision and never decides alone.
    Prepared(Staging),
    /// Cannot stage; the reason reaches the release driver.
    Refused(String),
}

/// The coordinator's durable decision for a transaction, as GetDecision reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not decided yet: ask again later.
    Undecided,
    /// COMMIT is durable: go live.
    Commit,
    /// ABORT (or unknown to the coordinator: presumed abort): restore.
    Abort,
}

// ----- wire → domain (what a receiver validates) -----

fn optional<T>(
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, FieldError>,
) -> Result<Option<T>, FieldError> {
    (!value.is_empty()).then(|| parse(value)).transpose()
}

impl TryFrom<pb::PrepareRequest> for PrepareOrder {
    type Error = FieldError;

    fn try_from(r: pb::PrepareRequest) -> Result<Self, FieldError> {
        Ok(Self {
            tx: TxId::parse("transaction_id", &r.transaction_id)?,
            environment: Environment::parse_or_default("environment", &r.environment)?,
            project: ProjectName::parse("project", &r.project)?,
            version: Version::parse("version", &r.version)?,
            from_version: optional(&r.from_version, |v| Version::parse("from_version", v))?,
            artifact: r.artifact,
            metadata: r.metadata.into_iter().collect(),
            action: action_of(r.action),
            incarnation: r.coordinator_incarnation,
            restore: r.restore,
            target_schema: r.target_schema.map(Schema::from),
        })
    }
}

impl TryFrom<pb::CommitRequest> for CommitOrder {
    type Error = FieldError;

    fn try_from(r: pb::CommitRequest) -> Result<Self, FieldError> {
        Ok(Self {
            tx: TxId::parse("transaction_id", &r.transaction_id)?,
            project: optional(&r.project, |p| ProjectName::parse("project", p))?,
            incarnation: r.coordinator_incarnation,
        })
    }
}

impl TryFrom<pb::AbortRequest> for AbortOrder {
    type Error = FieldError;

    fn try_from(r: pb::AbortRequest) -> Result<Self, FieldError> {
        Ok(Self {
            tx: TxId::parse("transaction_id", &r.transaction_id)?,
            project: optional(&r.project, |p| ProjectName::parse("project", p))?,
            reason: r.reason,
            incarnation: r.coordinator_incarnation,
        })
    }
}

impl From<pb::PrepareResponse> for VoteAnswer {
    fn from(r: pb::PrepareResponse) -> Self {
        if r.vote == pb::Vote::Prepared as i32 {
            return VoteAnswer::Prepared(Staging {
                from_schema: r.from_schema.map(Schema::from),
                to_schema: r.to_schema.map(Schema::from),
                migrations: r.migrations,
                test_uri: r.test_uri,
                artifact: r.staged_artifact,
            });
        }
        VoteAnswer::Refused(if r.reason.is_empty() {
            "refused without a reason".into()
        } else {
            r.reason
        })
    }
}

impl From<pb::SchemaVersion> for Schema {
    fn from(s: pb::SchemaVersion) -> Self {
        Schema {
            version: s.version,
            name: s.name,
        }
    }
}

impl From<i32> for Decision {
    fn from(wire: i32) -> Self {
        match pb::Decision::try_from(wire) {
            Ok(pb::Decision::Commit) => Decision::Commit,
            Ok(pb::Decision::Abort) => Decision::Abort,
            _ => Decision::Undecided,
        }
    }
}

/// The action a wire enum names (`None` for unspecified or unknown values).
pub fn action_of(wire: i32) -> Option<Action> {
    match pb::Action::try_from(wire) {
        Ok(pb::Action::Upgrade) => Some(Action::Upgrade),
        Ok(pb::Action::Downgrade) => Some(Action::Downgrade),
        Ok(pb::Action::Unchanged) => Some(Action::Unchanged),
        _ => None,
    }
}

// ----- domain → wire (what a sender puts on it) -----

impl From<&PrepareOrder> for pb::PrepareRequest {
    fn from(o: &PrepareOrder) -> Self {
        pb::PrepareRequest {
            transaction_id: o.tx.to_string(),
            environment: o.environment.to_string(),
            project: o.project.to_string(),
            version: o.version.to_string(),
            from_version: shown(o.from_version.as_ref()),
            artifact: o.artifact.clone(),
            metadata: o.metadata.clone().into_iter().collect(),
            action: o.action.map_or(pb::Action::Unspecified, pb::Action::from) as i32,
            coordinator_incarnation: o.incarnation.clone(),
            coordinator_term: 0,
            restore: o.restore,
            target_schema: o.target_schema.as_ref().map(pb::SchemaVersion::from),
        }
    }
}

impl From<&CommitOrder> for pb::CommitRequest {
    fn from(o: &CommitOrder) -> Self {
        pb::CommitRequest {
            transaction_id: o.tx.to_string(),
            project: shown(o.project.as_ref()),
            coordinator_incarnation: o.incarnation.clone(),
            coordinator_term: 0,
        }
    }
}

impl From<&AbortOrder> for pb::AbortRequest {
    fn from(o: &AbortOrder) -> Self {
        pb::AbortRequest {
            transaction_id: o.tx.to_string(),
            project: shown(o.project.as_ref()),
            reason: o.reason.clone(),
            coordinator_incarnation: o.incarnation.clone(),
            coordinator_term: 0,
        }
    }
}

impl From<&VoteAnswer> for pb::PrepareResponse {
    fn from(v: &VoteAnswer) -> Self {
        match v {
            VoteAnswer::Prepared(s) => pb::PrepareResponse {
                vote: pb::Vote::Prepared as i32,
                reason: String::new(),
                from_schema: s.from_schema.as_ref().map(pb::SchemaVersion::from),
                to_schema: s.to_schema.as_ref().map(pb::SchemaVersion::from),
                migrations: s.migrations.clone(),
                test_uri: s.test_uri.clone(),
                staged_artifact: s.artifact.clone(),
            },
            VoteAnswer::Refused(reason) => pb::PrepareResponse {
                vote: pb::Vote::Refused as i32,
                reason: reason.clone(),
                ..Default::default()
            },
        }
    }
}

impl From<&Schema> for pb::SchemaVersion {
    fn from(s: &Schema) -> Self {
        pb::SchemaVersion {
            version: s.version,
            name: s.name.clone(),
        }
    }
}

impl From<Action> for pb::Action {
    fn from(a: Action) -> Self {
        match a {
            Action::Upgrade => pb::Action::Upgrade,
            Action::Downgrade => pb::Action::Downgrade,
            Action::Unchanged => pb::Action::Unchanged,
        }
    }
}

impl From<Decision> for pb::Decision {
    fn from(d: Decision) -> Self {
        match d {
            Decision::Undecided => pb::Decision::Undecided,
            Decision::Commit => pb::Decision::Commit,
            Decision::Abort => pb::Decision::Abort,
        }
    }
}

/// An optional name as the wire shows it ("" for none).
fn shown<T: std::fmt::Display>(value: Option<&T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> PrepareOrder {
        PrepareOrder {
            tx: TxId::parse("id", "T4").unwrap(),
            environment: Environment::default(),
            project: ProjectName::parse("p", "A").unwrap(),
            version: Version::parse("v", "T4A").unwrap(),
            from_version: Some(Version::parse("v", "T1A").unwrap()),
            artifact: "/builds/T4A".into(),
            metadata: [("ticket".to_string(), "REL-4".to_string())].into(),
            action: Some(Action::Upgrade),
            incarnation: "c0ffee".into(),
            restore: true,
            target_schema: Some(Schema {
                version: 3,
                name: "add_notes".into(),
            }),
        }
    }

    #[test]
    fn a_prepare_order_survives_the_wire_unchanged() {
        let sent = order();
        let received = PrepareOrder::try_from(pb::PrepareRequest::from(&sent)).unwrap();
        assert_eq!(received, sent);
    }

    #[test]
    fn empty_optional_fields_mean_none_and_bad_names_name_their_field() {
        let mut wire = pb::PrepareRequest::from(&order());
        wire.from_version.clear();
        wire.action = 0;
        let o = PrepareOrder::try_from(wire.clone()).unwrap();
        assert_eq!((o.from_version, o.action), (None, None));
        wire.version = "a/b".into();
        assert_eq!(PrepareOrder::try_from(wire).unwrap_err().field, "version");
        let commit = pb::CommitRequest {
            transaction_id: "T4".into(),
            ..Default::default()
        };
        assert_eq!(CommitOrder::try_from(commit).unwrap().project, None);
    }

    #[test]
    fn votes_and_decisions_round_trip() {
        let prepared = VoteAnswer::Prepared(Staging {
            from_schema: Some(Schema {
                version: 3,
                name: "add_users".into(),
            }),
            to_schema: None,
            migrations: vec!["0004_x.up.sql".into()],
            test_uri: "http://127.0.0.1:9301".into(),
            artifact: "sha256:ab from https://store/a.tar.gz".into(),
        });
        assert_eq!(
            VoteAnswer::from(pb::PrepareResponse::from(&prepared)),
            prepared
        );
        let silent = pb::PrepareResponse {
            vote: pb::Vote::Refused as i32,
            ..Default::default()
        };
        assert_eq!(
            VoteAnswer::from(silent),
            VoteAnswer::Refused("refused without a reason".into())
        );
        for d in [Decision::Undecided, Decision::Commit, Decision::Abort] {
            assert_eq!(Decision::from(pb::Decision::from(d) as i32), d);
        }
    }
}
