//! What the console's live pages cost: release latency on one stack with no one
//! following the log, then with 100 Server-Sent Events streams of `GET /api/v1/events`
//! open (as 100 console tabs would hold), measured in ABBA order (none, watchers,
//! watchers, none) so that the stack's growth weighs on both alike.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use lockstep_coordinator::access::Access;

use crate::{Figure, figure, micros, percentile, serial_releases, stack};

/// Streams held open in the "with watchers" rounds.
const WATCHERS: usize = 100;

/// Release latency p50 (µs) of `count` serial 3-project releases on `stack` now.
async fn p50(stack: &mut stack::Stack, tag: &str, count: usize) -> anyhow::Result<f64> {
    let three: Vec<String> = (0..3).map(|i| format!("p{i}")).collect();
    let mut samples = serial_releases(stack, tag, &three, count).await?;
    Ok(micros(percentile(&mut samples, 0.5)))
}

/// Opens [`WATCHERS`] SSE streams at `api` from sequence `from` (the head: live
/// followers, as console tabs are once loaded); each counts the events it reads into
/// `read.0`, and itself into `read.1` once it has read one.
async fn watch(
    api: &str,
    from: u64,
    read: &(Arc<AtomicU64>, Arc<AtomicU64>),
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let http = reqwest::Client::new();
    let mut streams = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        let mut response = http.get(format!("{api}/events?from={from}")).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "events: {}",
            response.status()
        );
        let (read, reading) = read.clone();
        streams.push(tokio::spawn(async move {
            let mut mine = 0;
            while let Ok(Some(chunk)) = response.chunk().await {
                // Each event's `id: ` line (at the chunk's start, or after a newline).
                let events = usize::from(chunk.starts_with(b"id: "))
                    + chunk.windows(5).filter(|w| w == b"\nid: ").count();
                if mine == 0 && events > 0 {
                    reading.fetch_add(1, Ordering::Relaxed);
                }
                mine += events;
                read.fetch_add(events as u64, Ordering::Relaxed);
            }
        }));
    }
    Ok(streams)
}

/// The figure: latency with watchers, against the same stack's without.
pub async fn figures(dir: &Path, count: usize) -> anyhow::Result<Vec<Figure>> {
    let mut stack = stack::coordinator(&dir.join("watchers"), None).await?;
    let mut projects = Vec::new();
    for name in ["p0", "p1", "p2"] {
        let url = stack
            .participant(name, &dir.join(format!("watchers-{name}")), None)
            .await?;
        projects.push((name.to_string(), url));
    }
    stack.register(&projects).await?;
    let addr = "127.0.0.1:0".parse()?;
    let bound = lockstep_coordinator::http::start(
        addr,
        None,
        stack.coordinator.clone(),
        Access::insecure(),
    )
    .await?;
    let api = format!("http://{bound}/api/v1");
    let read = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (mut none, mut with) = (Vec::new(), Vec::new());
    for (round, watched) in [false, true, true, false].into_iter().enumerate() {
        let streams = match watched {
            true => {
                let head = *stack.coordinator.feed().latest().borrow();
                watch(&api, head + 1, &read).await?
            }
            false => Vec::new(),
        };
        let value = p50(&mut stack, &format!("w{round}"), count).await?;
        streams.iter().for_each(|s| s.abort());
        match watched {
            true => with.push(value),
            false => none.push(value),
        }
    }
    let (none, with) = (
        none.iter().sum::<f64>() / 2.0,
        with.iter().sum::<f64>() / 2.0,
    );
    let (read, reading) = (
        read.0.load(Ordering::Relaxed),
        read.1.load(Ordering::Relaxed),
    );
    // Watchers that read nothing cost nothing: the ratio would pass on broken streams.
    // Each of the two watched rounds' streams must have read.
    anyhow::ensure!(
        reading == 2 * WATCHERS as u64,
        "{reading} of the 2 x {WATCHERS} SSE streams read an event"
    );
    Ok(vec![
        figure(
            format!("events read by {WATCHERS} SSE watchers"),
            read as f64,
            "events",
        ),
        Figure {
            floor: Some(none),
            target: Some("<= 1.2x none".into()),
            met: Some(with <= 1.2 * none),
            ..figure(
                format!("release latency p50, {WATCHERS} SSE watchers (floor: none)"),
                with,
                "us",
            )
        },
    ])
}
