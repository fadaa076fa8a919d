//! Streams that end when the caller's token is revoked or expires: a token is checked
//! when a call starts, and a WatchEvents stream (the console's SSE rides on it)
//! outlives that check. A caller acting through a token, or through a token another
//! token made, hears UNAUTHENTICATED naming the token as soon as any of them is
//! revoked, or its own expires, even on a quiet stream; callers with certificates are
//! not affected.

use std::time::Duration;

use futures::StreamExt;
use tonic::Status;

use super::EventStream;
use crate::access::{Access, tokens_in};

/// `events`, ended with UNAUTHENTICATED once a token `actor` acts through is revoked,
/// or at `expires` (ms since the epoch: the caller's token's expiry).
pub(super) fn ending_on_revocation(
    access: &Access,
    actor: &str,
    expires: Option<u64>,
    events: EventStream,
) -> EventStream {
    if tokens_in(actor).next().is_none() {
        return events;
    }
    let left = expires.map(|ms| Duration::from_millis(ms.saturating_sub(access.now_ms())));
    let watching = Watching {
        events,
        revocations: access.revocations(),
        access: access.clone(),
        actor: actor.to_string(),
        expiry: left.map(|left| Box::pin(tokio::time::sleep(left))),
    };
    Box::pin(futures::stream::unfold(Some(watching), next))
}

/// What a watched stream needs between two items.
struct Watching {
    events: EventStream,
    revocations: tokio::sync::watch::Receiver<u64>,
    access: Access,
    actor: String,
    /// Until the token expires (none: it does not, or a certificate).
    expiry: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
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
        let expired = async {
            match w.expiry.as_mut() {
                Some(sleep) => sleep.await,
                None => std::future::pending().await,
            }
        };
        // Biased: a revocation or expiry is heard before the next event, however busy
        // the stream, and the order is the same on every run.
        tokio::select! {
            biased;
            changed = w.revocations.changed() => changed.ok()?,
            () = expired => {
                let token = tokens_in(&w.actor).last().unwrap_or_default().to_string();
                let why = format!("token {token} expired: this stream ends");
                return Some((Err(Status::unauthenticated(why)), None));
            }
            item = w.events.next() => return item.map(|item| (item, Some(w))),
        }
    }
}
