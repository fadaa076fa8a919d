//! The participant's durable memory: one record per transaction it has seen, in its own
//! RocksDB (or, in simulation, the in-memory store). This is what lets it answer
//! repeated Prepare/Commit/Abort calls identically and finish prepared transactions
//! after a restart.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use lockstep_store::{Batch, Durability, GroupCommit, Kv, Order, StoreError, WriterMode};
use serde::{Deserialize, Serialize};

use crate::{
    deployer::{Change, Staged},
    schema::SchemaStaged,
};

/// Transactions by id.
pub const TRANSACTIONS: &str = "participant_transactions";

/// What the participant knows beyond transactions (the highest coordinator term).
pub const META: &str = "participant_meta";

/// Every table the participant opens.
pub const ALL: &[&str] = &[TRANSACTIONS, META];

/// The [`META`] key of the highest coordinator term seen.
const TERM_KEY: &[u8] = b"highest-term";

/// Where a transaction is on this participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Prepare started and has not voted: after a crash here the participant may undo on
    /// its own, since it never promised anything.
    Staging,
    /// Voted PREPARED: waits for the coordinator's decision, never decides alone.
    Prepared,
    /// Voted REFUSED (and undid what it staged).
    Refused,
    /// Went live.
    Committed,
    /// Undone (or told to abort before it prepared).
    Aborted,
}

impl Phase {
    /// Whether a transaction in this phase is still open here: staged or staging, and
    /// not yet ended by a decision or a refusal.
    pub fn is_open(self) -> bool {
        matches!(self, Phase::Staging | Phase::Prepared)
    }
}

/// One transaction as this participant remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The change asked for (absent for an Abort that came before any Prepare).
    pub change: Option<Change>,
    /// Where it is.
    pub phase: Phase,
    /// What the deployer staged.
    #[serde(default)]
    pub staged: Option<Staged>,
    /// What the migrations staged.
    #[serde(default)]
    pub schema: Option<SchemaStaged>,
    /// Why it was refused or aborted.
    #[serde(default)]
    pub reason: String,
    /// The incarnation of the coordinator whose Prepare this is ("" when unknown).
    #[serde(default)]
    pub incarnation: String,
}

/// Typed access to the participant's records. Writes go through group commit, so
/// concurrent transactions share fsyncs and the async runtime never waits on a disk.
/// A record is visible before it is durable: the participant's lock is held across
/// the wait for a PREPARED record, so nothing acts on it before it is synced.
#[derive(Clone)]
pub struct Ledger {
    kv: Arc<dyn Kv>,
    writer: GroupCommit,
    /// The records of the transactions still open here (staging or prepared), as last
    /// written or found at recovery ([`Ledger::keep_open`]): which transactions are
    /// open, and what the Commit or Abort that ends one reads, without a store
    /// lookup. Every record is also in the store; one not here is read from it.
    open: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl Ledger {
    /// Wraps a store opened with [`ALL`], starting its writer.
    pub fn open(kv: Arc<dyn Kv>, mode: WriterMode) -> Result<Self, StoreError> {
        let writer = GroupCommit::start(kv.clone(), mode)?;
        let open = Arc::default();
        Ok(Self { kv, writer, open })
    }

    /// Resolves when a write or sync of the ledger failed: the store refuses every
    /// later write, so the agent must stop (and recover from what is durable at its
    /// restart) rather than answer orders it can no longer record.
    pub async fn failed(&self) -> String {
        self.writer.failed().await
    }

    /// The record of `tx`, if any. Refused once a write or sync of the ledger failed:
    /// a record written and never synced (a PREPARED one whose fsync failed) must not
    /// answer a repeated order while the agent stops (stop 55: a repeated Prepare was
    /// answered PREPARED from it).
    pub fn get(&self, tx: &str) -> Result<Option<Entry>, StoreError> {
        if let Some(failure) = self.writer.failure() {
            return Err(StoreError::Stopped(format!(
                "{TRANSACTIONS}/{tx}: not read, the ledger failed ({failure}); the agent stops and recovers what is durable"
            )));
        }
        if let Some(entry) = self.open_entries().get(tx) {
            return Ok(Some(entry.clone()));
        }
        self.kv
            .get(TRANSACTIONS, tx.as_bytes())?
            .map(|v| {
                serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Corrupt(format!("{TRANSACTIONS}/{tx}: {e}")))
            })
            .transpose()
    }

    /// Writes the record of `tx` (after every record written before it) and resolves
    /// once it is durable as asked. `Durability::Sync` at the protocol's durability
    /// point: PREPARED before the vote. Everything else may be lost in a crash
    /// harmlessly, so it resolves at once: a lost COMMITTED record leaves PREPARED, so
    /// the restarted agent asks for the decision and goes live again, idempotently.
    pub fn put(
        &self,
        tx: &str,
        entry: &Entry,
        durability: Durability,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let mut batch = Batch::default();
        let value = serde_json::to_vec(entry).expect("entries serialize");
        batch.put(TRANSACTIONS, tx.as_bytes().to_vec(), value);
        let sync = durability == Durability::Sync;
        // Under the cache's lock, so the cache follows the store's write order.
        let mut open = self.open_entries();
        let written = self.writer.write(batch, sync.then_some(Duration::ZERO));
        if written.is_ok() && entry.phase.is_open() {
            open.insert(tx.to_string(), entry.clone());
        } else if written.is_ok() {
            open.remove(tx);
        }
        drop(open);
        let writer = self.writer.clone();
        async move {
            let ticket = written?;
            if sync {
                writer.durable(ticket).await?;
            }
            Ok(())
        }
    }

