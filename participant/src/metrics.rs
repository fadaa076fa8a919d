//! What an agent's `/metrics` shows (docs/metrics.md lists each): how long orders take
//! and how they end, every migration file's duration, hook failures, and (at scrape
//! time) how many transactions the agent holds staged. One agent serves one project in
//! one environment, so those are the scrape target's labels, not the metrics'.
//!
//! The instruments are process-wide (an agent is one process): the SDK's edge and the
//! reference agent's hooks and migrations record into them wherever they run, and
//! [`registry`] exposes them only when `--metrics-listen` asks.

use std::{sync::LazyLock, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType, counter::Counter, family::Family, gauge::ConstGauge, histogram::Histogram,
    },
    registry::Registry,
};

/// An order and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Order {
    order: &'static str,
    outcome: &'static str,
}

/// A hook by phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Hook {
    hook: String,
}

/// A migration file's direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Migration {
    direction: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(lockstep::metrics::duration_buckets())
}

struct Instruments {
    orders: Histograms<Order>,
    hooks: Family<Hook, Counter>,
    migrations: Histograms<Migration>,
}

static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| Instruments {
    orders: Family::new_with_constructor(histogram),
    hooks: Family::default(),
    migrations: Family::new_with_constructor(histogram),
});

/// Records one Prepare, Commit or Abort (`order`) that ended as `outcome` (`prepared`,
/// `refused`, `ok`, `error`) after `took`.
pub fn order(order: &'static str, outcome: &'static str, took: Duration) {
    let labels = Order { order, outcome };
    INSTRUMENTS
        .orders
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
}

/// Records a hook that failed (`hook`: its phase, e.g. `prepare`).
pub fn hook_failed(hook: &str) {
    let labels = Hook {
        hook: hook.to_string(),
    };
    INSTRUMENTS.hooks.get_or_create(&labels).inc();
}

/// Records one migration file run `up` or `down` in `took`.
pub fn migration(up: bool, took: Duration) {
    let direction = if up { "up" } else { "down" };
    let labels = Migration { direction };
    INSTRUMENTS
        .migrations
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
}

/// Counts the transactions staging or prepared (asked at each scrape).
pub type CountStaged = Box<dyn Fn() -> usize + Send + Sync>;

/// A registry with every agent metric, the staged gauge asked of `staged` at scrape.
pub fn registry(staged: CountStaged) -> Registry {
    let mut registry = Registry::default();
    let r = registry.sub_registry_with_prefix("lockstep_agent");
    r.register(
        "order_duration_seconds",
        "Prepare, Commit and Abort orders, by order and outcome",
        INSTRUMENTS.orders.clone(),
    );
    r.register(
        "hook_failures",
        "Hooks that exited with an error, by phase",
        INSTRUMENTS.hooks.clone(),
    );
    r.register(
        "migration_duration_seconds",
        "Each migration file's run, by direction",
        INSTRUMENTS.migrations.clone(),
    );
    r.register_collector(Box::new(Staged(staged)));
    registry
}

/// Transactions staging or prepared here, counted at each scrape.
struct Staged(CountStaged);

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("staged transactions")
    }
}

impl Collector for Staged {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let staged = i64::try_from((self.0)()).unwrap_or(i64::MAX);
        let help = "Transactions staging or prepared here, waiting for the decision";
        let gauge =
            encoder.encode_descriptor("staged_transactions", help, None, MetricType::Gauge)?;
        ConstGauge::new(staged).encode(gauge)
    }
}
