//! `wait` on a call that starts a transaction (CreateRelease, RevertRelease, Rollback,
//! Promote): the answer is given once the transaction has ended, with its terminal
//! event, read from the log the way `WatchEvents` with `only_terminal` reads it but in
//! the same call. The transaction never depends on the call: admission was durable
//! before the wait began, so a caller that goes away only stops waiting.

use futures::StreamExt;
use lockstep::pb;
use tonic::{Response, Status};

use super::{CoordinatorService, created, revoked::ending_on_revocation};
use crate::access::Principal;
use crate::{feed::WatchFilter, model::TxRecord, registry::admit::Created, txn::events};

/// INVALID_ARGUMENT for `wait` without a client-chosen `id`: the answer that names a
/// generated id comes only at the end, so a call cut while it waits (its deadline, a
/// coordinator restart) would leave the caller nothing to follow the transaction by,
/// and a retry would start a second one.
pub(super) fn needs_id(wait: bool, id: &str) -> Result<(), Status> {
    if wait && id.is_empty() {
        return Err(Status::invalid_argument(
            "id: wait needs a client-chosen id, so that a call cut while it waits can be followed (WatchEvents) or retried without starting a second transaction",
        ));
    }
    Ok(())
}

/// Who waits in a call with `wait`: the wait ends when its token is revoked or expires,
/// as a WatchEvents stream does.
pub(super) struct Waiter {
    actor: String,
    expires: Option<u64>,
}

impl CoordinatorService {
    /// The [`Waiter`] of a call made by `who`.
    pub(super) fn waiter<T>(&self, request: &tonic::Request<T>, who: &Principal) -> Waiter {
        Waiter {
            actor: who.actor.clone(),
            expires: self.access.token_expiry(request),
        }
    }

    /// The answer to a call that started `c` (or found it again, on a retry); with a
    /// `waiter`, given once it has ended. A dry run has nothing to wait for.
    pub(super) async fn answer(
        &self,
        c: Created,
        waiter: Option<Waiter>,
    ) -> Result<Response<pb::CreateTransactionResponse>, Status> {
        let ended = match (&c.transaction, waiter) {
            (Some(tx), Some(waiter)) => Some(self.ended(tx, c.first_event_seq, &waiter).await?),
            _ => None,
        };
        // Once ended, the transaction as it ended (its state, votes and acknowledgements),
        // not as it was accepted: a reader of the answer's top sees the outcome.
        let now = match (&c.transaction, &ended) {
            (Some(tx), Some(_)) => self.coordinator.get(&tx.id).ok(),
            _ => None,
        };
        let mut answer = pb::CreateTransactionResponse {
            ended,
            ..created(c)
        };
        if let Some(now) = now {
            let mut shown = crate::convert::transaction(&now);
            // Readers see the end a moment after its event is durable: the event's
            // state is the one to tell.
            if let Some(ended) = &answer.ended {
                shown.state = ended.state;
            }
            answer.transaction = Some(shown);
        }
        Ok(Response::new(answer))
    }

    /// `tx`'s terminal event once it is durable, followed from `first` (its first
    /// event). A retry does not know that sequence number: it is told the outcome from
    /// the record when the transaction has ended, and otherwise follows from the log's
    /// head (a transaction that ends in between is told from its record too).
    async fn ended(&self, tx: &TxRecord, first: u64, waiter: &Waiter) -> Result<pb::Event, Status> {
        if tx.state.is_terminal() {
            return Ok(events::ended(tx));
        }
        let head = *self.coordinator.feed().latest().borrow();
        let from = if first == 0 { head + 1 } else { first };
        let filter = WatchFilter {
            transaction: Some(tx.id.clone()),
            until_terminal: true,
            only_terminal: true,
        };
        let events = self.coordinator.watch(filter, from);
        let cut = tx.clone();
        let events = events.map(move |e| e.map_err(|e| lost(&cut, from, e)));
        let (actor, expires) = (&waiter.actor, waiter.expires);
        let mut events = ending_on_revocation(&self.access, actor, expires, Box::pin(events));
        match events.next().await {
            Some(answer) => answer,
            None => self.told_by_record(tx, from),
        }
    }

    /// The outcome of `tx` from its record, when its stream ended with no terminal
    /// event: it had ended before the wait began (or this coordinator stepped down).
    fn told_by_record(&self, tx: &TxRecord, from: u64) -> Result<pb::Event, Status> {
        let record = self.coordinator.get(&tx.id)?;
        if record.state.is_terminal() {
            return Ok(events::ended(&record));
        }
        Err(lost(tx, from, "the event stream ended"))
    }
}

/// UNAVAILABLE for a wait cut short on this side, saying that the transaction goes on
/// and where to follow it (`from`: where this wait followed from).
fn lost(tx: &TxRecord, from: u64, why: impl std::fmt::Display) -> Status {
    Status::unavailable(format!(
        "wait: {why} before {} ended; it goes on: follow it with WatchEvents (transaction_id {}, from_seq {from})",
        tx.id, tx.id
    ))
}
