//! Both servers stop cleanly on SIGTERM: at once (within the 2 s grace for open calls)
//! even while a `release watch` client holds a stream open, with exit status 0, never a
//! crash in teardown, also when the signal comes right after `listening on`; and what
//! was committed is there after the restart.

#![allow(clippy::unwrap_used)]

mod support;

use std::{os::unix::process::ExitStatusExt, process::Stdio, time::Duration};

use support::{Cluster, Server};

fn clean(name: &str, status: std::process::ExitStatus, log: &str) {
    assert!(
        status.code() == Some(0),
        "{name} ended with {status:?} (signal {:?}); log:\n{log}",
        status.signal()
    );
}

/// SIGTERM, then the exit: within 10 s (open calls get a 2 s grace), with status 0.
async fn stop(server: &mut Server) {
    server.terminate();
    let status = server.exited_within(Duration::from_secs(10)).await;
    clean(&server.url(), status, &server.log());
}

/// Given a cluster with a watcher connected, when the coordinator and then an agent
/// get SIGTERM, then each exits 0 promptly, and after a restart the committed state is
/// as it was.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_each_server_cleanly_while_a_watcher_is_connected() {
    let mut c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    let mut watcher = tokio::process::Command::new(support::bin("lockstep"))
        .args(["release", "watch"])
        .env("LOCKSTEP_COORDINATOR", c.coordinator.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    stop(&mut c.coordinator).await;
    stop(&mut c.agent_mut("B").server).await;

    c.coordinator.restart().await;
    c.agent_mut("B").server.restart().await;
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T1B"), ("C", "T1C")])
    );
    c.release("T2", &["A=T2A", "B=T2B", "C=T2C"], 0).await;
    let _ = watcher.start_kill();
}

/// Fifty SIGTERMs, each right after a server printed `listening on`, alternating the
/// coordinator and an agent: every one ends with exit status 0.
#[tokio::test(flavor = "multi_thread")]
async fn fifty_sigterms_right_after_start_all_end_cleanly() {
    let mut c = Cluster::new().await;
    c.add_agent("B").await;
    for round in 0..50 {
        let server = if round % 2 == 0 {
            &mut c.coordinator
        } else {
            &mut c.agent_mut("B").server
        };
        server.restart().await;
        stop(server).await;
    }
}
