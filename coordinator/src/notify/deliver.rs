//! One subscription's delivery task: it reads the log from the subscription's cursor,
//! a page at a time (so a backlog costs disk, not memory), and POSTs each event it
//! wants, one request in flight, retrying the same event until the receiver takes it
//! (capped exponential backoff, `Retry-After` honoured) or answers 410 Gone. The cursor
//! moves past an event only once the receiver acknowledged it (or it was not wanted),
//! and is stored as it moves, so a restart resumes where delivery stood.

use std::{sync::Arc, time::Duration};

use lockstep::{names::TxId, pb};
use tokio::sync::watch;

use super::{
    Hub, Shared,
    cloud::{self, Answer},
    route,
};

/// Events read from the log at a time.
const PAGE: usize = 256;

/// How a delivery of one event ended.
enum Done {
    /// The receiver has it.
    Delivered,
    /// The receiver answered 410, or the token the subscription was added with was
    /// revoked: the subscription stops, for this reason.
    Gone(String),
    /// The subscription was removed.
    Stopped,
}

/// Runs until the subscription is removed or disabled.
pub(super) async fn run(hub: Arc<Hub>, shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let mut latest = hub.feed.latest();
    let mut cache = Involved::default();
    while !*stop.borrow() {
        let cursor = shared.slot().record.cursor;
        let events = match hub.feed.read(cursor + 1, PAGE) {
            Ok(events) => events,
            Err(e) => {
                shared.slot().last_error = format!("reading the log: {e}");
                tokio::time::sleep(hub.settings.max_backoff).await;
                continue;
            }
        };
        if events.is_empty() {
            tokio::select! {
                _ = latest.wait_for(|newest| *newest > cursor) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            continue;
        }
        if !deliver_page(&hub, &shared, events, &mut cache, &mut stop).await {
            return;
        }
    }
}

/// Delivers one page of the log; false when the task must end.
async fn deliver_page(
    hub: &Arc<Hub>,
    shared: &Arc<Shared>,
    events: Vec<pb::Event>,
    cache: &mut Involved,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let routes = hub.routes();
    let record = shared.slot().record.clone();
    for e in events {
        let projects = match record.project.is_some() {
            true => cache.projects(hub, &e),
            false => &[][..],
        };
        let involves = |p: &str| projects.iter().any(|mine| mine == p);
        if route::wants(&record, &e, &routes, involves) {
            match deliver(hub, shared, &e, stop).await {
                Done::Delivered => shared.delivered(e.seq),
                Done::Gone(why) => {
                    hub.disable(shared, why).await;
                    return false;
                }
                Done::Stopped => return false,
            }
            hub.save(shared);
        } else {
            shared.slot().record.cursor = e.seq;
        }
    }
    hub.save(shared);
    true
}

/// Sends `e` until the receiver takes it, answers 410, or the subscription goes (then
/// at once: a removed subscription's next event is never sent).
async fn deliver(
    hub: &Hub,
    shared: &Shared,
    e: &pb::Event,
    stop: &mut watch::Receiver<bool>,
) -> Done {
    let mut backoff = hub.settings.first_backoff;
    loop {
        if *stop.borrow() {
            return Done::Stopped;
        }
        if let Some(token) = hub.revoked_creator(shared) {
            let why = format!("the token {token} it was added with was revoked");
            return Done::Gone(why);
        }
        // A removal drops the request in flight: nothing is sent after it returns.
        let answer = tokio::select! {
            answer = attempt(hub, shared, e) => answer,
            _ = stop.wait_for(|stopped| *stopped) => return Done::Stopped,
        };
        shared.note(&answer);
        let wait = match answer {
            Answer::Delivered(_) => return Done::Delivered,
            Answer::Gone(_) => return Done::Gone(answer.error()),
            Answer::Later(_, wait) => wait,
            Answer::Failed(..) => next(&mut backoff, hub.settings.max_backoff),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|stopped| *stopped) => return Done::Stopped,
        }
    }
}

/// The wait before the next retry: `backoff`, which then doubles up to `max`.
fn next(backoff: &mut Duration, max: Duration) -> Duration {
    let wait = (*backoff).min(max);
    *backoff = (*backoff * 2).min(max);
    wait
}

/// One POST of `e`.
async fn attempt(hub: &Hub, shared: &Shared, e: &pb::Event) -> Answer {
    let record = shared.slot().record.clone();
    let request = cloud::from_log(e, &hub.source)
        .and_then(|event| cloud::request(&hub.client, &record, event));
    match request {
        Ok(request) => hub.post(request).await,
        Err(why) => Answer::Failed(0, format!("could not build the request: {why}")),
    }
}

/// The projects of the transaction last looked up, for `--project` filters (events of
/// one transaction come together, so one entry saves most lookups).
#[derive(Default)]
struct Involved {
    tx: String,
    projects: Vec<String>,
}

impl Involved {
    /// The projects `e` is about: its transaction's, or its own project.
    fn projects(&mut self, hub: &Hub, e: &pb::Event) -> &[String] {
        if e.transaction_id.is_empty() {
            self.tx.clear();
            self.projects = vec![e.project.clone()];
        } else if self.tx != e.transaction_id {
            self.tx = e.transaction_id.clone();
            self.projects = participants(hub, &e.transaction_id);
        }
        &self.projects
    }
}

fn participants(hub: &Hub, tx: &str) -> Vec<String> {
    let record = TxId::parse("transaction_id", tx)
        .ok()
        .and_then(|id| hub.tables.transaction(&id).ok().flatten());
    let parts = record.map(|r| r.participants).unwrap_or_default();
    parts.iter().map(|p| p.project.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let (mut backoff, max) = (Duration::from_millis(200), Duration::from_secs(1));
        let waits: Vec<_> = (0..5)
            .map(|_| next(&mut backoff, max).as_millis())
            .collect();
        assert_eq!(waits, [200, 400, 800, 1000, 1000]);
    }
}
