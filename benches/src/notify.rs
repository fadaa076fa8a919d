//! Webhook isolation: release latency with one dead and one slow subscriber beside the
//! same releases with none, in one run. The dead one accepts connections and never
//! answers (every delivery times out and backs off); the slow one answers 200 after
//! 50 ms. Neither may slow the protocol: deliveries run beside it, from the log.

use std::time::Duration;

use lockstep::pb;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{Figure, figure, micros, percentile, rss, serial_releases, stack::Stack};

/// How long the slow receiver takes to answer.
const SLOW: Duration = Duration::from_millis(50);

/// The figures: p50 with none, p50 with both (floor: none), their ratio, how far the
/// dead subscriber fell behind, and the process's RSS growth over each run (a backlog
/// lives in the log, not in memory).
pub async fn figures(stack: &mut Stack, count: usize) -> anyhow::Result<Vec<Figure>> {
    let three: Vec<String> = (0..3).map(|i| format!("p{i}")).collect();
    let before = rss(std::process::id())?.0;
    let mut none = serial_releases(stack, "notify-none", &three, count).await?;
    let none = micros(percentile(&mut none, 0.5));
    let between = rss(std::process::id())?.0;
    let dead = receiver(None).await?;
    let slow = receiver(Some(SLOW)).await?;
    subscribe(stack, "bench-dead", &dead).await?;
    subscribe(stack, "bench-slow", &slow).await?;
    let mut with = serial_releases(stack, "notify-with", &three, count).await?;
    let with = micros(percentile(&mut with, 0.5));
    let after = rss(std::process::id())?.0;
    let lag = lag_of(stack, "bench-dead").await?;
    for name in ["bench-dead", "bench-slow"] {
        let request = pb::RemoveSubscriptionRequest { name: name.into() };
        stack.client.remove_subscription(request).await?;
    }
    Ok(vec![
        Figure {
            floor: Some(none),
            target: Some("<= 1.2x none".into()),
            met: Some(with <= 1.2 * none),
            ..figure(
                "webhooks: release latency p50 with a dead and a slow subscriber (floor: none)",
                with,
                "us",
            )
        },
        figure(
            "webhooks: latency with / without subscribers",
            with / none,
            "x",
        ),
        figure(
            "webhooks: events the dead subscriber is behind at the end",
            lag as f64,
            "events",
        ),
        Figure {
            floor: Some(between - before),
            target: Some("<= growth without + 8 MiB".into()),
            met: Some(after - between <= between - before + 8.0),
            ..figure(
                "webhooks: RSS growth over the run with them (floor: without)",
                after - between,
                "MiB",
            )
        },
    ])
}

async fn subscribe(stack: &mut Stack, name: &str, url: &str) -> anyhow::Result<()> {
    let request = pb::AddSubscriptionRequest {
        name: name.into(),
        url: url.into(),
        ..Default::default()
    };
    stack.client.add_subscription(request).await?;
    Ok(())
}

async fn lag_of(stack: &mut Stack, name: &str) -> anyhow::Result<u64> {
    let list = stack
        .client
        .list_subscriptions(pb::ListSubscriptionsRequest {})
        .await?;
    let found = list
        .into_inner()
        .subscriptions
        .into_iter()
        .find(|s| s.name == name);
    Ok(found.map_or(0, |s| s.lag))
}

/// A receiver on a fresh port: answering 200 after `delay`, or never (`None`).
async fn receiver(delay: Option<Duration>) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, delay));
        }
    });
    Ok(url)
}

/// Answers each request on `stream` after `delay` (or holds it open forever).
async fn serve(mut stream: TcpStream, delay: Option<Duration>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    while let Ok(n) = stream.read(&mut chunk).await {
        if n == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..n]);
        while let Some(length) = request_length(&buffer) {
            buffer.drain(..length);
            let Some(delay) = delay else { continue };
            tokio::time::sleep(delay).await;
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
            if stream.write_all(answer).await.is_err() {
                return;
            }
        }
    }
}

/// The length of the first whole request in `buffer` (headers and body), if it is all
/// there.
fn request_length(buffer: &[u8]) -> Option<usize> {
    let end = buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let headers = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
    let body = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buffer.len() >= end + body).then_some(end + body)
}
