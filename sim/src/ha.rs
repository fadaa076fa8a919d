//! Two coordinators on the simulated etcd ([`crate::lease`]): each instance campaigns,
//! leads with its term once elected (every write fenced on it, every order stamped with
//! it), and stops when its lease is lost or a write is fenced, as the binary does; a
//! supervisor starts a stopped instance again (see `run`). Clients and agents reach
//! whichever instance leads through a front door on the coordinator's usual address,
//! as a load balancer sends callers to the ready instance: a standby does not listen
//! until it leads.

use std::{sync::Arc, time::Duration};

use lockstep_coordinator::{Coordinator, access::Access, server};
use lockstep_store::MemKv;
use turmoil::net::{TcpListener, TcpStream};

use crate::{
    Config,
    calls::{COORDINATOR, COORDINATOR_PORT},
    lease::{self, Election, FencedKv},
    net,
};

/// The coordinator instances' hosts.
pub const INSTANCES: [&str; 2] = ["coordinator-1", "coordinator-2"];

/// Adds the etcd host (serving `election`), both instances on `store`, and the front
/// door to `sim`.
pub fn hosts(sim: &mut turmoil::Sim<'_>, store: &MemKv, election: &Election, cfg: &Config) {
    let (seed, fenced) = (cfg.seed, !cfg.unfenced);
    {
        let election = election.clone();
        sim.host(lease::ETCD, move || lease::serve(election.clone()));
    }
    for name in INSTANCES {
        let (store, election) = (store.clone(), election.clone());
        sim.host(name, move || {
            let (store, election) = (store.clone(), election.clone());
            async move {
                instance(name, FencedKv::new(store, election, fenced), seed).await;
                Ok(())
            }
        });
    }
    sim.host(COORDINATOR, front_door);
}

/// One instance's life: campaign, lead, stop when no longer leading (or on any error:
/// the process exits, and is started again).
async fn instance(name: &str, store: FencedKv, seed: u64) {
    let term = lease::campaign(name).await;
    let fenced = Arc::new(store.with_term(term));
    let config = lockstep_coordinator::Config {
        term: u64::try_from(term).unwrap_or_default(),
        ..crate::run::coordinator_config(seed)
    };
    let net = Arc::new(net::SimNet::default());
    let Ok(coordinator) = Coordinator::open(fenced, net, config) else {
        return;
    };
    let incoming = net::incoming(COORDINATOR_PORT);
    let failed = coordinator.clone();
    // Served from a task of its own and never stopped from here, as the binary does
    // (`shutdown::serve_until_stopped`, then exit): when the instance stops, its
    // host's bounce drops the runtime and every connection with it, polling nothing.
    // Dropping the server here ran tonic's graceful shutdown instead: its connections
    // wait on a `watch`, woken in a random order (tokio's RNG is not turmoil's), so
    // their GOAWAYs went out in another order each run and took turmoil's latency
    // draws with them: seeds 8 and 24 did not replay (stop 62).
    let serving = tokio::spawn(server::serve_incoming(
        incoming,
        coordinator,
        Access::insecure(),
        std::future::pending(),
    ));
    tokio::select! {
        biased;
        ended = serving => {
            // A panic of the server is the run's failure, as when it ran in this task.
            if let Some(panic) = ended.err().filter(tokio::task::JoinError::is_panic) {
                std::panic::resume_unwind(panic.into_panic());
            }
        }
        () = lease::kept_until_lost(term) => {}
        _ = failed.failed() => {}
    }
}

/// Accepts callers on the coordinator's address and joins each to the first instance
/// that accepts the connection (the leader; a deposed one that has not stopped yet
/// may too, and refuses every write).
async fn front_door() -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(("0.0.0.0", COORDINATOR_PORT)).await?;
    loop {
        let (mut caller, _) = listener.accept().await?;
        tokio::spawn(async move {
            for instance in INSTANCES {
                let connect = TcpStream::connect((instance, COORDINATOR_PORT));
                let within = tokio::time::timeout(Duration::from_millis(300), connect).await;
                if let Ok(Ok(mut leader)) = within {
                    let _ = tokio::io::copy_bidirectional(&mut caller, &mut leader).await;
                    return;
                }
            }
        });
    }
}
