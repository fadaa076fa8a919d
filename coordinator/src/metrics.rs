//! What the coordinator's `/metrics` shows (docs/metrics.md lists every metric with its
//! labels). Counters and histograms are read off the event log as it is written, so
//! they count exactly what the log says happened and cost the protocol nothing; gauges
//! are computed at scrape time from the state, so they never go stale. Labels are
//! bounded (environment, project, kind, outcome, phase, step kind, subscription); never
//! a transaction id, a version or a URL.

use std::collections::HashMap;

use lockstep::{names::TxId, pb};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::MetricType,
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
    },
    registry::Registry,
};

use crate::{
    coordinator::Coordinator,
    model::{StepKind, TxKind, TxState},
    timings::Timings,
};

/// A transaction's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ended {
    environment: String,
    kind: String,
    outcome: String,
}

/// One vote.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Voted {
    environment: String,
    project: String,
    outcome: String,
}

/// One verify step's end.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Stepped {
    environment: String,
    kind: String,
    outcome: String,
}

/// The counters and histograms the event log moves.
#[derive(Clone)]
struct FromLog {
    transactions: Family<Ended, Counter>,
    /// Shared with the journal, which observes `decision_fsync` itself.
    phases: Timings,
    votes: Family<Voted, Counter>,
    steps: Family<Stepped, Counter>,
}

/// What the metrics keep of a running transaction: when it reached each point (event
/// times, milliseconds), and its kind and verify steps, read from memory once at its
/// creation (never looked up later: a finished record is in storage, behind the lock
/// every driver takes).
#[derive(Default)]
struct Times {
    created: u64,
    prepare: u64,
    verify: u64,
    decided: u64,
    kind: Option<TxKind>,
    steps: Vec<(String, StepKind)>,
}

/// Registers every coordinator metric in `registry` and starts reading the log.
pub fn register(registry: &mut Registry, coordinator: &Coordinator) {
    let log = FromLog {
        transactions: Family::default(),
        phases: coordinator.journal_timings().clone(),
        votes: Family::default(),
        steps: Family::default(),
    };
    let r = registry.sub_registry_with_prefix("lockstep");
    r.register(
        "transactions",
        "Transactions ended, by kind, environment and outcome",
        log.transactions.clone(),
    );
    r.register(
        "phase_duration_seconds",
        "Time spent in each phase of a transaction (queue_wait, prepare, verify, decision_fsync, phase2, total)",
        log.phases.phases.clone(),
    );
    r.register(
        "journal_sync_duration_seconds",
        "Each durable write of the journal (fsync, or etcd transaction)",
        log.phases.sync_seconds.clone(),
    );
    r.register(
        "journal_records_per_sync",
        "Appends each durable write of the journal covered (group commit)",
        log.phases.records_per_sync.clone(),
    );
    r.register("votes", "Votes received, by outcome", log.votes.clone());
    r.register(
        "verify_steps",
        "Verify steps ended, by step kind and outcome",
        log.steps.clone(),
    );
    r.register(
        "delivery_retries",
        "Commit or Abort calls that failed, each made again (after a backoff, or once a person retries)",
        log.phases.retries.clone(),
    );
    r.register_collector(Box::new(Scraped(coordinator.clone())));
    tokio::spawn(follow(coordinator.clone(), log));
}

/// Reads every event written from now on into `log`, as the feed publishes it (not
/// as a watcher: the metrics reader is not one of the watchers it counts).
async fn follow(coordinator: Coordinator, log: FromLog) {
    let feed = coordinator.feed().clone();
    let mut latest = feed.latest();
    let mut next = *latest.borrow_and_update() + 1;
    // After the head is taken: a transaction created since is seen by its event too.
    let mut running = recovered(&coordinator);
    while latest.changed().await.is_ok() {
        let head = *latest.borrow_and_update();
        while next <= head {
            let Ok(events) = feed.read(next, 512) else {
                break;
            };
            let Some(last) = events.last().map(|e| e.seq) else {
                break;
            };
            events
                .iter()
                .for_each(|e| log.count(&coordinator, &mut running, e));
            next = last + 1;
        }
    }
}

