//! Figures at a million (`--only scale`): the real coordinator binary on a data
//! directory holding `n` committed transactions (each with its checkpoint and two
//! events), as a long-lived deployment's would. Pages of the release list and the
//! history must cost what a page holds, a watcher from the start must stream the whole
//! log fast, memory must not hold the history, and recovery must find 10,000
//! unfinished transactions among a million finished ones as fast as among none.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use lockstep::pb::{self, coordinator_client::CoordinatorClient};
use lockstep_coordinator::tables::{self, Tables};
use lockstep_store::{Batch, Durability, Kv, RocksKv};
use tonic::transport::Channel;

use crate::{
    Figure, HUNDRED_MB_IN_MIB, RARE_PROJECT, SPARSE_ENVIRONMENT, SPARSE_EVERY, coordinator_binary,
    coordinator_process, figure, micros, percentile, recovery_on, rss, stack::Certs, write_history,
};

/// Calls timed per page figure.
const CALLS: usize = 20;

/// Latency p50 (µs) of `CALLS` pages read one after the other, each from the last
/// one's token (`page` makes the call from a token and returns the next).
async fn pages<F, Fut>(mut page: F) -> anyhow::Result<f64>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = anyhow::Result<String>>,
{
    let (mut token, mut samples) = (String::new(), Vec::with_capacity(CALLS));
    for _ in 0..CALLS {
        let started = Instant::now();
        token = page(token).await?;
        samples.push(started.elapsed());
    }
    Ok(micros(percentile(&mut samples, 0.5)))
}

/// A page figure: under 10 ms.
fn page_figure(name: String, p50: f64) -> Figure {
    Figure {
        target: Some("< 10 ms".into()),
        met: Some(p50 < 10_000.0),
        ..figure(name, p50, "us")
    }
}

/// Pages of 50 of the release list (newest first), of `environment` or all.
async fn list_pages(client: &CoordinatorClient<Channel>, environment: &str) -> anyhow::Result<f64> {
    pages(|token| {
        let mut client = client.clone();
        let environment = environment.to_string();
        async move {
            let request = pb::ListReleasesRequest {
                page_size: 50,
                page_token: token,
                environment,
                ..Default::default()
            };
            Ok(client
                .list_releases(request)
                .await?
                .into_inner()
                .next_page_token)
        }
    })
    .await
}

/// Pages of the release list (newest first) and of the history (oldest first).
async fn page_figures(client: &CoordinatorClient<Channel>, n: u64) -> anyhow::Result<Vec<Figure>> {
    let list = list_pages(client, "").await?;
    let add = pb::AddEnvironmentRequest {
        name: SPARSE_ENVIRONMENT.into(),
        after: Vec::new(),
    };
    client.clone().add_environment(add).await?;
    let sparse = list_pages(client, SPARSE_ENVIRONMENT).await?;
    let history = pages(|token| {
        let mut client = client.clone();
        async move {
            let request = pb::GetHistoryRequest {
                page_size: 100,
                page_token: token,
                ..Default::default()
            };
            Ok(client
                .get_history(request)
                .await?
                .into_inner()
                .next_page_token)
        }
    })
    .await?;
    Ok(vec![
        page_figure(
            format!("release list, pages of 50, {n} transactions, p50"),
            list,
        ),
        page_figure(
            format!(
                "release list of an environment with one in {SPARSE_EVERY} of the {n}, pages of 50, p50"
            ),
            sparse,
        ),
        page_figure(
            format!("history, pages of 100, {n} checkpoints, p50"),
            history,
        ),
    ])
}

/// Pages of the release list of every environment, for a viewer of [`RARE_PROJECT`]
/// alone (over mutual TLS, as grants need): it may see one transaction in
/// [`SPARSE_EVERY`], and must not pay for reading the others.
async fn scoped_figure(dir: &Path, data: &Path, n: u64) -> anyhow::Result<Figure> {
    let agents = [RARE_PROJECT.to_string()];
    let certs = Certs::init_for(&dir.join("scoped-certs"), &agents, &["reader"]).await?;
    let mut args = certs.server_args();
    args.extend([
        "--grant".into(),
        format!("reader=viewer/{RARE_PROJECT}").into(),
    ]);
    let (mut child, address) = coordinator_process(data, &args).await?;
    let endpoint = lockstep::edge::endpoint(&format!("https://{address}"))?;
    let channel = endpoint.tls_config(certs.client("user-reader")?)?;
    let client = CoordinatorClient::new(channel.connect().await?);
    let listed = client
        .clone()
        .list_releases(pb::ListReleasesRequest::default())
        .await?;
    let seen = listed.into_inner().transactions.len() as u64;
    anyhow::ensure!(
        seen == n / SPARSE_EVERY,
        "the viewer of {RARE_PROJECT} saw {seen}"
    );
    let p50 = list_pages(&client, "").await?;
    child.kill().await?;
    Ok(page_figure(
        format!(
            "release list of every environment for a viewer of a project in one in {SPARSE_EVERY} of the {n}, pages of 50, p50"
        ),
        p50,
    ))
}

