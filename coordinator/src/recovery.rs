//! Restart: load the durable state and finish or undo every unfinished transaction,
//! i.e. every one whose end (terminal record with its terminal event, one write) is not
//! in the log. What each one does is the state machine's
//! [`crate::txn::Transaction::restarted`]: undecided ones are aborted (presumed abort),
//! decided ones resume phase 2, ended ones without their end get it.
//!
//! This runs before the server accepts calls, so a participant asking GetDecision after
//! the restart already gets the recovered answer.

use lockstep_store::Batch;

use crate::{error::Result, registry::Registry, tables::Tables, txn::Transaction};

/// Loads state and resumes every unfinished transaction. Returns how many it resumed.
pub fn recover(registry: &Registry, backoff: lockstep::retry::Backoff) -> Result<usize> {
    registry.fill_indexes()?;
    registry.load()?;
    let mut unfinished = registry.tables().active_transactions()?;
    if !registry.tables().ends_checked()? {
        // Once per data directory: records an earlier version stored terminal without
        // their end (and outside the active index) get their terminal event now.
        // A start cut after some of them went into the active index finds those there
        // already: each is resumed once.
        let active: std::collections::BTreeSet<_> =
            unfinished.iter().map(|t| t.id.clone()).collect();
        let mut ended = registry.tables().ended_without_end()?;
        ended.retain(|t| !active.contains(&t.id));
        // Into the active index before the mark, an append each (etcd limits one
        // write): a crash after the mark and before their ends leaves them where the
        // next start looks (stop 57).
        for record in &ended {
            let mut batch = Batch::default();
            Tables::put_transaction(&mut batch, record);
            registry.write_quietly(batch);
        }
        let mut batch = Batch::default();
        Tables::put_ends_checked(&mut batch);
        registry.write_quietly(batch);
        unfinished.extend(ended);
    }
    let count = unfinished.len();
    for record in unfinished {
        if record.state.is_terminal() && record.finished_ms != 0 {
            // Ended, its index entry not yet dropped: drop it.
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