/// What the metrics know of the transactions already running when they start reading
/// the log (those recovery resumed, whose creation they never see): created when their
/// record says, of their kind, with their verify steps. Their phases before now are not
/// observed; their end and total time are.
fn recovered(coordinator: &Coordinator) -> HashMap<String, Times> {
    let unfinished = coordinator.registry().unfinished().into_iter();
    let times = unfinished.map(|t| {
        let steps = t
            .steps
            .iter()
            .map(|r| (r.step.name.clone(), r.step.kind.clone()));
        let times = Times {
            created: t.created_ms,
            kind: Some(t.kind),
            steps: steps.collect(),
            ..Times::default()
        };
        (t.id.to_string(), times)
    });
    times.collect()
}

/// The entry of transaction `id`, made if it is new.
fn times<'a>(running: &'a mut HashMap<String, Times>, id: &str) -> &'a mut Times {
    running.entry(id.to_string()).or_default()
}

fn millis(e: &pb::Event) -> u64 {
    e.time.as_ref().map_or(0, |t| {
        let ms = t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000);
        u64::try_from(ms).unwrap_or_default()
    })
}

impl FromLog {
    /// Counts event `e`; `running` keeps when each unfinished transaction reached each
    /// point, and loses it at its end. Only the steps of a transaction in flight make
    /// an entry: events written after its end (its live check, a refused call naming
    /// it) would leave one behind for good.
    fn count(
        &self,
        coordinator: &Coordinator,
        running: &mut HashMap<String, Times>,
        e: &pb::Event,
    ) {
        use pb::EventKind as K;
        let (env, at) = (e.environment.clone(), millis(e));
        let kind = K::try_from(e.kind).unwrap_or_default();
        if e.transaction_id.is_empty() {
            return;
        }
        let id = e.transaction_id.as_str();
        match kind {
            K::TransactionCreated => {
                let times = times(running, id);
                times.created = at;
                let id = TxId::parse("transaction_id", &e.transaction_id).ok();
                let shape = id.and_then(|id| coordinator.registry().shape(&id));
                (times.kind, times.steps) = shape.map_or((None, Vec::new()), |(k, s)| (Some(k), s));
            }
            K::PrepareStarted => {
                let times = times(running, id);
                times.prepare = at;
                self.phase(&env, "queue_wait", times.created, at);
            }
            K::VerifyStarted => times(running, id).verify = at,
            K::DecidedCommit | K::DecidedAbort => {
                let times = times(running, id);
                times.decided = at;
                let phase1_end = if times.verify != 0 { times.verify } else { at };
                self.phase(&env, "prepare", times.prepare, phase1_end);
                self.phase(&env, "verify", times.verify, at);
            }
            K::VoteReceived => self.vote(&env, e),
            K::VerifyStepFinished => self.step(times(running, id), &env, e),
            K::TransactionCommitted | K::TransactionAborted => {
                let ended = running.remove(&e.transaction_id).unwrap_or_default();
                self.ended(&env, e, &ended, at);
            }
            _ => {}
        }
    }

    /// Observes `from..to` as `phase` when both points were seen.
    fn phase(&self, env: &str, phase: &str, from: u64, to: u64) {
        if from == 0 || to < from {
            return;
        }
        let took = std::time::Duration::from_millis(to - from);
        self.phases.phase(env, phase, took);
    }

    fn vote(&self, env: &str, e: &pb::Event) {
        let vote = pb::Vote::try_from(e.vote).unwrap_or_default();
        let outcome = match vote {
            pb::Vote::Prepared => "prepared",
            pb::Vote::Refused => "refused",
            _ => "no_answer",
        };
        let labels = Voted {
            environment: env.to_string(),
            project: e.project.clone(),
            outcome: outcome.to_string(),
        };
        self.votes.get_or_create(&labels).inc();
    }

