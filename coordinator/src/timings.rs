//! Durations measured where they happen instead of read off the event log: each journal
//! sync's time and size, and how long a COMMIT decision takes to become durable. They
//! live here, apart from the `/metrics` endpoint, so that the journal and the registry
//! record them without knowing about the endpoint (which registers these same handles).

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};

/// A phase of a transaction in one environment.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Phase {
    /// The transaction's environment.
    pub environment: String,
    /// `queue_wait`, `prepare`, `verify`, `decision_fsync`, `phase2` or `total`.
    pub phase: String,
}

/// A project of an environment.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Project {
    /// The environment.
    pub environment: String,
    /// The project.
    pub project: String,
}

/// Histograms keyed by their labels, each made with the duration buckets.
pub type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The histograms the coordinator's own code moves. Cheap to clone (shared handles).
#[derive(Clone)]
pub struct Timings {
    /// Time in each phase of a transaction, in seconds.
    pub phases: Histograms<Phase>,
    /// Each durable write of the journal (fsync, or etcd transaction), in seconds.
    pub sync_seconds: Histogram,
    /// Appends made durable by each sync: how well group commit shares fsyncs.
    pub records_per_sync: Histogram,
    /// Commit or Abort calls that failed, each made again (after a backoff, or once a
    /// person retries): counted by the driver at each failure, since the log has an
    /// event only when a participant's error changes.
    pub retries: Family<Project, Counter>,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            phases: Family::new_with_constructor(duration_histogram),
            sync_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
            ),
            records_per_sync: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 12),
            ),
            retries: Family::default(),
        }
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(lockstep::metrics::duration_buckets())
}

impl Timings {
    /// Observes `took` as `phase` of a transaction in `environment`.
    pub fn phase(&self, environment: &str, phase: &str, took: Duration) {
        let labels = Phase {
            environment: environment.to_string(),
            phase: phase.to_string(),
        };
        self.phases
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Counts a Commit or Abort to `project` of `environment` that failed.
    pub fn delivery_failed(&self, environment: &str, project: &str) {
        let labels = Project {
            environment: environment.to_string(),
            project: project.to_string(),
        };
        self.retries.get_or_create(&labels).inc();
    }

    /// Observes one sync of the journal: how long it took and how many appends it made
    /// durable.
    pub fn synced(&self, took: Duration, records: u64) {
        self.sync_seconds.observe(took.as_secs_f64());
        self.records_per_sync.observe(records as f64);
    }
}
