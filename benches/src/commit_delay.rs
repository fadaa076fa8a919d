//! The commit delay (`--commit-delay`, `--commit-siblings`): two coordinators of the same
//! shape and age, with participants of their own, one with the delay and one without,
//! run the throughput clients in turn, and each figure is set beside the other's.

use std::{path::Path, time::Duration};

use lockstep_coordinator::{Config, journal::CommitDelay};

use crate::{Figure, client_projects, figure, stack, throughput};

/// The setting measured: long enough that ~8 releases arrive within it at 32 clients on
/// 2 cores, with a threshold above 8 clients' worth of transactions in flight.
const SETTING: CommitDelay = CommitDelay {
    delay: Duration::from_millis(8),
    siblings: 16,
};

/// The two stacks, built by the first round and kept by the later ones (each is 96
/// RocksDB instances, ~3.5 GB of preallocated logs on disk).
static STACKS: tokio::sync::OnceCell<(stack::Stack, stack::Stack)> =
    tokio::sync::OnceCell::const_new();

/// Throughput and group commit at 16 and 32 clients with [`SETTING`], against the
/// same run on a stack of the same shape and age without it (the two alternate).
pub async fn figures(dir: &Path, seconds: u64) -> anyhow::Result<Vec<Figure>> {
    let (off, on) = STACKS.get_or_try_init(|| both(dir)).await?;
    let run = Duration::from_secs(seconds);
    let mut figures = Vec::new();
    for clients in [16usize, 32] {
        let base = throughput(off, clients, run).await?.rate();
        let t = throughput(on, clients, run).await?;
        let (rate, factor) = (t.rate(), t.per_sync()?);
        let at_32 = clients == 32;
        let setting = "commit delay 8ms";
        figures.push(Figure {
            target: at_32.then(|| ">= 8 at 32 clients".into()),
            met: at_32.then_some(factor >= 8.0),
            ..figure(
                format!("group commit, {clients} clients, {setting}"),
                factor,
                "committed per WAL sync",
            )
        });
        figures.push(Figure {
            floor: Some(base),
            target: Some(">= 0.9x without".into()),
            met: Some(rate >= 0.9 * base),
            ..figure(
                format!("throughput, {clients} clients, {setting} (floor: without)"),
                rate,
                "committed/s",
            )
        });
    }
    Ok(figures)
}

/// The stack without the delay and the one with it.
async fn both(dir: &Path) -> anyhow::Result<(stack::Stack, stack::Stack)> {
    let off = client_stack(&dir.join("commit-delay-off"), CommitDelay::default()).await?;
    Ok((
        off,
        client_stack(&dir.join("commit-delay-on"), SETTING).await?,
    ))
}

/// A coordinator with `delay` and the throughput clients' 96 projects, each with a
/// participant of its own.
async fn client_stack(dir: &Path, delay: CommitDelay) -> anyhow::Result<stack::Stack> {
    let config = Config {
        commit_delay: delay,
        ..Config::default()
    };
    let mut stack = stack::coordinator_with(&dir.join("coordinator"), None, config).await?;
    let projects = client_projects(&stack, dir).await?;
    stack.register(&projects).await?;
    Ok(stack)
}