    /// The phase of `tx` if it is open here (staging or prepared), read from memory
    /// only: asking "does it still wait?" of a transaction that ended reads no store
    /// and decodes no record. Complete once recovery has kept the open records it
    /// found ([`Ledger::keep_open`]).
    pub fn open_phase(&self, tx: &str) -> Option<Phase> {
        self.open_entries().get(tx).map(|e| e.phase)
    }

    /// The coordinator incarnation recorded for `tx` while it is open here.
    pub fn open_incarnation(&self, tx: &str) -> Option<String> {
        self.open_entries().get(tx).map(|e| e.incarnation.clone())
    }

    /// The transactions open here (staging or prepared), in id order.
    pub fn open_ids(&self) -> Vec<String> {
        self.open_entries().keys().cloned().collect()
    }

    /// Adds the records of open transactions just read from the store (recovery, which
    /// finds those a previous process left open) to the open ones.
    pub fn keep_open(&self, records: impl IntoIterator<Item = (String, Entry)>) {
        self.open_entries().extend(records);
    }

    fn open_entries(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The highest coordinator term an order came with (0: none yet).
    pub fn term(&self) -> Result<u64, StoreError> {
        let value = self.kv.get(META, TERM_KEY)?;
        value
            .map(|v| {
                let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                    StoreError::Corrupt(format!("{META}/highest-term: {} bytes", v.len()))
                })?;
                Ok(u64::from_be_bytes(bytes))
            })
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Records `term` as the highest seen; resolves once it is durable (synced), so a
    /// restart never forgets a term it acted on.
    pub fn put_term(
        &self,
        term: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let mut batch = Batch::default();
        batch.put(META, TERM_KEY.to_vec(), term.to_be_bytes().to_vec());
        let written = self.writer.write(batch, Some(Duration::ZERO));
        let writer = self.writer.clone();
        async move { writer.durable(written?).await }
    }

    /// Records in the given phases, with their ids.
    pub fn in_phase(&self, phases: &[Phase]) -> Result<Vec<(String, Entry)>, StoreError> {
        let mut all = self.all()?;
        all.retain(|(_, e)| phases.contains(&e.phase));
        Ok(all)
    }

    /// Every record, with its id, in id order (what checkers read after a crash).
    pub fn all(&self) -> Result<Vec<(String, Entry)>, StoreError> {
        self.kv
            .scan(TRANSACTIONS, b"", None, Order::Ascending, usize::MAX)?
            .into_iter()
            .map(|(k, v)| {
                let entry: Entry = serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Corrupt(format!("{TRANSACTIONS}: {e}")))?;
                Ok((String::from_utf8_lossy(&k).into_owned(), entry))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use lockstep_store::MemKv;

    use super::*;

    fn entry(phase: Phase) -> Entry {
        Entry {
            change: Some(Change {
                transaction_id: "T4".into(),
                environment: "production".into(),
                project: "api".into(),
                version: "v2".into(),
                from_version: "v1".into(),
                artifact: String::new(),
                metadata: Default::default(),
                restore: false,
                moving_back: false,
                target_schema: None,
            }),
            phase,
            staged: None,
            schema: None,
            reason: String::new(),
            incarnation: "i1".into(),
        }
    }

    /// Every read, cached or not, gives the record last written, as the store holds
    /// it: through a transaction's life, and from a ledger opened afresh on the store.
    #[tokio::test]
    async fn reads_give_the_record_last_written() {
        let kv: Arc<dyn Kv> = Arc::new(MemKv::new());
        let ledger = Ledger::open(kv.clone(), WriterMode::Task).unwrap();
        for phase in [Phase::Staging, Phase::Prepared, Phase::Committed] {
            ledger
                .put("T4", &entry(phase), Durability::Sync)
                .await
                .unwrap();
            let fresh = Ledger::open(kv.clone(), WriterMode::Task).unwrap();
            assert_eq!(ledger.get("T4").unwrap(), Some(entry(phase)), "{phase:?}");
            assert_eq!(fresh.get("T4").unwrap(), Some(entry(phase)), "{phase:?}");
            let open = phase != Phase::Committed;
            assert_eq!(ledger.open_ids() == ["T4"], open, "{phase:?}");
        }
        assert_eq!(ledger.get("T5").unwrap(), None, "never written");
    }

    /// What recovery finds open is open, and leaves the open set when it ends.
    #[tokio::test]
    async fn records_kept_open_at_recovery_are_open_until_they_end() {
        let kv: Arc<dyn Kv> = Arc::new(MemKv::new());
        let before = Ledger::open(kv.clone(), WriterMode::Task).unwrap();
        let prepared = before.put("T4", &entry(Phase::Prepared), Durability::Sync);
        prepared.await.unwrap();
        let after = Ledger::open(kv, WriterMode::Task).unwrap();
        assert!(
            after.open_ids().is_empty(),
            "nothing is open before recovery"
        );
        after.keep_open(after.in_phase(&[Phase::Prepared]).unwrap());
        assert_eq!(after.open_ids(), ["T4"]);
        let committed = after.put("T4", &entry(Phase::Committed), Durability::Buffered);
        committed.await.unwrap();
        assert!(after.open_ids().is_empty());
        assert_eq!(after.get("T4").unwrap(), Some(entry(Phase::Committed)));
    }
}
