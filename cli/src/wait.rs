//! Following the event log: `release watch`, and `--wait` on anything that starts a
//! transaction. Both survive a coordinator restart: when the stream breaks they
//! reconnect and resume from the last sequence number seen, so no event is missed or
//! shown twice.

use std::time::Duration;

use lockstep::pb::{self, coordinator_client::CoordinatorClient};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::{Failure, Result, UNREACHABLE, args::Output, connect, render};

/// How long a watcher keeps trying to reach a coordinator that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Follows `tx` until it is committed or aborted, printing its events (to stderr in
/// table mode, so stdout holds only the result), and returns its final state.
pub async fn until_terminal(
    client: &mut CoordinatorClient<Channel>,
    url: &str,
    out: Output,
    tx: &pb::Transaction,
    from: u64,
) -> Result<pb::Transaction> {
    let mut next = from.max(1);
    let mut down_since: Option<tokio::time::Instant> = None;
    loop {
        let request = pb::WatchEventsRequest {
            from_seq: next,
            transaction_id: tx.id.clone(),
            until_terminal: true,
            // In JSON mode no progress is shown: only the outcome is needed.
            only_terminal: out == Output::Json,
        };
        match client.watch_events(request).await {
            Ok(stream) => {
                down_since = None;
                let mut stream = stream.into_inner();
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(event) => {
                            next = event.seq + 1;
                            if out == Output::Table {
                                eprintln!("{}", render::event_line(&event));
                            }
                        }
                        Err(_) => break,
                    }
                }
                if let Ok(t) = client
                    .get_release(pb::GetReleaseRequest { id: tx.id.clone() })
                    .await
                {
                    let t = t.into_inner();
                    if is_terminal(&t) {
                        return Ok(t);
                    }
                }
            }
            Err(status) if status.code() != tonic::Code::Unavailable => return Err(status.into()),
            Err(_) => {}
        }
        let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() > RECONNECT_FOR {
            return Err(Failure {
                code: UNREACHABLE,
                message: format!(
                    "lost the coordinator at {url} while waiting for {}; its outcome is unknown here: check with `lockstep release get {}`",
                    tx.id, tx.id
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(c) = connect(url).await {
            *client = c;
        }
    }
}

fn is_terminal(t: &pb::Transaction) -> bool {
    t.state == pb::TransactionState::Committed as i32
        || t.state == pb::TransactionState::Aborted as i32
}

/// `lockstep release watch`: prints events from `from` on, forever (until interrupted).
pub async fn watch(url: &str, out: Output, id: String, from: u64) -> Result<()> {
    let mut next = from.max(1);
    let mut down_since: Option<tokio::time::Instant> = None;
    loop {
        if let Ok(mut client) = connect(url).await {
            let request = pb::WatchEventsRequest {
                from_seq: next,
                transaction_id: id.clone(),
                until_terminal: false,
                only_terminal: false,
            };
            match client.watch_events(request).await {
                Ok(stream) => {
                    down_since = None;
                    let mut stream = stream.into_inner();
                    while let Some(Ok(event)) = stream.next().await {
                        next = event.seq + 1;
                        match out {
                            Output::Table => println!("{}", render::event_line(&event)),
                            Output::Json => println!(
                                "{}",
                                serde_json::to_string(&event).expect("events serialize")
                            ),
                        }
                    }
                }
                Err(status) if status.code() != tonic::Code::Unavailable => {
                    return Err(status.into());
                }
                Err(_) => {}
            }
        }
        let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() > RECONNECT_FOR {
            return Err(Failure {
                code: UNREACHABLE,
                message: format!("lost the coordinator at {url}; resume with --from {next}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
