//! A call repeated while the first one's write is not yet durable finds its answer in
//! memory ("registered exactly so already", "not registered"); it must not be told so
//! before that write would survive a crash, or a crash a moment later takes back what
//! the repeat was told. Each test holds the store's fsync shut while both calls run,
//! crashes the store, and opens a coordinator over what survived.

#![allow(clippy::unwrap_used)]

use std::{
    future::Future,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use futures::FutureExt;
use lockstep::names::{Environment, ProjectName};
use lockstep_store::{Batch, Durability, Entry, Kv, MemKv, Order, StoreError};

use crate::{
    coordinator::{Config, Coordinator},
    model::{EnvironmentRecord, ProjectRecord},
    network::TcpNet,
    registry::projects::ProjectChange,
};

/// A gate store calls wait at while it is shut.
#[derive(Clone, Default)]
pub(super) struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub(super) fn set_shut(&self, shut: bool) {
        *self.0.0.lock().unwrap() = shut;
        self.0.1.notify_all();
    }

    fn pass(&self) {
        let (shut, opened) = &*self.0;
        drop(
            opened
                .wait_while(shut.lock().unwrap(), |shut| *shut)
                .unwrap(),
        );
    }
}

/// A [`MemKv`] whose fsync waits at `sync`, and whose reads of transaction ids wait at
/// `ids` (each says so on `reading` first, when set).
#[derive(Clone, Default)]
pub(super) struct GatedKv {
    pub(super) kv: MemKv,
    pub(super) sync: Gate,
    pub(super) ids: Gate,
    pub(super) reading: Arc<Mutex<Option<std::sync::mpsc::Sender<()>>>>,
}

impl GatedKv {
    fn set_shut(&self, shut: bool) {
        self.sync.set_shut(shut);
    }
}

impl Kv for GatedKv {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if table == crate::tables::TX_IDS {
            if let Some(reading) = &*self.reading.lock().unwrap() {
                let _ = reading.send(());
            }
            self.ids.pass();
        }
        self.kv.get(table, key)
    }

    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        to: Option<&[u8]>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.kv.scan(table, from, to, order, limit)
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<(), StoreError> {
        self.kv.write(batch, durability)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.sync.pass();
        self.kv.sync()
    }
}

fn open(kv: &GatedKv) -> Coordinator {
    let net = Arc::new(TcpNet::default());
    Coordinator::open(Arc::new(kv.clone()), net, Config::default()).unwrap()
}

fn project(name: &str, port: u16) -> ProjectRecord {
    ProjectRecord {
        name: ProjectName::parse("name", name).unwrap(),
        environment: Environment::default(),
        endpoint: format!("http://127.0.0.1:{port}"),
        requires: Vec::new(),
        live_from: 0,
    }
}

/// A store and a coordinator over it with A registered (durably: the gate is open).
async fn with_a() -> (GatedKv, Coordinator) {
    let kv = GatedKv::default();
    let c = open(&kv);
    let registered = c.register_project(project("A", 1), "ci", false).await;
    registered.unwrap();
    (kv, c)
}

fn a_registered(c: &Coordinator) -> bool {
    c.projects(&Environment::default())
        .iter()
        .any(|p| p.name.as_str() == "A")
}

/// Runs `call` twice with the fsync shut: the first until `done` shows its change in
/// memory, then the repeat, polled once. Then the store crashes (what was not synced
/// is lost) and a coordinator opens over what survived: if the repeat was answered,
/// what it was told must hold there (`done` again).
async fn repeat_then_crash<F, T>(
    kv: GatedKv,
    c: Coordinator,
    call: impl Fn(Coordinator) -> F,
    done: impl Fn(&Coordinator) -> bool,
) where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    kv.set_shut(true);
    let first = tokio::spawn(call(c.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(&c) {
        assert!(
            Instant::now() < deadline,
            "the first call never took effect"
        );
        tokio::task::yield_now().await;
    }
    let answered = call(c.clone()).now_or_never().is_some();
    kv.kv.crash();
    kv.set_shut(false);
    drop(first.await);
    kv.kv.restart();
    let reopened = open(&kv);
    assert!(
        !answered || done(&reopened),
        "the repeated call was answered before the first call's write was durable, and a crash took it back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_registration_is_answered_only_once_the_first_is_durable() {
    let kv = GatedKv::default();
    let c = open(&kv);
    let call =
        |c: Coordinator| async move { c.register_project(project("A", 1), "ci", false).await };
    repeat_then_crash(kv, c, call, a_registered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_update_is_answered_only_once_the_first_is_durable() {
    let (kv, c) = with_a().await;
    let call = |c: Coordinator| async move {
        let change = ProjectChange {
            name: ProjectName::parse("name", "A").unwrap(),
            environment: Environment::default(),
            endpoint: Some(project("A", 2).endpoint),
            requires: None,
        };
        c.update_project(change, "ci", false).await
    };
    let moved = |c: &Coordinator| {
        let projects = c.projects(&Environment::default());
        projects.iter().any(|p| p.endpoint.ends_with(":2"))
    };
    repeat_then_crash(kv, c, call, moved).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_removal_is_answered_only_once_the_first_is_durable() {
    let (kv, c) = with_a().await;
    let call = |c: Coordinator| async move {
        let name = ProjectName::parse("name", "A").unwrap();
        c.remove_project(&Environment::default(), &name, "ci").await
    };
    repeat_then_crash(kv, c, call, |c| !a_registered(c)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_environment_is_answered_only_once_the_first_is_durable() {
    let kv = GatedKv::default();
    let c = open(&kv);
    let qa = Environment::parse("name", "qa").unwrap();
    let call = move |c: Coordinator| {
        let record = EnvironmentRecord {
            name: Environment::parse("name", "qa").unwrap(),
            after: Vec::new(),
            created_by: "ci".into(),
            stages: Default::default(),
            pipeline_version: 0,
        };
        async move { c.registry().add_environment(record).await }
    };
    let declared = move |c: &Coordinator| c.registry().environment(&qa).is_ok();
    repeat_then_crash(kv, c, call, declared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_pipeline_file_is_answered_only_once_the_first_is_durable() {
    const FILE: &str = include_str!("../../../examples/pipeline.toml");
    let kv = GatedKv::default();
    let c = open(&kv);
    let call = |c: Coordinator| async move { c.apply_pipeline((FILE, false, false), "ci").await };
    let applied = |c: &Coordinator| c.registry().environments().len() >= 3;
    repeat_then_crash(kv, c, call, applied).await;
}
