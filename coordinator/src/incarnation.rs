//! The coordinator's incarnation: an id made once with its data directory and carried
//! in every order to participants (and asked back in GetDecision). A coordinator whose
//! data directory was replaced gets a new one, so participants can tell its new `T1`
//! from the old `T1` they recorded, and it never presumes abort for a transaction an
//! earlier incarnation made.

use std::{
    hash::{BuildHasher, RandomState},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use lockstep_store::{Batch, Durability, StoreError};

use crate::tables::Tables;

/// Makes a new incarnation id (random in production, from the seed in simulation).
pub type MakeIncarnation = Arc<dyn Fn() -> String + Send + Sync>;

/// A fresh id: 128 bits from the standard library's OS-seeded hasher keys, the clock and
/// the process id, as 32 hex digits.
pub fn random() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let part = |n: u8| RandomState::new().hash_one((nanos, std::process::id(), n));
    format!("{:016x}{:016x}", part(1), part(2))
}

/// The incarnation stored in `tables`; on the first start, one made by `make` and
/// synced before anything is sent under it.
pub fn load_or_create(tables: &Tables, make: &MakeIncarnation) -> Result<String, StoreError> {
    if let Some(id) = tables.incarnation()? {
        return Ok(id);
    }
    let id = make();
    let mut batch = Batch::default();
    Tables::put_incarnation(&mut batch, &id);
    tables.kv().write(batch, Durability::Sync)?;
    Ok(id)
}
