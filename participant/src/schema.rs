//! Schema migrations staged with a transaction (filled in by the migrations issue).

use lockstep::pb;
use serde::{Deserialize, Serialize};

use crate::deployer::{Change, DeployError, Refusal, Staged};

/// A schema position: the newest applied migration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaPosition {
    /// Migration version (0: none applied).
    pub version: i64,
    /// Its name.
    pub name: String,
}

impl SchemaPosition {
    /// As a wire message.
    pub fn message(&self) -> pb::SchemaVersion {
        pb::SchemaVersion {
            version: self.version,
            name: self.name.clone(),
        }
    }
}

/// What a transaction staged in the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaStaged {
    /// Position before.
    pub from: SchemaPosition,
    /// Position staged.
    pub to: SchemaPosition,
    /// Migration files run, in order.
    pub files: Vec<String>,
}

/// Stages schema migrations.
pub struct Schema {}

impl Schema {
    /// Stages the migrations of `staged`.
    pub async fn stage(&self, _change: &Change, _staged: &Staged) -> Result<SchemaStaged, Refusal> {
        Err(Refusal("migrations are not supported yet".into()))
    }

    /// Makes staged migrations final.
    pub async fn commit(
        &self,
        _change: &Change,
        _staged: &SchemaStaged,
    ) -> Result<(), DeployError> {
        Ok(())
    }

    /// Undoes staged migrations.
    pub async fn abort(&self, _change: &Change, _staged: &SchemaStaged) -> Result<(), DeployError> {
        Ok(())
    }

    /// The live position.
    pub async fn live(&self) -> Result<SchemaPosition, DeployError> {
        Ok(SchemaPosition::default())
    }
}
