//! Webhook notifications: CloudEvents delivered from the one ordered log, at least
//! once and in order, one task per subscription, each with a durable cursor. A slow or
//! dead receiver holds up only its own subscription: the protocol never waits on a
//! delivery, and a backlog is read from the log page by page, never held in memory.
//!
//! # Layout
//! - [`kinds`]: event names (`--events`, CloudEvent types) and which are failures.
//! - [`subscription`]: the stored subscription, validated from the request.
//! - [`route`]: which subscription gets which event (failures to ticket, project or
//!   environment). Pure.
//! - [`cloud`]: an event as a CloudEvent HTTP request, signed, and what the answer
//!   means.
//! - [`target`]: where webhooks may go, checked after DNS resolution when a
//!   subscription is added and at every connection.
//! - `deliver`: the delivery task.

pub mod cloud;
mod deliver;
pub mod kinds;
pub mod route;
pub mod subscription;
pub mod target;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use lockstep::pb;
use lockstep_store::{Batch, Durability};
use tokio::sync::watch;

use crate::{
    error::{CoordinatorError, Result},
    feed::Feed,
    journal::{Durable, Journal},
    tables::Tables,
};
use cloud::Answer;
use lockstep::names::FieldError;
use route::Routes;
use subscription::SubscriptionRecord;
use target::{Guard, Policy};

/// Delivery tunables; defaults suit production.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Connect and read timeout of one request.
    pub timeout: Duration,
    /// The first retry's wait; each next one doubles it.
    pub first_backoff: Duration,
    /// The longest wait between retries (a `Retry-After` may ask for longer).
    pub max_backoff: Duration,
    /// Where webhooks may go beyond loopback and public addresses (`--notify-allow`).
    pub allow: Vec<target::Allowed>,
    /// Whether subscriptions are delivered to (false: a standby's read-only view, which
    /// lists them and sends nothing; only the leader delivers).
    pub deliver: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(60),
            allow: Vec::new(),
            deliver: true,
        }
    }
}

/// The notifier: the subscriptions and their delivery tasks. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    hub: Arc<Hub>,
}

/// What every delivery task shares.
struct Hub {
    subscriptions: Mutex<BTreeMap<String, Arc<Shared>>>,
    /// Serialises adds and removes (each checks, then writes).
    changes: tokio::sync::Mutex<()>,
    tables: Tables,
    journal: Journal,
    feed: Feed,
    client: reqwest::Client,
    /// Where webhooks may go; also `client`'s resolver.
    guard: Guard,
    settings: Settings,
    /// The CloudEvent `source`: this data directory.
    source: String,
}

/// One subscription's state, shared by its task and readers.
struct Shared {
    slot: Mutex<Slot>,
    stop: watch::Sender<bool>,
}

/// A subscription's record and how delivery is going.
struct Slot {
    record: SubscriptionRecord,
    last_status: u16,
    last_error: String,
    delivered: u64,
    /// Removed: its record must not be written again.
    removed: bool,
}

impl Shared {
    fn slot(&self) -> MutexGuard<'_, Slot> {
        // Every critical section is a plain field update.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note(&self, answer: &Answer) {
        let mut slot = self.slot();
        slot.last_status = answer.status();
        slot.last_error = answer.error();
    }

    fn delivered(&self, seq: u64) {
        let mut slot = self.slot();
        slot.record.cursor = seq;
        slot.delivered += 1;
    }

    fn message(&self, head: u64) -> pb::Subscription {
        let slot = self.slot();
        pb::Subscription {
            last_status: u32::from(slot.last_status),
            last_error: slot.last_error.clone(),
            delivered: slot.delivered,
            ..slot.record.message(head)
        }
    }
}

impl Notifier {
    /// Loads the subscriptions from `tables` and starts delivering to each that is on,
    /// from its cursor. `incarnation` names this data directory in every event's
    /// `source`. Must run inside a tokio runtime.
    pub fn start(
        tables: Tables,
        journal: Journal,
        feed: Feed,
        incarnation: &str,
        settings: Settings,
    ) -> Result<Self> {
        let guard = Guard::new(Policy::new(&settings.allow), target::system_lookup());
        let client = target::client(&guard, settings.timeout)
            .map_err(|e| CoordinatorError::Refused(format!("HTTP client: {e}")))?;
        let records = tables.subscriptions()?;
        let hub = Arc::new(Hub {
            subscriptions: Mutex::new(BTreeMap::new()),
            changes: tokio::sync::Mutex::new(()),
            tables,
            journal,
            feed,
            client,
            guard,
            settings,
            source: format!("urn:lockstep:{incarnation}"),
        });
        for record in records {
            hub.spawn(record);
        }
        Ok(Self { hub })
    }

