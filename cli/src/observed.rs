//! `lockstep live --observed` and the drift `live` always shows: what each agent runs
//! beside what the live checkpoint says should run.

use lockstep::pb;

use crate::render::{schema, table, when};

/// The table of what every agent reports running, after the checkpoint's.
pub fn observed(rows: &[pb::ObservedProject]) {
    if rows.is_empty() {
        return;
    }
    println!("as the agents report it:");
    table(
        &["PROJECT", "SHOULD RUN", "RUNS", "SCHEMA", "STAGED", "NOTE"],
        rows.iter().map(row).collect(),
    );
}

fn row(o: &pb::ObservedProject) -> Vec<String> {
    vec![
        o.project.clone(),
        shown(&o.expected_version),
        match o.error.is_empty() {
            true => shown(&o.running_version),
            false => "?".into(),
        },
        schema(&o.running_schema),
        o.staged.join(", "),
        note(o),
    ]
}

fn note(o: &pb::ObservedProject) -> String {
    if !o.error.is_empty() {
        return format!("no answer: {}", o.error);
    }
    if o.drift {
        return "DRIFT: runs other than the checkpoint says".into();
    }
    match (o.held_by.as_str(), o.running_version == o.expected_version) {
        ("", _) => String::new(),
        (tx, true) => format!("held by {tx}"),
        (tx, false) => format!("changing: {tx} is at work"),
    }
}

/// The drift the coordinator's drift check found and has not seen clear.
pub fn drift(rows: &[pb::ObservedProject]) {
    for d in rows {
        println!(
            "DRIFT: {} runs {}, the checkpoint says {} (found {})",
            d.project,
            shown(&d.running_version),
            shown(&d.expected_version),
            when(d.observed_at.as_ref())
        );
    }
}

fn shown(version: &str) -> String {
    match version {
        "" => "-".into(),
        v => v.into(),
    }
}
