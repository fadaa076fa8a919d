//! The secret tokens are signed with: made once with the data directory, synced before
//! any token is signed with it, and never sent anywhere, so tokens stay valid across
//! restarts and die with the data directory.

use lockstep_store::{Batch, Durability, StoreError};

use crate::tables::Tables;

/// The stored secret; on the first call, one made by `make` and synced.
pub fn token_secret(
    tables: &Tables,
    make: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, StoreError> {
    if let Some(secret) = tables.token_secret()? {
        return Ok(secret);
    }
    let secret = make().map_err(StoreError::Corrupt)?;
    let mut batch = Batch::default();
    Tables::put_token_secret(&mut batch, &secret);
    tables.kv().write(batch, Durability::Sync)?;
    Ok(secret)
}