    /// Adds a subscription; delivery starts at once. ALREADY_EXISTS when the name is
    /// taken, INVALID_ARGUMENT (`url`) when its host is, or resolves to, an address
    /// webhooks may not go to; nothing is stored when the request is refused.
    pub async fn add(
        &self,
        r: &pb::AddSubscriptionRequest,
        actor: &str,
    ) -> Result<pb::Subscription> {
        let _one = self.hub.changes.lock().await;
        if self.hub.find(&r.name).is_some() {
            let why = format!(
                "name: a subscription named {:?} exists (`lockstep notify remove` it first)",
                r.name
            );
            return Err(CoordinatorError::AlreadyExists(why));
        }
        let head = *self.hub.feed.latest().borrow();
        let mut record = SubscriptionRecord::from_request(r, head, actor)?;
        self.hub.allowed(&record.url).await?;
        let from = match r.from_seq {
            0 => "this event".to_string(),
            seq => format!("sequence {seq}"),
        };
        let url = subscription::shown(&record.url);
        let what = format!("subscription {} added: {url} from {from}", record.name);
        let event = Hub::event(&record, pb::EventKind::SubscriptionAdded, what, actor);
        // One write holds the subscription and its event, which is where its delivery
        // starts unless `from_seq` says otherwise.
        let stored = |first: u64| {
            let mut stored = record.clone();
            if r.from_seq == 0 {
                stored.cursor = first - 1;
            }
            let mut batch = Batch::default();
            Tables::put_subscription(&mut batch, &stored);
            batch
        };
        let first = (self.hub.journal)
            .append_made(stored, vec![event], Durable::Soon)
            .await?;
        crate::crash::point(crate::crash::AFTER_SUBSCRIPTION_STORED);
        if r.from_seq == 0 {
            record.cursor = first - 1;
        }
        let shown = record.message(*self.hub.feed.latest().borrow());
        self.hub.spawn(record);
        Ok(shown)
    }

    /// Every subscription, by name, with its progress.
    pub fn list(&self) -> Vec<pb::Subscription> {
        let head = *self.hub.feed.latest().borrow();
        let all = self.hub.subscriptions();
        all.values().map(|s| s.message(head)).collect()
    }

    /// Removes subscription `name`; nothing more is sent to it.
    pub async fn remove(&self, name: &str, actor: &str) -> Result<pb::Subscription> {
        let _one = self.hub.changes.lock().await;
        let shared = self.hub.find(name).ok_or_else(|| unknown(name))?;
        let record = {
            let mut slot = shared.slot();
            slot.removed = true;
            slot.record.clone()
        };
        shared.stop.send_replace(true);
        let mut batch = Batch::default();
        Tables::delete_subscription(&mut batch, name);
        let what = format!("subscription {name} removed");
        let event = Hub::event(&record, pb::EventKind::SubscriptionRemoved, what, actor);
        self.hub.write(batch, event).await?;
        self.hub.subscriptions().remove(name);
        Ok(shared.message(*self.hub.feed.latest().borrow()))
    }

    /// Sends one ping to subscription `name` now and says what its receiver answered.
    pub async fn ping(&self, name: &str) -> Result<pb::TestSubscriptionResponse> {
        let shared = self.hub.find(name).ok_or_else(|| unknown(name))?;
        let record = shared.slot().record.clone();
        let ping = cloud::ping(name, &self.hub.source).map_err(CoordinatorError::Refused)?;
        let event_id = cloudevents::AttributesReader::id(&ping).to_string();
        let request = cloud::request(&self.hub.client, &record, ping);
        let answer = match request {
            Ok(request) => self.hub.post(request).await,
            Err(why) => Answer::Failed(0, why),
        };
        Ok(pb::TestSubscriptionResponse {
            status: u32::from(answer.status()),
            error: answer.error(),
            event_id,
        })
    }
}

fn unknown(name: &str) -> CoordinatorError {
    CoordinatorError::NotFound(format!(
        "name: no subscription named {name:?} (`lockstep notify list`)"
    ))
}

