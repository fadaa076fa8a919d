//! Restart: load the durable state and finish or undo every unfinished transaction.
//!
//! - PENDING or PREPARING: no durable decision, so ABORT (presumed abort). A PREPARING
//!   one may have prepared participants: each gets an Abort, retried until acknowledged.
//! - COMMITTING or ABORTING: the decision is durable; phase 2 resumes for every
//!   participant that has not acknowledged (deliveries are idempotent, so one that
//!   acknowledged just before the crash may be told again, harmlessly).
//!
//! This runs before the server accepts calls, so a participant asking GetDecision after
//! the restart already gets the recovered answer.

use lockstep::pb;
use lockstep_store::Batch;

use crate::{
    coordinator::Coordinator, error::Result, journal::Durable, model::TxState, protocol,
    tables::Tables,
};

/// The abort reason recorded for a transaction undecided at a restart.
pub const PRESUMED_ABORT: &str = "coordinator restarted before a decision (presumed abort)";

/// Loads state and resumes every unfinished transaction. Returns how many it resumed.
pub fn recover(c: &Coordinator) -> Result<usize> {
    c.load()?;
    let unfinished = c.tables().active_transactions()?;
    let count = unfinished.len();
    for mut tx in unfinished {
        let mut events = Vec::new();
        match tx.state {
            TxState::Pending | TxState::Preparing => {
                let was = tx.state;
                tx.state = TxState::Aborting;
                tx.reason = PRESUMED_ABORT.to_string();
                events.push(protocol::event(
                    &tx,
                    pb::EventKind::Recovered,
                    None,
                    format!("found {was:?} after a restart"),
                ));
                events.push(protocol::event(
                    &tx,
                    pb::EventKind::DecidedAbort,
                    None,
                    tx.reason.clone(),
                ));
            }
            TxState::Committing | TxState::Aborting => {
                let acked = tx.participants.iter().filter(|p| p.acknowledged).count();
                events.push(protocol::event(
                    &tx,
                    pb::EventKind::Recovered,
                    None,
                    format!(
                        "resuming phase 2 after a restart: {acked} of {} acknowledged",
                        tx.participants.len()
                    ),
                ));
            }
            TxState::Committed | TxState::Aborted => {
                // A terminal record still indexed as active: drop the index entry.
                let mut batch = Batch::default();
                Tables::put_transaction(&mut batch, &tx);
                drop(c.journal().append(batch, Vec::new(), Durable::Soon));
                continue;
            }
        }
        let mut batch = Batch::default();
        Tables::put_transaction(&mut batch, &tx);
        // Not awaited: the driver's next write of this transaction is queued after it.
        drop(c.journal().append(batch, events, Durable::Soon));
        tracing::info!(tx = %tx.id, state = ?tx.state, "resuming after restart");
        c.resume(tx);
    }
    Ok(count)
}
