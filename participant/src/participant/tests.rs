//! Unit tests of the participant's protocol rules.

#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use lockstep_store::{MemKv, WriterMode};
use tokio::sync::Notify;

use lockstep::{
    names::{Environment, ProjectName, TxId, Version},
    orders::PrepareOrder,
};

use super::*;
use crate::deployer::{Refusal, Staged};

/// Stages only when the test lets it.
#[derive(Default)]
struct Gated {
    open: Notify,
}

impl Deployer for Gated {
    async fn stage(&self, _change: &Change) -> Result<Staged, Refusal> {
        self.open.notified().await;
        Ok(Staged::default())
    }

    async fn go_live(&self, _change: &Change, _staged: &Staged) -> Result<(), DeployError> {
        Ok(())
    }

    async fn undo(&self, _change: &Change, _staged: Option<&Staged>) -> Result<(), DeployError> {
        Ok(())
    }

    async fn live_version(&self) -> Result<Option<String>, DeployError> {
        Ok(None)
    }
}

#[tokio::test]
async fn a_prepare_repeated_while_staging_gets_the_same_vote() {
    let ledger = Ledger::open(Arc::new(MemKv::new()), WriterMode::Task).unwrap();
    let p = Participant::new(
        "api".into(),
        "production".into(),
        Gated::default(),
        None,
        ledger,
        None,
    );
    let request = PrepareOrder {
        tx: TxId::parse("id", "T4").unwrap(),
        environment: Environment::parse("e", "production").unwrap(),
        project: ProjectName::parse("p", "api").unwrap(),
        version: Version::parse("v", "v2").unwrap(),
        from_version: None,
        artifact: String::new(),
        metadata: Default::default(),
        action: None,
    };
    let first = tokio::spawn({
        let (p, r) = (p.clone(), request.clone());
        async move { p.prepare(r).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !matches!(p.inner.ledger.get("T4"), Ok(Some(e)) if e.phase == Phase::Staging) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "staging never started"
        );
        tokio::task::yield_now().await;
    }
    let again = tokio::spawn({
        let (p, r) = (p.clone(), request.clone());
        async move { p.prepare(r).await }
    });
    // Single-threaded test runtime: let the repeat run until it waits.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!again.is_finished(), "the repeat must wait for the vote");
    p.inner.deployer.open.notify_one();
    for answer in [first.await.unwrap().unwrap(), again.await.unwrap().unwrap()] {
        assert!(matches!(answer, VoteAnswer::Prepared(_)), "{answer:?}");
    }
}
