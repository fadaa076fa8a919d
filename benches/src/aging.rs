//! Whether a stack's throughput holds as its history grows: one fresh stack, 32
//! clients releasing without pause through several windows, each window's rate
//! compared with the first's. A call whose cost grows with the history (a table
//! scanned, a map cloned) shows here as a falling rate.
//!
//! And moves back: releasing versions that were live before (a revert, a rollback, a
//! re-release) is checked against the history for the combination having been live
//! together; its latency with the grown history is compared with the same moves on the
//! young stack.
//!
//! And the plan of a revert of the first release (a dry run): the releases after it
//! grow with the history, so a plan that read them all would grow too.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use crate::{Figure, figure, micros, observed, percentile, stack, throughput};

/// Versions released in turn, then moved back to.
const BACK: usize = 100;

/// Serial releases of p0..p2 at `v0`..`v{BACK-1}` (ids tagged `tag`); their latencies.
async fn releases(stack: &mut stack::Stack, tag: &str) -> anyhow::Result<Vec<Duration>> {
    let three: Vec<String> = (0..3).map(|i| format!("p{i}")).collect();
    let mut samples = Vec::with_capacity(BACK);
    for i in 0..BACK {
        let started = Instant::now();
        let (id, version) = (format!("{tag}-{i}"), format!("v{i}"));
        stack::release(&mut stack.client, &id, &three, &version).await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// Dry-run reverts of one early release, timed.
const PLANS: usize = 200;

/// Dry-run reverts of `release`; their latencies.
async fn revert_plans(stack: &mut stack::Stack, release: &str) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(PLANS);
    for _ in 0..PLANS {
        let started = Instant::now();
        let request = lockstep::pb::RevertReleaseRequest {
            release_id: release.to_string(),
            dry_run: true,
            ..Default::default()
        };
        stack.client.revert_release(request).await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// Clients (as many disjoint 3-project sets).
const CLIENTS: usize = 32;
/// Windows measured one after the other.
const WINDOWS: usize = 6;

/// The figure: the last window's rate against the first's.
pub async fn figures(dir: &Path, seconds: u64) -> anyhow::Result<Vec<Figure>> {
    let mut stack = observed::fresh(&dir.join("aging"), CLIENTS).await?;
    releases(&mut stack, "first").await?;
    let mut young = releases(&mut stack, "back-young").await?;
    let mut young_plan = revert_plans(&mut stack, "first-1").await?;
    let mut rates = Vec::with_capacity(WINDOWS);
    let mut released = 0;
    for _ in 0..WINDOWS {
        let t = throughput(&stack, CLIENTS, Duration::from_secs(seconds)).await?;
        released += t.committed;
        rates.push(t.rate());
    }
    let shown: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    eprintln!("\naging: committed/s per window: {}", shown.join(", "));
    let mut old = releases(&mut stack, "back-old").await?;
    let mut old_plan = revert_plans(&mut stack, "first-1").await?;
    let (young, old) = (
        micros(percentile(&mut young, 0.5)),
        micros(percentile(&mut old, 0.5)),
    );
    let (young_plan, old_plan) = (
        micros(percentile(&mut young_plan, 0.5)),
        micros(percentile(&mut old_plan, 0.5)),
    );
    let (first, last) = (rates[0], rates[WINDOWS - 1]);
    let back = Figure {
        floor: Some(young),
        target: Some("<= 1.5x young".into()),
        met: Some(old <= 1.5 * young),
        ..figure(
            "aging: move back to versions live before, grown stack, p50 (floor: young stack)",
            old,
            "us",
        )
    };
    // The count is a figure of its own: in the names it would split rounds apart.
    Ok(vec![
        figure(
            "aging: releases in the windows",
            released as f64,
            "releases",
        ),
        back,
        // A read-only call: its reads hit the young stack's memtable and the grown one's
        // table files, with no fsync to hide that in; what it must not do is grow with
        // the releases after the reverted one (it read them all: 150x at ~33,000).
        Figure {
            floor: Some(young_plan),
            target: Some("<= 2x young".into()),
            met: Some(old_plan <= 2.0 * young_plan),
            ..figure(
                "aging: plan a revert of the first release (dry run), grown stack, p50 (floor: young stack)",
                old_plan,
                "us",
            )
        },
        Figure {
            floor: Some(first),
            target: Some(">= 0.9x first".into()),
            met: Some(last >= 0.9 * first),
            ..figure(
                format!(
                    "aging: throughput in the last window, {CLIENTS} clients (floor: first window)"
                ),
                last,
                "committed/s",
            )
        },
    ])
}
