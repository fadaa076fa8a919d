//! An admission looks its id up in the store (on etcd, a round trip retried for up to
//! 20 s when a member is slow). Review finding of stop 59: it did so under the state
//! lock, so every other call waited for that read, reads and health included.

#![allow(clippy::unwrap_used)]

use std::{
    sync::{Arc, mpsc},
    time::Duration,
};

use lockstep::names::{Environment, TxId};

use super::repeat_tests::GatedKv;
use crate::{
    coordinator::{Config, Coordinator},
    model::{CreateSpec, Request},
    network::TcpNet,
};

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
    let kv = GatedKv::default();
    let net = Arc::new(TcpNet::default());
    let store = Arc::new(kv.clone());
    let c = runtime.block_on(async { Coordinator::open(store, net, Config::default()).unwrap() });
    let (waiting, lookup_waits) = mpsc::channel();
    *kv.reading.lock().unwrap() = Some(waiting);
    kv.ids.set_shut(true);
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

    kv.ids.set_shut(false);
    runtime.block_on(admission).unwrap();
    assert_eq!(
        read,
        Ok(0),
        "a read waited for another call's id lookup in the store"
    );
}
