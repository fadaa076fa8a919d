//! An admission looks its id up in the store (on etcd, a round trip retried for up to
//! 20 s when a member is slow). Review finding of stop 59: it did so under the state
//! lock, so every other call waited for that read, reads and health included.

#![allow(clippy::unwrap_used)]

use std::{
    sync::{Arc, Condvar, Mutex, mpsc},
    time::Duration,
};

use lockstep::names::{Environment, TxId};
use lockstep_store::{Batch, Durability, Entry, Kv, MemKv, Order, StoreError};

use crate::{
    coordinator::{Config, Coordinator},
    model::{CreateSpec, Request},
    network::TcpNet,
    tables::TX_IDS,
};

/// A [`MemKv`] whose reads of transaction ids wait while its gate is shut, and say so.
struct SlowIds {
    kv: MemKv,
    shut: Arc<(Mutex<bool>, Condvar)>,
    waiting: Mutex<Option<mpsc::Sender<()>>>,
}

impl Kv for SlowIds {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if table == TX_IDS {
            if let Some(waiting) = &*self.waiting.lock().unwrap() {
                let _ = waiting.send(());
            }
            let (shut, opened) = &*self.shut;
            drop(
                opened
                    .wait_while(shut.lock().unwrap(), |shut| *shut)
                    .unwrap(),
            );
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
        self.kv.sync()
    }
}

fn release(id: &str) -> CreateSpec {
    CreateSpec {
        id: Some(TxId::parse("id", id).unwrap()),
        id_hint: None,
        environment: Environment::default(),
        request: Request::Release {
            components: Vec::new(),
            force: false,
            allow_quarantined: false,
        },
        prepare_timeout: None,
        dry_run: false,
        actor: "ci".into(),
        authority: Default::default(),
        ticket: String::new(),
        promoted_from: None,
        again_after_restart: false,
    }
}

/// Given an admission whose id lookup waits on a slow store, when another call reads
/// the coordinator's state, then it is answered without waiting for that lookup.
#[test]
fn a_slow_id_lookup_holds_no_other_call() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shut = Arc::new((Mutex::new(false), Condvar::new()));
    let kv = Arc::new(SlowIds {
        kv: MemKv::new(),
        shut: shut.clone(),
        waiting: Mutex::new(None),
    });
    let net = Arc::new(TcpNet::default());
    let c =
        runtime.block_on(async { Coordinator::open(kv.clone(), net, Config::default()).unwrap() });
    let (waiting, lookup_waits) = mpsc::channel();
    *kv.waiting.lock().unwrap() = Some(waiting);
    *shut.0.lock().unwrap() = true;
    let admitting = c.clone();
    let admission = runtime.spawn(async move {
        let authorize = |_: &crate::planner::Plan| Ok(());
        drop(admitting.create(release("T9"), &authorize).await);
    });
    lookup_waits.recv_timeout(Duration::from_secs(10)).unwrap();

    let (done, answered) = mpsc::channel();
    let reader = c.clone();
    std::thread::spawn(move || {
        let _ = done.send(reader.projects(&Environment::default()).len());
    });
    let read = answered.recv_timeout(Duration::from_secs(10));

    *shut.0.lock().unwrap() = false;
    shut.1.notify_all();
    runtime.block_on(admission).unwrap();
    assert_eq!(
        read,
        Ok(0),
        "a read waited for another call's id lookup in the store"
    );
}