    /// A verify step ended: its kind from the pipeline's step in the transaction, its
    /// outcome from the event itself (`NAME passed` or `NAME failed...`, written with
    /// the step's status at that moment; the record readers see may lag behind).
    fn step(&self, times: &Times, env: &str, e: &pb::Event) {
        let Some((_, kind)) = times.steps.iter().find(|(name, _)| *name == e.step) else {
            return;
        };
        let said = e.message.strip_prefix(e.step.as_str()).unwrap_or_default();
        let outcome = match said.trim_start().starts_with("passed") {
            true => "passed",
            false => "failed",
        };
        let labels = Stepped {
            environment: env.to_string(),
            kind: step_kind(kind).to_string(),
            outcome: outcome.to_string(),
        };
        self.steps.get_or_create(&labels).inc();
    }

    /// A transaction ended: counted by kind and outcome, with its phase 2 and total time.
    fn ended(&self, env: &str, e: &pb::Event, times: &Times, at: u64) {
        let kind = times.kind.map_or("unknown", tx_kind);
        let committed = e.kind == pb::EventKind::TransactionCommitted as i32;
        let labels = Ended {
            environment: env.to_string(),
            kind: kind.to_string(),
            outcome: if committed { "committed" } else { "aborted" }.to_string(),
        };
        self.transactions.get_or_create(&labels).inc();
        self.phase(env, "phase2", times.decided, at);
        self.phase(env, "total", times.created, at);
    }
}

fn tx_kind(kind: TxKind) -> &'static str {
    match kind {
        TxKind::Release => "release",
        TxKind::Revert => "revert",
        TxKind::Rollback => "rollback",
    }
}

fn step_kind(kind: &StepKind) -> &'static str {
    match kind {
        StepKind::Http { .. } => "http",
        StepKind::External => "external",
        StepKind::Approval => "approval",
    }
}

/// The gauges (and the journal's counters) computed at each scrape.
struct Scraped(Coordinator);

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the coordinator's scrape-time metrics")
    }
}

/// One sample: its labels and value.
type Sample = (Vec<(&'static str, String)>, i64);

/// Encodes `name` with `samples`, as a gauge or a counter.
fn family(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help, metric): (&str, &str, MetricType),
    samples: &[Sample],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, metric)?;
    for (labels, value) in samples {
        let sample = family.encode_family(labels)?;
        match metric {
            MetricType::Counter => {
                ConstCounter::new(u64::try_from(*value).unwrap_or_default()).encode(sample)?
            }
            _ => ConstGauge::new(*value).encode(sample)?,
        }
    }
    Ok(())
}

/// One family computed at scrape: name, help, type and samples.
type Scraping = (&'static str, &'static str, MetricType, Vec<Sample>);

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let c = &self.0;
        let all = unfinished(c)
            .into_iter()
            .chain(log_and_journal(c))
            .chain(subscriptions(c));
        for (name, help, metric, samples) in all {
            family(&mut encoder, (name, help, metric), &samples)?;
        }
        Ok(())
    }
}

/// One unlabelled sample.
fn single(value: u64) -> Vec<Sample> {
    vec![(Vec::new(), i64::try_from(value).unwrap_or(i64::MAX))]
}

/// The event log's head, its watchers, and the journal's durable writes and appends.
fn log_and_journal(c: &Coordinator) -> [Scraping; 4] {
    let head = *c.feed().latest().borrow();
    let watchers = u64::try_from(c.feed().watchers()).unwrap_or(u64::MAX);
    let stats = c.journal_stats();
    let (gauge, counter) = (MetricType::Gauge, MetricType::Counter);
    [
        (
            "event_log_head",
            "Sequence number of the newest event",
            gauge,
            single(head),
        ),
        (
            "watchers",
            "WatchEvents streams open now",
            gauge,
            single(watchers),
        ),
        (
            "journal_syncs",
            "Durable writes (fsyncs, or etcd transactions) of the journal",
            counter,
            single(stats.syncs),
        ),
        (
            "journal_appends",
            "Records appended to the journal (appends per sync: group commit)",
            counter,
            single(stats.appends),
        ),
    ]
}

