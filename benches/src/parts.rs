//! Each part of each round in a process of its own: the bench binary runs itself with
//! `--here --only PART` and reads the figures it writes.
//!
//! In one process, every part's stacks (coordinators, hundreds of participants, their
//! RocksDB instances and threads) stay up to the end, and the parts after them ran ~30%
//! slower although the leftovers used no CPU (README "Performance", stop 41): 1,183
//! releases per s at 32 clients in the first round, 852 and 861 in the next two. A
//! production coordinator runs alone in its process, so each part now does too: a
//! figure measures Lockstep, not the bench's leftovers.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::Context;

use crate::{Args, Figure, rounds};

/// The parts of a round, in the order they run. `floors` runs on its own only when
/// nothing else is named: every part's process measures the floors it is compared
/// with, and the round keeps the first process's.
const ROUND_PARTS: &[&str] = &[
    "floors",
    "latency",
    "throughput",
    "bare",
    "agent",
    "commitdelay",
    "fanout",
    "tls",
    "notify",
    "metrics",
    "aging",
    "watchers",
    "recovery",
    "memory",
];

/// The parts measured once, after the rounds (etcd's cluster is slow to start, tracing
/// stays on for its process, scale runs only when named).
const ONCE_PARTS: &[&str] = &["scale", "etcd", "tracing"];

/// Every round's parts, each in a process of its own, reduced to one figure each (the
/// median round's), then the parts measured once.
pub fn run(args: &Args) -> anyhow::Result<Vec<Figure>> {
    let work = tempfile::tempdir()?;
    let rounds_wanted = args.rounds.max(1);
    let mut rounds = Vec::with_capacity(rounds_wanted);
    for round in 1..=rounds_wanted {
        let mut figures = Vec::new();
        for part in round_parts(args) {
            let label = format!("round {round}/{rounds_wanted}: {part}");
            merge(&mut figures, measure(args, part, work.path(), &label)?)?;
        }
        rounds.push(figures);
    }
    let mut figures = rounds::medians(rounds);
    for part in ONCE_PARTS.iter().filter(|p| once(args, p)) {
        merge(&mut figures, measure(args, part, work.path(), part)?)?;
    }
    Ok(figures)
}

/// The round's parts `args` selects; `floors` alone only when it is all there is.
fn round_parts(args: &Args) -> Vec<&'static str> {
    let mut parts: Vec<_> = ROUND_PARTS
        .iter()
        .copied()
        .filter(|p| args.runs(p))
        .collect();
    if parts.len() > 1 {
        parts.retain(|p| *p != "floors");
    }
    parts
}

/// Whether a once-only part runs: scale only when named, the others as any part.
fn once(args: &Args, part: &str) -> bool {
    match part {
        "scale" => args.only.iter().any(|o| o == "scale"),
        _ => args.runs(part),
    }
}

/// Adds `new` to `figures`. Each process measures its own floors, so a floor already
/// there stands (the first process's); any other name measured twice is an error, never
/// a figure silently dropped from the table and the JSON.
fn merge(figures: &mut Vec<Figure>, new: Vec<Figure>) -> anyhow::Result<()> {
    for figure in new {
        if !figures.iter().any(|f| f.name == figure.name) {
            figures.push(figure);
        } else if !figure.name.starts_with("floor") {
            anyhow::bail!("two parts measured the figure {:?}", figure.name);
        }
    }
    Ok(())
}

/// Runs `part` in a fresh process of this binary and returns its figures.
fn measure(args: &Args, part: &str, work: &Path, label: &str) -> anyhow::Result<Vec<Figure>> {
    let json = work.join(format!("{part}.json"));
    let started = Instant::now();
    eprint!("{label} ...");
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["--here", "--only", part, "--json"])
        .arg(&json)
        .stdout(Stdio::null());
    if args.quick {
        command.arg("--quick");
    }
    if let Some(n) = args.releases {
        command.args(["--releases", &n.to_string()]);
    }
    let status = command
        .status()
        .with_context(|| format!("starting the bench for {part}"))?;
    anyhow::ensure!(status.success(), "the bench's {part} part failed: {status}");
    eprintln!(" {:.0} s", started.elapsed().as_secs_f64());
    let text =
        std::fs::read_to_string(&json).with_context(|| format!("reading {part}'s figures"))?;
    Ok(serde_json::from_str(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figure;

    #[test]
    fn the_first_process_floors_stand_and_each_part_adds_its_own() {
        let mut figures = vec![
            figure("floor: rtt", 100.0, "us"),
            figure("latency", 3.0, "us"),
        ];
        merge(
            &mut figures,
            vec![figure("floor: rtt", 200.0, "us"), figure("rate", 9.0, "/s")],
        )
        .expect("a floor measured again is no error");
        let got: Vec<_> = figures.iter().map(|f| (f.name.as_str(), f.value)).collect();
        assert_eq!(
            got,
            vec![("floor: rtt", 100.0), ("latency", 3.0), ("rate", 9.0)]
        );
    }

    #[test]
    fn a_figure_two_parts_measure_is_an_error_not_a_drop() {
        let mut figures = vec![figure("peak RSS", 60.0, "MiB")];
        let twice = merge(&mut figures, vec![figure("peak RSS", 90.0, "MiB")]);
        assert!(
            twice
                .expect_err("measured twice")
                .to_string()
                .contains("peak RSS")
        );
    }

    #[test]
    fn floors_run_alone_only_when_nothing_else_is_named() {
        let parse = |only: &[&str]| {
            let mut argv = vec!["lockstep-bench".to_string()];
            if !only.is_empty() {
                argv.push(format!("--only={}", only.join(",")));
            }
            <Args as clap::Parser>::parse_from(argv)
        };
        assert_eq!(round_parts(&parse(&["floors"])), vec!["floors"]);
        assert_eq!(
            round_parts(&parse(&["floors", "latency", "etcd"])),
            vec!["latency"]
        );
        let all = round_parts(&parse(&[]));
        assert_eq!((all.len(), all[0]), (ROUND_PARTS.len() - 1, "latency"));
        assert!(!once(&parse(&[]), "scale") && once(&parse(&[]), "etcd"));
    }
}
