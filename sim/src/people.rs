//! The people around the simulated cluster, in one client: a test runner reporting the
//! external steps, a release manager approving or rejecting, and an operator resolving
//! by hand a participant that lost its data directory. The operator does what the
//! runbook says: read the participant's disk, and for a COMMIT decision deploy the
//! version by hand if it is not live, then resolve; for ABORT resolve only when nothing
//! of the transaction went live there (a person does not write down what is not so).

use std::{collections::BTreeMap, time::Duration};

use lockstep::pb::{self, StepStatus, TransactionState, coordinator_client::CoordinatorClient};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use tonic::transport::Channel;

use crate::{
    calls::{bounded, coordinator_client},
    checker::member,
    deployer::Disk,
};

type Client = CoordinatorClient<Channel>;

/// Polls the transactions in progress and acts on each, until `quiet_after` has passed
/// and nothing has been in progress for a few polls.
pub async fn people(seed: u64, quiet_after: Duration, disks: BTreeMap<String, Disk>) {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x009e_091e);
    let mut client = coordinator_client();
    let mut quiet = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        let Ok(active) = bounded(client.list_releases(in_progress())).await else {
            continue;
        };
        quiet = if active.transactions.is_empty() {
            quiet + 1
        } else {
            0
        };
        if quiet >= 5 && turmoil::sim_elapsed().unwrap_or_default() >= quiet_after {
            return;
        }
        for t in &active.transactions {
            verify(&mut client, &mut rng, t).await;
            resolve(&mut client, &disks, t).await;
        }
    }
}

fn in_progress() -> pb::ListReleasesRequest {
    pb::ListReleasesRequest {
        active_only: true,
        page_size: 1000,
        ..Default::default()
    }
}

/// Answers the running step of a VERIFYING transaction, sometimes not yet: a runner
/// reports `started` first (or not), then passes seven runs in eight; a person approves
/// seven in eight.
async fn verify(client: &mut Client, rng: &mut SmallRng, t: &pb::Transaction) {
    if t.state != TransactionState::Verifying as i32 || rng.random_bool(0.3) {
        return;
    }
    let running = |s: &&pb::VerifyStep| {
        s.status == StepStatus::Triggered as i32 || s.status == StepStatus::Started as i32
    };
    let Some(step) = t.steps.iter().find(running) else {
        return;
    };
    let pass = rng.random_range(0..8) != 0;
    let triggered = step.status == StepStatus::Triggered as i32;
    let outcome = match (step.kind.as_str(), pass) {
        ("external", _) if triggered && rng.random_bool(0.5) => pb::VerifyOutcome::Started,
        ("external", true) => pb::VerifyOutcome::Passed,
        ("external", false) => pb::VerifyOutcome::Failed,
        ("approval", _) => return approve(client, &t.id, pass).await,
        _ => return,
    };
    let report = pb::ReportVerifyRequest {
        transaction_id: t.id.clone(),
        step: step.name.clone(),
        outcome: outcome as i32,
        reason: "simulated test run".into(),
        link: String::new(),
        actor: "test-runner".into(),
    };
    let _ = bounded(client.report_verify(report)).await;
}

async fn approve(client: &mut Client, tx: &str, yes: bool) {
    let r = pb::ApprovalRequest {
        transaction_id: tx.into(),
        reason: "simulated review".into(),
        actor: "release-manager".into(),
    };
    let _ = match yes {
        true => bounded(client.approve(r)).await,
        false => bounded(client.reject(r)).await,
    };
}

/// Resolves every participant of `t` that waits for a person, as the runbook says.
async fn resolve(client: &mut Client, disks: &BTreeMap<String, Disk>, t: &pb::Transaction) {
    let commit = t.state == TransactionState::Committing as i32;
    for part in t.participants.iter().filter(|p| p.needs_resolution) {
        let Some(disk) = disks.get(&member(&t.environment, &part.project)) else {
            continue;
        };
        let resolution = if commit {
            deploy_by_hand(disk, &t.id, &part.to_version);
            pb::Resolution::Committed
        } else if disk.lock().effects.iter().any(|e| e.tx == t.id) {
            continue;
        } else {
            pb::Resolution::Aborted
        };
        let r = pb::ResolveParticipantRequest {
            transaction_id: t.id.clone(),
            project: part.project.clone(),
            r#as: resolution as i32,
            reason: "checked the participant's disk".into(),
            actor: "operator".into(),
            dry_run: false,
        };
        let _ = bounded(client.resolve_participant(r)).await;
    }
}

/// Makes `version` live on `disk` for `tx` unless it already is.
fn deploy_by_hand(disk: &Disk, tx: &str, version: &str) {
    disk.make_live(tx, version, true);
}