/// Per webhook subscription: its lag, its deliveries, and whether it is failing.
fn subscriptions(c: &Coordinator) -> [Scraping; 3] {
    let subscriptions = c.notifier().list();
    let by = |f: &dyn Fn(&pb::Subscription) -> i64| -> Vec<Sample> {
        let each = subscriptions.iter();
        each.map(|s| (vec![("subscription", s.name.clone())], f(s)))
            .collect()
    };
    let failing = |s: &pb::Subscription| !s.last_error.is_empty() || !s.disabled.is_empty();
    [
        (
            "notify_lag_events",
            "Events not yet delivered to a subscription",
            MetricType::Gauge,
            by(&|s| i64::try_from(s.lag).unwrap_or(i64::MAX)),
        ),
        (
            "notify_delivered",
            "Events a subscription's receiver accepted since this coordinator started",
            MetricType::Counter,
            by(&|s| i64::try_from(s.delivered).unwrap_or(i64::MAX)),
        ),
        (
            "notify_failing",
            "1 while a subscription's last delivery failed or it is disabled",
            MetricType::Gauge,
            by(&|s| i64::from(failing(s))),
        ),
    ]
}

/// Per environment: unfinished transactions, those verifying, and those waiting for a
/// person to resolve a participant (every known environment, 0 included, so a gauge
/// drops back when its transaction ends).
fn unfinished(c: &Coordinator) -> [Scraping; 3] {
    let mut counts: std::collections::BTreeMap<String, [i64; 3]> = c
        .registry()
        .environments()
        .into_iter()
        .map(|e| (e.record.name.to_string(), [0; 3]))
        .collect();
    for t in c.registry().unfinished() {
        let n = counts.entry(t.environment.to_string()).or_default();
        n[0] += 1;
        n[1] += i64::from(t.state == TxState::Verifying);
        n[2] += i64::from(t.participants.iter().any(|p| p.needs_resolution));
    }
    let of = |i: usize| -> Vec<Sample> {
        counts
            .iter()
            .map(|(env, n)| (vec![("environment", env.clone())], n[i]))
            .collect()
    };
    [
        (
            "transactions_unfinished",
            "Transactions not ended yet",
            MetricType::Gauge,
            of(0),
        ),
        (
            "transactions_verifying",
            "Transactions running their verify steps",
            MetricType::Gauge,
            of(1),
        ),
        (
            "transactions_needing_resolution",
            "Transactions waiting for `lockstep resolve` (a participant lost its data)",
            MetricType::Gauge,
            of(2),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use lockstep_store::MemKv;

    use super::*;
    use crate::{coordinator::Config, network::TcpNet};

    /// Found by a review at stop 54: every event naming a transaction made an entry,
    /// and only the terminal event removed it, so the events written after a
    /// transaction's end (its live check, a refused call naming it, a recovery note)
    /// left entries behind for as long as the process ran.
    #[tokio::test]
    async fn events_after_a_transaction_ended_leave_nothing_running() {
        let kv = Arc::new(MemKv::new());
        let c = Coordinator::open(kv, Arc::new(TcpNet::default()), Config::default()).unwrap();
        let log = FromLog {
            transactions: Family::default(),
            phases: c.journal_timings().clone(),
            votes: Family::default(),
            steps: Family::default(),
        };
        let event = |kind: pb::EventKind, tx: &str| pb::Event {
            kind: kind as i32,
            transaction_id: tx.into(),
            ..Default::default()
        };
        let mut running = HashMap::new();
        use pb::EventKind as K;
        for e in [
            event(K::TransactionCreated, "T1"),
            event(K::PrepareStarted, "T1"),
            event(K::DecidedCommit, "T1"),
            event(K::TransactionCommitted, "T1"),
            event(K::LiveVerifyPassed, "T1"),
            event(K::PromotionRefused, "T1"),
            event(K::AccessDenied, "T2"),
            event(K::Recovered, "T3"),
        ] {
            log.count(&c, &mut running, &e);
        }
        let left: Vec<&String> = running.keys().collect();
        assert!(left.is_empty(), "left running: {left:?}");
    }
}
