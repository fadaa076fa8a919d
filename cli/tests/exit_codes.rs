//! The CLI's exit codes without a coordinator: usage errors are 2, an unreachable
//! coordinator is 3 (the codes CI scripts branch on).

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn lockstep(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .env("LOCKSTEP_COORDINATOR", "http://127.0.0.1:1")
        .output()
        .expect("runs");
    (
        out.status.code().expect("exits"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    assert_eq!(lockstep(&["--no-such-flag"]).0, 2);
    assert_eq!(
        lockstep(&["release", "create", "T1"]).0,
        2,
        "components are required"
    );
    let (code, err) = lockstep(&["release", "create", "T1", "A"]);
    assert_eq!(code, 2);
    assert!(err.contains("expected PROJECT=VALUE"), "{err}");
    let (code, err) = lockstep(&["release", "create", "T1", "A=1", "--artifact", "B=/x"]);
    assert_eq!(code, 2);
    assert!(err.contains("B is not a component"), "{err}");
    assert_eq!(
        lockstep(&["release", "create", "T1", "A=1", "--timeout", "soon"]).0,
        2
    );
}

#[test]
fn an_unreachable_coordinator_exits_3_and_names_it() {
    let (code, err) = lockstep(&["live"]);
    assert_eq!(code, 3);
    assert!(err.contains("http://127.0.0.1:1"), "{err}");
}

#[test]
fn help_exits_0() {
    assert_eq!(lockstep(&["--help"]).0, 0);
}