/// How long the coordinator binary takes to listen on `data` as a directory from an
/// older version (its transaction indexes filled once, before it serves), against a
/// start on the same directory once they are.
async fn upgrade_figure(data: &Path, n: u64) -> anyhow::Result<Figure> {
    {
        let kv = RocksKv::open(data, tables::ALL)?;
        let mut batch = Batch::default();
        Tables::delete_indexes_filled(&mut batch);
        kv.write(batch, Durability::Sync)?;
    }
    let mut starts = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let (mut child, _) = coordinator_binary(data).await?;
        starts.push(started.elapsed().as_secs_f64());
        child.kill().await?;
    }
    Ok(Figure {
        floor: Some(starts[1]),
        ..figure(
            format!(
                "start on {n} transactions from an older version, indexing them (floor: the next start)"
            ),
            starts[0],
            "s",
        )
    })
}

/// A watcher from the first event to `last`: events per second.
async fn stream_rate(client: &CoordinatorClient<Channel>, last: u64) -> anyhow::Result<f64> {
    let mut client = client.clone();
    let started = Instant::now();
    let request = pb::WatchEventsRequest {
        from_seq: 1,
        ..Default::default()
    };
    let mut stream = client.watch_events(request).await?.into_inner();
    let mut seen = 0;
    while let Some(event) = stream.message().await? {
        seen = event.seq;
        if seen >= last {
            break;
        }
    }
    anyhow::ensure!(
        seen >= last,
        "the watcher's stream ended at {seen} of {last}"
    );
    Ok(last as f64 / started.elapsed().as_secs_f64())
}

/// The figures for a history of `n` transactions.
pub async fn figures(dir: &Path, n: u64) -> anyhow::Result<Vec<Figure>> {
    let data = dir.join("scale");
    let written = Instant::now();
    let last = write_history(&data, n)?;
    eprintln!(
        "\nscale: wrote {n} transactions and {last} events in {:.0} s",
        written.elapsed().as_secs_f64()
    );
    let (mut child, url) = coordinator_binary(&data).await?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let client = CoordinatorClient::new(lockstep::edge::endpoint(&url)?.connect().await?);
    let at_start = rss(pid)?.0;
    let mut figures = page_figures(&client, n).await?;
    let after_pages = rss(pid)?.0;
    let rate = stream_rate(&client, last).await?;
    figures.push(Figure {
        target: Some(">= 100,000/s".into()),
        met: Some(rate >= 100_000.0),
        ..figure(
            format!("watcher from seq 1 over {last} events"),
            rate,
            "events/s",
        )
    });
    anyhow::ensure!(
        child.try_wait()?.is_none(),
        "the coordinator exited while it was measured"
    );
    let (now, peak) = rss(pid)?;
    figures.push(figure(
        format!("coordinator RSS at start, {n} transactions"),
        at_start,
        "MiB",
    ));
    figures.push(figure(
        format!("coordinator RSS after the pages, {n} transactions"),
        after_pages,
        "MiB",
    ));
    figures.push(Figure {
        target: Some("< 100 MB (95.4 MiB)".into()),
        met: Some(now < HUNDRED_MB_IN_MIB),
        ..figure(
            format!("coordinator RSS after that, {n} transactions"),
            now,
            "MiB",
        )
    });
    figures.push(figure(
        format!("coordinator peak RSS (VmHWM) over {n} transactions"),
        peak,
        "MiB",
    ));
    child.kill().await?;
    figures.push(scoped_figure(dir, &data, n).await?);
    figures.push(upgrade_figure(&data, n).await?);
    let recovered: Duration = recovery_on(dir, &data, n, 10_000).await?;
    figures.push(Figure {
        target: Some("< 2 s".into()),
        met: Some(recovered.as_secs_f64() < 2.0),
        ..figure(
            format!("recovery of 10,000 unfinished among {n} finished transactions"),
            recovered.as_secs_f64(),
            "s",
        )
    });
    Ok(figures)
}
