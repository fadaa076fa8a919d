//! Restart: load the durable state and finish or undo every unfinished transaction.
//! What each one does is the state machine's [`crate::txn::Transaction::restarted`]:
//! undecided ones are aborted (presumed abort), decided ones resume phase 2.
//!
//! This runs before the server accepts calls, so a participant asking GetDecision after
//! the restart already gets the recovered answer.

use lockstep_store::Batch;

use crate::{error::Result, registry::Registry, tables::Tables, txn::Transaction};

/// Loads state and resumes every unfinished transaction. Returns how many it resumed.
pub fn recover(registry: &Registry, backoff: lockstep::retry::Backoff) -> Result<usize> {
    registry.load()?;
    let unfinished = registry.tables().active_transactions()?;
    let count = unfinished.len();
    for record in unfinished {
        if record.state.is_terminal() {
            // A terminal record still indexed as active: drop the index entry.
            let mut batch = Batch::default();
            Tables::put_transaction(&mut batch, &record);
            registry.write_quietly(batch);
            continue;
        }
        let mut machine = Transaction::new(record, backoff);
        let effects = machine.restarted();
        tracing::info!(tx = %machine.record().id, state = ?machine.record().state, "resuming after restart");
        registry.resume(machine, effects);
    }
    Ok(count)
}
