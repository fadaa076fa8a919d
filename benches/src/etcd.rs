//! What the coordinator on etcd costs, beside RocksDB in the same run: release latency
//! and throughput with a local 3-member etcd cluster (every member fsyncs on this
//! machine's disk) and fresh no-op participants, so the ratio shows what replication and
//! fencing add.

use std::{path::Path, time::Duration};

use lockstep_store::etcd_member::EtcdCluster;

use crate::{Figure, figure, micros, percentile, serial_releases, stack, throughput};

/// The etcd figures; `rocks_p50` (µs) is the same run's RocksDB release latency.
pub async fn figures(
    dir: &Path,
    rocks_p50: f64,
    count: usize,
    seconds: u64,
) -> anyhow::Result<Vec<Figure>> {
    let etcd = EtcdCluster::start(&dir.join("etcd"), 3).map_err(anyhow::Error::msg)?;
    let mut stack = stack::etcd_coordinator(&etcd.url("bench")).await?;
    let mut names = Vec::new();
    for p in (0..3).map(|i| format!("p{i}")).chain(sets(32)) {
        let url = stack
            .participant(&p, &dir.join(format!("etcd-{p}")), None)
            .await?;
        names.push((p, url));
    }
    stack.register(&names).await?;
    let three: Vec<String> = (0..3).map(|i| format!("p{i}")).collect();
    let mut samples = serial_releases(&mut stack, "etcd-lat", &three, count).await?;
    let p50 = micros(percentile(&mut samples, 0.5));
    let mut out = vec![Figure {
        floor: Some(rocks_p50),
        ..figure(
            "etcd: release latency p50, 3 participants (floor: RocksDB)",
            p50,
            "us",
        )
    }];
    for clients in [1usize, 32] {
        let t = throughput(&stack, clients, Duration::from_secs(seconds)).await?;
        let rate = t.rate();
        out.push(figure(
            format!("etcd: throughput, {clients} clients, 3-project releases"),
            rate,
            "committed/s",
        ));
        out.push(figure(
            format!("etcd: journal appends per etcd transaction, {clients} clients"),
            t.appends_per_sync,
            "appends",
        ));
    }
    // Fresh agents: an agent serves one coordinator (one incarnation) only.
    let mut fresh = Vec::new();
    for p in ["f0", "f1", "f2"] {
        let url = stack::participant(p, &dir.join(format!("failover-{p}")), None).await?;
        fresh.push((p.to_string(), url));
    }
    let mut failovers = crate::failover::times(&etcd.url("failover"), &fresh, 3).await?;
    let ttl = crate::failover::TTL.as_secs_f64() * 1000.0;
    for (name, q) in [("p50", 0.5), ("max", 1.0)] {
        let value = percentile(&mut failovers, q).as_secs_f64() * 1000.0;
        out.push(Figure {
            floor: Some(ttl),
            ..figure(
                format!("etcd: failover {name} of 3, SIGKILL to new leader's commit (floor: TTL)"),
                value,
                "ms",
            )
        });
    }
    Ok(out)
}

/// The projects of `n` disjoint 3-project sets, as `throughput` names them.
fn sets(n: usize) -> impl Iterator<Item = String> {
    (0..n).flat_map(|g| ["a", "b", "c"].map(|m| format!("g{g}{m}")))
}
