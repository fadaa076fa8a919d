//! Start-up refusals of `lockstep-coordinator`: they must stop it with a message that
//! says what to fix, before anything is written.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn coordinator(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep-coordinator"))
        .args(args)
        .arg("--insecure")
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_data_dir_that_is_a_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let (ok, err) = coordinator(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        file.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("--data-dir"), "{err}");
}

#[test]
fn another_programs_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    drop(lockstep_store::RocksKv::open(dir.path(), &["participant_transactions"]).unwrap());
    let (ok, err) = coordinator(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("participant_transactions") && err.contains("another program"),
        "{err}"
    );
}
