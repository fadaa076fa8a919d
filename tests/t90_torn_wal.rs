//! A torn or corrupted write-ahead-log tail: the coordinator either recovers with every
//! acknowledged decision intact or refuses to start with a clear message (it refuses:
//! `--wal-recovery strict` is the default, and the damaged last record may have been an
//! acknowledged one). `--wal-recovery tolerate-torn-tail` is the explicit way on.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};

use support::Cluster;

/// The newest RocksDB log file in a data dir.
fn newest_wal(dir: &Path) -> PathBuf {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().expect("a WAL file")
}

async fn start_fails(data: &Path, extra: &[&str]) -> String {
    let out = tokio::process::Command::new(support::bin("lockstep-coordinator"))
        .args(["--insecure", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "must refuse to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn seeded() -> (Cluster, String, PathBuf) {
    let mut c = Cluster::family().await;
    c.seed_history().await;
    let history = c.cli(&["history", "-o", "json"]).await.stdout;
    c.coordinator.kill9().await;
    let data = c.dir.path().join("coordinator");
    (c, history, data)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_sigkill_recovers_every_acknowledged_decision() {
    let (mut c, history, _) = seeded().await;
    c.coordinator.restart().await;
    assert_eq!(c.cli(&["history", "-o", "json"]).await.stdout, history);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_wal_tail_makes_the_coordinator_refuse_to_start_with_a_clear_message() {
    let (_c, _, data) = seeded().await;
    let wal = newest_wal(&data);
    let len = std::fs::metadata(&wal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len - 7)
        .unwrap();

    let err = start_fails(&data, &[]).await;

    assert!(
        err.contains("write-ahead log") && err.contains("is damaged"),
        "{err}"
    );
    assert!(
        err.contains("--wal-recovery tolerate-torn-tail"),
        "says how to go on: {err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_wal_tail_makes_the_coordinator_refuse_to_start() {
    let (_c, _, data) = seeded().await;
    let wal = newest_wal(&data);
    let mut bytes = std::fs::read(&wal).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - 5..] {
        *b ^= 0xA5;
    }
    std::fs::write(&wal, bytes).unwrap();

    let err = start_fails(&data, &[]).await;

    assert!(err.contains("is damaged"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tolerating_the_torn_tail_drops_only_the_damaged_last_write() {
    let (mut c, history, data) = seeded().await;
    let wal = newest_wal(&data);
    let len = std::fs::metadata(&wal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    start_fails(&data, &[]).await;

    c.coordinator
        .restart_with_args(vec!["--wal-recovery".into(), "tolerate-torn-tail".into()])
        .await;

    // The last write was T3's final COMMITTED record; its COMMIT decision and checkpoint
    // were written (and acknowledged) before it, so history is whole and T3 completes
    // again through recovery.
    assert_eq!(c.cli(&["history", "-o", "json"]).await.stdout, history);
    c.wait_state("T3", lockstep::pb::TransactionState::Committed)
        .await;
}
