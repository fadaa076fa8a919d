//! Start-up refusals of `lockstep-agent`.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn a_bad_project_name_is_refused_by_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep-agent"))
        .args(["--project", "a/b", "--listen", "127.0.0.1:0", "--insecure"])
        .arg("--data-dir")
        .arg(dir.path().join("state"))
        .arg("--deploy-root")
        .arg(dir.path().join("root"))
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--project") && err.contains("'/'"), "{err}");
}
