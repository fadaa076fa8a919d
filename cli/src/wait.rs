//! Following the event log: `release watch`, and `--wait` on anything that starts a
//! transaction. Both survive a coordinator restart: when the stream breaks they
//! reconnect and resume from the last sequence number seen, so no event is missed or
//! shown twice.

use std::time::Duration;

use lockstep::pb;
use tokio::time::Instant;
use tokio_stream::StreamExt;

use crate::{
    Failure, Result, UNREACHABLE,
    args::Output,
    dial::{Client, Dial},
    render,
};

/// How long `release watch`, which has no deadline of its own, keeps trying to reach a
/// coordinator that went away (`--wait` tries until its `--wait-timeout`).
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Once ABORT is decided the outcome is settled; `--wait` follows the acknowledgements
/// only this long, so that it names just the participants that are really behind.
const ABORT_GRACE: Duration = Duration::from_secs(2);

/// Follows `tx` until its outcome is settled or `deadline` (one deadline from the
/// moment of the call, queue included) has passed, printing its events (to stderr in
/// table mode, so stdout holds only the result), and returns its state then:
/// COMMITTED, ABORTED, ABORTING (ABORT is decided, so the outcome is known even while
/// an agent is unreachable; followed for [`ABORT_GRACE`] more), or whatever it still
/// is at the deadline (PENDING, PREPARING, VERIFYING, COMMITTING).
pub async fn until_settled(
    client: &mut Client,
    dial: &Dial,
    out: Output,
    tx: &pb::Transaction,
    from: u64,
    deadline: Instant,
) -> Result<pb::Transaction> {
    let mut follow = Follow {
        next: from.max(1),
        out,
        stop_at: deadline,
        known: tx.clone(),
    };
    loop {
        let asked = match client.watch_events(follow.request(&tx.id)).await {
            Ok(stream) => {
                let stopped = follow.read(stream.into_inner()).await;
                let request = pb::GetReleaseRequest { id: tx.id.clone() };
                match client.get_release(request).await {
                    Ok(t) if stopped || is_terminal(t.get_ref()) => return Ok(t.into_inner()),
                    Ok(_) => true,
                    Err(_) => false,
                }
            }
            Err(status) if gives_up(status.code()) => return Err(unknown_outcome(&status, tx)),
            // Anything else (a restart, a failover, a reset connection) is waited out.
            Err(_) => false,
        };
        // The coordinator could not be asked: what its event log already said stands
        // (events reach a watcher only once durable, so a decision seen is final).
        if let Some(t) = (!asked).then(|| follow.settled_unasked()).flatten() {
            return Ok(t);
        }
        // Waited out until the wait's own deadline (`--wait-timeout`), however long
        // the coordinator is away: a failover or restart longer than a couple of
        // minutes must not turn a wait of ten into "outcome unknown".
        if Instant::now() >= deadline {
            return Err(Failure::new(
                UNREACHABLE,
                format!(
                    "lost the coordinator at {} while waiting for {}; its outcome is unknown here: check with `lockstep release get {}`",
                    dial.url, tx.id, tx.id
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(c) = dial.connect().await {
            *client = c;
        }
    }
}

/// Whether an error while waiting ends the wait: the caller may not go on (its
/// credential expired, was revoked, or does not reach the transaction), or the
/// transaction is not there; any other error is the connection's, and waited out.
fn gives_up(code: tonic::Code) -> bool {
    use tonic::Code::{
        InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unimplemented,
    };
    // UNIMPLEMENTED: what answers is not a coordinator (an agent's port, say).
    matches!(
        code,
        Unauthenticated | PermissionDenied | NotFound | InvalidArgument | Unimplemented
    )
}

/// The failure of a wait that gave up on `status`: never "aborted" (the transaction
/// goes on on its own), but the outcome unknown here and how to check it.
fn unknown_outcome(status: &tonic::Status, tx: &pb::Transaction) -> Failure {
    let mut failure = Failure::from(status.clone());
    failure.message = format!(
        "{}; stopped waiting for {}: its outcome is unknown here: check with `lockstep release get {}`",
        failure.message, tx.id, tx.id
    );
    if failure.code != crate::NOT_ALLOWED {
        failure.code = UNREACHABLE;
    }
    failure
}

/// Where following one transaction's events stands, across reconnects.
struct Follow {
    next: u64,
    out: Output,
    /// When following ends: the call's deadline, or sooner once ABORT is decided.
    stop_at: Instant,
    /// The transaction as its events have told it so far (its decision, its end, who
    /// acknowledged): the answer when the coordinator cannot be asked any more.
    known: pb::Transaction,
}

impl Follow {
    fn request(&self, id: &str) -> pb::WatchEventsRequest {
        pb::WatchEventsRequest {
            from_seq: self.next,
            transaction_id: id.to_string(),
            until_terminal: true,
            only_terminal: false,
        }
    }

    /// Reads events until the stream ends or breaks (false) or following is over
    /// (true).
    async fn read(&mut self, mut stream: tonic::Streaming<pb::Event>) -> bool {
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = tokio::time::sleep_until(self.stop_at) => return true,
            };
            let Some(Ok(event)) = item else {
                return Instant::now() >= self.stop_at;
            };
            self.seen(&event);
        }
    }

    /// Shows `event`; an ABORT decision settles the outcome, so following ends soon.
    fn seen(&mut self, event: &pb::Event) {
        self.next = event.seq + 1;
        if self.out == Output::Table {
            eprintln!("{}", render::event_line(event));
        }
        if event.kind == pb::EventKind::DecidedAbort as i32 {
            self.stop_at = self.stop_at.min(Instant::now() + ABORT_GRACE);
        }
        self.learn(event);
    }

    /// What `event` says of the transaction's state.
    fn learn(&mut self, event: &pb::Event) {
        use pb::{EventKind as K, TransactionState as S};
        let state = match pb::EventKind::try_from(event.kind) {
            Ok(K::DecidedAbort) | Ok(K::TransactionAborted) => {
                // Why it aborted: the message of its decision and of its end.
                self.known.reason = event.message.clone();
                match event.kind == K::DecidedAbort as i32 {
                    true => S::Aborting,
                    false => S::Aborted,
                }
            }
            Ok(K::DecidedCommit) => S::Committing,
            Ok(K::TransactionCommitted) => S::Committed,
            // A resolution records by hand what a participant did: acknowledged.
            Ok(K::Acknowledged) | Ok(K::Resolved) => {
                let acked =
                    (self.known.participants.iter_mut()).find(|p| p.project == event.project);
                if let Some(p) = acked {
                    p.acknowledged = true;
                }
                return;
            }
            _ => return,
        };
        self.known.state = state as i32;
    }

    /// The outcome the log told, when it settles the wait without asking: an end, an
    /// ABORT followed for its grace, or a decision at the wait's deadline (its exit
    /// code says what is not done yet). `None`: nothing decided was seen.
    fn settled_unasked(&self) -> Option<pb::Transaction> {
        use pb::TransactionState as S;
        let state = S::try_from(self.known.state).ok()?;
        let now = Instant::now();
        let settled = match state {
            S::Committed | S::Aborted => true,
            S::Aborting => now >= self.stop_at,
            S::Committing => now >= self.stop_at,
            _ => false,
        };
        settled.then(|| {
            let mut t = self.known.clone();
            let why = match t.reason.is_empty() {
                true => String::new(),
                false => format!("{}; ", t.reason),
            };
            t.reason = format!("{why}as its event log said: the coordinator stopped answering");
            t
        })
    }
}

/// Whether transaction `id` (none: never) has ended, asked of the coordinator after a
/// stream of its events ended without its end (it ended before the stream's `from`).
async fn ended_before(client: &mut Client, id: &str) -> bool {
    if id.is_empty() {
        return false;
    }
    let request = pb::GetReleaseRequest { id: id.to_string() };
    let got = client.get_release(request).await;
    got.is_ok_and(|t| is_terminal(t.get_ref()))
}

/// Whether `event` is the end of transaction `id` (committed or aborted).
fn ended_event(event: &pb::Event, id: &str) -> bool {
    use pb::EventKind::{TransactionAborted, TransactionCommitted};
    !id.is_empty()
        && event.transaction_id == id
        && matches!(event.kind(), TransactionCommitted | TransactionAborted)
}

fn is_terminal(t: &pb::Transaction) -> bool {
    t.state == pb::TransactionState::Committed as i32
        || t.state == pb::TransactionState::Aborted as i32
}

/// One event on stdout: a line of the table, or one JSON object per line.
fn print_event(out: Output, event: &pb::Event) {
    match out {
        Output::Table => println!("{}", render::event_line(event)),
        Output::Json => println!(
            "{}",
            serde_json::to_string(event).expect("events serialize")
        ),
    }
}

/// `lockstep release watch`: prints events from `from` on, forever (until interrupted).
pub async fn watch(dial: &Dial, out: Output, id: String, from: u64) -> Result<()> {
    let mut next = from.max(1);
    let mut down_since: Option<Instant> = None;
    // What the last try ran into, for the message when following is given up.
    let mut last: String;
    loop {
        match dial.connect().await {
            Ok(mut client) => {
                // With an id: its story to its end, then exit 0 (stop 57: it followed
                // on forever after the transaction had ended).
                let request = pb::WatchEventsRequest {
                    from_seq: next,
                    transaction_id: id.clone(),
                    until_terminal: !id.is_empty(),
                    only_terminal: false,
                };
                match client.watch_events(request).await {
                    Ok(stream) => {
                        let mut stream = stream.into_inner();
                        while let Some(Ok(event)) = stream.next().await {
                            // Down no more only once an event is read: a stream that
                            // breaks at once, every time, must not follow for ever.
                            down_since = None;
                            next = event.seq + 1;
                            print_event(out, &event);
                            if ended_event(&event, &id) {
                                return Ok(());
                            }
                        }
                        // Ended with no end of its own: it may have ended before `from`.
                        if ended_before(&mut client, &id).await {
                            return Ok(());
                        }
                        last = "the event stream ended".into();
                    }
                    // Only what waiting cannot cure ends the watch (as `--wait`): a reset
                    // or a failover reported as UNKNOWN or CANCELLED is reconnected.
                    Err(status) if gives_up(status.code()) => return Err(status.into()),
                    Err(status) => last = status.to_string(),
                }
            }
            Err(f) if f.code == crate::USAGE => return Err(f),
            Err(f) => last = f.message,
        }
        let since = *down_since.get_or_insert_with(Instant::now);
        if since.elapsed() > RECONNECT_FOR {
            return Err(Failure::new(
                UNREACHABLE,
                format!(
                    "lost the coordinator at {} ({last}); resume with --from {next}",
                    dial.url
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
