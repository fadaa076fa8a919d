//! `lockstep-soak`: runs many seeds of the simulation (or replays one) and prints
//! `seeds, violations, wall time`. A failing seed prints the command that replays it.

use std::time::Instant;

use clap::Parser;
use lockstep_sim::{
    Config, Summary, default_threads, many::SUMMARY, replay_command, run, run_many,
};

/// Run the Lockstep fault-schedule simulation.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Replay exactly this seed, printing its violations and event-log hash.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// How many seeds to run at once, each in a process of its own (default: one per
    /// core).
    #[arg(long)]
    threads: Option<usize>,
    /// With --seed: also print what clients were told and the event log.
    #[arg(long)]
    verbose: bool,
    /// With --seed: print only a line with the run's summary as JSON, and exit 0 once
    /// the run ended, violations or not. A run of many seeds starts one such process
    /// per seed and reads that line.
    #[arg(long, hide = true, requires = "seed")]
    summary: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(seed) = args.seed {
        let o = run(&Config::for_seed(seed));
        if args.summary {
            let line = serde_json::to_string(&Summary::from(&o)).expect("a summary serializes");
            println!("{SUMMARY}{line}");
            return 0.into();
        }
        println!(
            "seed {seed}: {} transactions, {} committed, {} faults, {} leader terms, {:?} simulated, event-log hash {:016x}",
            o.transactions, o.committed, o.faults, o.terms, o.simulated, o.event_log_hash
        );
        if args.verbose {
            for c in &o.observation.clients {
                println!("  client {} {} {}: {:?}", c.client, c.op, c.tx, c.told);
            }
            for e in &o.observation.events {
                println!(
                    "  #{} {} {:?} {} {}",
                    e.seq,
                    e.transaction_id,
                    lockstep::pb::EventKind::try_from(e.kind).unwrap_or_default(),
                    e.project,
                    e.message
                );
            }
            for (p, v) in &o.observation.participants {
                println!("  {p}: live {:?}, phases {:?}", v.live, v.phases);
            }
        }
        for v in &o.violations {
            println!("  violation {v}");
        }
        return if o.violations.is_empty() {
            0.into()
        } else {
            1.into()
        };
    }
    let started = Instant::now();
    let (mut violations, mut failing, mut transactions, mut faults) =
        (0usize, Vec::new(), 0usize, 0usize);
    let (mut on_etcd, mut failovers) = (0usize, 0i64);
    let threads = args.threads.unwrap_or_else(default_threads);
    let soak = std::env::current_exe().expect("the soak's own path");
    run_many(
        &soak,
        args.from..args.from + args.seeds,
        threads,
        |seed, o| {
            transactions += o.transactions;
            faults += o.faults;
            if o.terms > 0 {
                on_etcd += 1;
                failovers += o.terms - 1;
            }
            if !o.violations.is_empty() {
                violations += o.violations.len();
                println!(
                    "seed {seed}: {} violations, first: {}",
                    o.violations.len(),
                    o.violations[0]
                );
                println!("  replay: {}", replay_command(seed));
                failing.push(seed);
            }
        },
    );
    println!(
        "seeds {}, violations {violations}, wall time {:.1}s, {threads} at once ({transactions} transactions, {faults} faults; {on_etcd} on etcd with {failovers} failovers)",
        args.seeds,
        started.elapsed().as_secs_f64()
    );
    if !failing.is_empty() {
        failing.sort_unstable();
        let failing: Vec<String> = failing.iter().map(u64::to_string).collect();
        println!("failing seeds: {}", failing.join(" "));
    }
    if failing.is_empty() {
        0.into()
    } else {
        1.into()
    }
}
