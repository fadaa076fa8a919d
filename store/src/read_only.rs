//! A view of a store that can only read: what a standby coordinator answers reads
//! through while another instance leads. A standby's etcd store is not fenced (it holds
//! no term), so the only thing that keeps it from writing is that it cannot.

use std::sync::Arc;

use crate::{Batch, Durability, Entry, Kv, Order, StoreError};

/// Reads go to the store underneath; every write and sync is refused with
/// [`StoreError::ReadOnly`] and changes nothing.
pub struct ReadOnlyKv(Arc<dyn Kv>);

impl ReadOnlyKv {
    /// Reads through `kv`.
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self(kv)
    }
}

impl Kv for ReadOnlyKv {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(table, key)
    }

    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        to: Option<&[u8]>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.0.scan(table, from, to, order, limit)
    }

    fn write(&self, _: Batch, _: Durability) -> Result<(), StoreError> {
        Err(StoreError::ReadOnly)
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::ReadOnlyKv;
    use crate::{Batch, Durability, Kv, MemKv, StoreError};

    #[test]
    fn reads_pass_through_and_writes_change_nothing() {
        let kv: Arc<dyn Kv> = Arc::new(MemKv::new());
        let mut batch = Batch::default();
        batch.put("t", b"k".to_vec(), b"v".to_vec());
        kv.write(batch.clone(), Durability::Sync).unwrap();
        let view = ReadOnlyKv::new(kv.clone());
        assert_eq!(view.get("t", b"k").unwrap(), Some(b"v".to_vec()));
        batch.put("t", b"k".to_vec(), b"other".to_vec());
        let refused = view.write(batch, Durability::Sync).unwrap_err();
        assert!(matches!(refused, StoreError::ReadOnly), "{refused}");
        assert_eq!(kv.get("t", b"k").unwrap(), Some(b"v".to_vec()));
    }
}
