//! Streams that end when the caller's token is revoked: a token is checked when a call
//! starts, and a WatchEvents stream (the console's SSE rides on it) outlives that
//! check. A caller acting through a token, or through a token another token made,
//! hears UNAUTHENTICATED naming the token as soon as any of them is revoked, even on a
//! quiet stream; callers with certificates are not affected.

use futures::StreamExt;
use tonic::Status;

use super::EventStream;
use crate::access::{Access, tokens_in};

/// `events`, ended with UNAUTHENTICATED once a token `actor` acts through is revoked.
pub(super) fn ending_on_revocation(
    access: &Access,
    actor: &str,
    events: EventStream,
) -> EventStream {
    if tokens_in(actor).next().is_none() {
        return events;
    }
    let watching = Watching {
        events,
        revocations: access.revocations(),
        access: access.clone(),
        actor: actor.to_string(),
    };
    Box::pin(futures::stream::unfold(Some(watching), next))
}

/// What a watched stream needs between two items.
struct Watching {
    events: EventStream,
    revocations: tokio::sync::watch::Receiver<u64>,
    access: Access,
    actor: String,
}

/// The next item: an event, or the end with the revocation's reason (then `None`).
async fn next(
    watching: Option<Watching>,
) -> Option<(Result<lockstep::pb::Event, Status>, Option<Watching>)> {
    let mut w = watching?;
    loop {
        if let Some(token) = w.access.revoked_in(&w.actor) {
            let why = format!("token {token} was revoked: this stream ends");
            return Some((Err(Status::unauthenticated(why)), None));
        }
        tokio::select! {
            item = w.events.next() => return item.map(|item| (item, Some(w))),
            changed = w.revocations.changed() => changed.ok()?,
        }
    }
}