impl Hub {
    fn subscriptions(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Shared>>> {
        // Every critical section is a map insert, remove or read.
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn find(&self, name: &str) -> Option<Arc<Shared>> {
        self.subscriptions().get(name).cloned()
    }

    /// Whether webhooks may go to `url` now (its host resolved); else why not, naming
    /// the `url` field.
    async fn allowed(&self, url: &str) -> Result<()> {
        let parsed = reqwest::Url::parse(url).map_err(|e| FieldError::new("url", e.to_string()))?;
        let checked = self.guard.check(&parsed).await;
        Ok(checked.map_err(|why| FieldError::new("url", why))?)
    }

    /// Sends `request` once, if its host may be sent to: an address in the URL is
    /// checked here, a name by the client's resolver when it connects.
    async fn post(&self, request: reqwest::Request) -> Answer {
        match self.guard.policy().literal(request.url()) {
            Ok(()) => cloud::send(&self.client, request).await,
            Err(why) => Answer::Failed(0, target::refused(why)),
        }
    }

    /// Registers `record` and, when it is on, starts its delivery task.
    fn spawn(self: &Arc<Self>, record: SubscriptionRecord) {
        let on = record.disabled.is_empty();
        let name = record.name.clone();
        let slot = Slot {
            record,
            last_status: 0,
            last_error: String::new(),
            delivered: 0,
            removed: false,
        };
        let shared = Arc::new(Shared {
            slot: Mutex::new(slot),
            stop: watch::channel(false).0,
        });
        self.subscriptions().insert(name, shared.clone());
        if on && self.settings.deliver {
            tokio::spawn(deliver::run(self.clone(), shared));
        }
    }

    /// The routes the subscriptions offer failures now.
    fn routes(&self) -> Routes {
        let all: Vec<Arc<Shared>> = self.subscriptions().values().cloned().collect();
        let records: Vec<SubscriptionRecord> =
            all.iter().map(|s| s.slot().record.clone()).collect();
        Routes::of(&records)
    }

    /// Stores the subscription's cursor (unless it was removed). Buffered: a crash of
    /// the process keeps it; a power loss may take it back, and redelivery follows.
    fn save(&self, shared: &Shared) {
        let slot = shared.slot();
        if slot.removed {
            return;
        }
        let mut batch = Batch::default();
        Tables::put_subscription(&mut batch, &slot.record);
        if let Err(e) = self.tables.kv().write(batch, Durability::Buffered) {
            tracing::warn!(subscription = %slot.record.name, "cursor not stored: {e}");
        }
    }

    /// The revoked token the subscription was added through, if any: what a revoked
    /// credential set going delivers no more (a store that cannot answer delivers on).
    fn revoked_creator(&self, shared: &Shared) -> Option<String> {
        let creator = shared.slot().record.created_by.clone();
        let revoked = self.tables.revoked_token_of(&creator);
        revoked.unwrap_or_else(|e| {
            tracing::warn!(subscription = %shared.slot().record.name, "revocation not checked: {e}");
            None
        })
    }

    /// Stops delivery for good (the receiver answered 410, or the token it was added
    /// with was revoked), recorded and in the log.
    async fn disable(&self, shared: &Shared, why: String) {
        let record = {
            let mut slot = shared.slot();
            slot.record.disabled = format!(
                "{why}: delivery stopped at sequence {}",
                slot.record.cursor + 1
            );
            slot.record.clone()
        };
        let mut batch = Batch::default();
        Tables::put_subscription(&mut batch, &record);
        let what = format!("subscription {} disabled: {}", record.name, record.disabled);
        let event = Self::event(&record, pb::EventKind::SubscriptionDisabled, what, "");
        if let Err(e) = self.write(batch, event).await {
            tracing::warn!(subscription = %record.name, "not logged: {e}");
        }
    }

    /// An event about subscription `s`, for [`Hub::write`].
    fn event(
        s: &SubscriptionRecord,
        kind: pb::EventKind,
        message: String,
        actor: &str,
    ) -> pb::Event {
        pb::Event {
            kind: kind as i32,
            environment: s.environment_name(),
            project: s.project_name(),
            message,
            actor: actor.to_string(),
            ..Default::default()
        }
    }

    /// Writes a change of a subscription and its event in one append (a crash keeps
    /// both or neither); resolves once durable.
    async fn write(&self, batch: Batch, event: pb::Event) -> Result<()> {
        let written = self.journal.append(batch, vec![event], Durable::Soon);
        written.await.map(drop)
    }
}
