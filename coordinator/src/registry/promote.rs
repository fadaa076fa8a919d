//! Promotion (issue 14): a tested state of one environment becomes one release in a
//! downstream environment, with exactly the versions, artifacts and metadata the
//! source went live with: the whole composite state of a checkpoint, or the projects
//! one release moved (a bracket). It is turned into an ordinary release request before
//! planning, so the target's release rules, queue, verify steps and 2PC apply
//! unchanged, and the record says where it came from.
//!
//! Auto-promotion: an environment with `auto_promote = true` takes every release its
//! upstream commits (a committed transaction has passed every verify step), as a
//! promotion of the checkpoint it produced with a deterministic id, so that asking
//! twice (or again after a restart) is an idempotent retry. Reverts and rollbacks are
//! not promoted automatically.

use lockstep::names::{Environment, TxId};

use super::Registry;
use crate::{
    error::{CoordinatorError, Result},
    model::{
        CheckpointRecord, ComponentSpec, CreateSpec, LiveCheck, PromoteAsk, Request, TxKind,
        TxRecord, TxState,
    },
};

impl Registry {
    /// The create spec of promotion `ask` (`base` carries the id, deadline, dry run,
    /// ticket). `Err` names the field: an environment off the promotion path, a missing
    /// or untested checkpoint, a release that is not a committed one of the source.
    pub fn promotion(&self, ask: &PromoteAsk, base: CreateSpec) -> Result<CreateSpec> {
        self.downstream(&ask.from, &ask.to)?;
        if let Some(existing) = self.same_promotion(ask, &base)? {
            return Ok(existing);
        }
        let (components, upstream) = match &ask.release {
            Some(release) => self.bracket(ask, release)?,
            None => self.whole_checkpoint(ask)?,
        };
        let checkpoint = upstream.revision;
        let hint = format!("promote-{}-{}-to-{}", ask.from, checkpoint, ask.to);
        Ok(CreateSpec {
            id_hint: Some(hint),
            environment: ask.to.clone(),
            request: Request::Promote {
                components,
                force: ask.force,
                upstream,
            },
            promoted_from: Some((ask.from.clone(), checkpoint)),
            ..base
        })
    }

    /// A retry with the id of an existing promotion along the same path: its request
    /// as it was accepted, so that the retry is answered with it even if a newer
    /// checkpoint became the default since.
    fn same_promotion(&self, ask: &PromoteAsk, base: &CreateSpec) -> Result<Option<CreateSpec>> {
        let Some(id) = &base.id else { return Ok(None) };
        let Some(existing) = self.tables().transaction(id)? else {
            return Ok(None);
        };
        let from = existing.promoted_from.as_ref().map(|(env, _)| env);
        if existing.environment != ask.to || from != Some(&ask.from) {
            return Ok(None);
        }
        Ok(Some(CreateSpec {
            environment: existing.environment,
            request: existing.request,
            promoted_from: existing.promoted_from,
            ..base.clone()
        }))
    }

    fn downstream(&self, from: &Environment, to: &Environment) -> Result<()> {
        let s = self.state();
        let target = s.environments.get(to).ok_or_else(|| {
            CoordinatorError::NotFound(format!(
                "to: no declared environment {to} (`lockstep env add {to} --after {from}`)"
            ))
        })?;
        if target.after.contains(from) {
            return Ok(());
        }
        let after: Vec<&str> = target.after.iter().map(|e| e.as_str()).collect();
        Err(CoordinatorError::Refused(format!(
            "from: {to} does not come after {from} on the promotion path (its upstreams: {})",
            if after.is_empty() {
                "none".into()
            } else {
                after.join(", ")
            }
        )))
    }

    /// Every project of a source checkpoint at its version.
    fn whole_checkpoint(&self, ask: &PromoteAsk) -> Result<(Vec<ComponentSpec>, CheckpointRecord)> {
        let cp = self.source_checkpoint(ask)?;
        untested_refused(&cp, ask.force)?;
        if let Some(t) = self.tables().transaction(&cp.transaction)? {
            unverified_refused(&t, ask.force)?;
        }
        let versions = cp.versions.iter();
        let components = versions
            .map(|(project, entry)| self.component(&ask.from, project, &entry.version))
            .collect::<Result<Vec<_>>>()?;
        Ok((components, cp))
    }

    fn source_checkpoint(&self, ask: &PromoteAsk) -> Result<CheckpointRecord> {
        let tables = self.tables();
        let from = &ask.from;
        match ask.checkpoint {
            Some(n) => tables.checkpoint(from, n)?.ok_or_else(|| {
                CoordinatorError::NotFound(format!("checkpoint: {from} has no checkpoint {n}"))
            }),
            None => tables
                .newest_checkpoint_where(from, &mut |cp| !cp.untested && self.verified(cp))?
                .ok_or_else(|| {
                    CoordinatorError::NotFound(format!(
                        "from: {from} has no verified checkpoint to promote"
                    ))
                }),
        }
    }

    /// The projects release `release` of the source moved, at the versions it set.
    fn bracket(
        &self,
        ask: &PromoteAsk,
        release: &TxId,
    ) -> Result<(Vec<ComponentSpec>, CheckpointRecord)> {
        let t = self.tables().transaction(release)?;
        let t = t.filter(|t| t.environment == ask.from).ok_or_else(|| {
            CoordinatorError::NotFound(format!(
                "release: {} has no transaction {release}",
                ask.from
            ))
        })?;
        committed_release(&t)?;
        unverified_refused(&t, ask.force)?;
        if t.forced && !ask.force {
            return Err(CoordinatorError::Refused(format!(
                "release: {release} went live forced into an untested combination; --force to promote it all the same"
            )));
        }
        let moved = t
            .participants
            .iter()
            .filter(|p| p.action != crate::model::Action::Unchanged);
        let components = moved
            .map(|p| self.component(&ask.from, &p.project, &p.to_version))
            .collect::<Result<Vec<_>>>()?;
        let cp = self.tables().checkpoint(&ask.from, t.checkpoint)?;
        let cp = cp.ok_or_else(|| {
            CoordinatorError::NotFound(format!("release: {release} left no checkpoint"))
        })?;
        Ok((components, cp))
    }

    /// Whether `cp`'s transaction is live everywhere, was not pulled by a revert, and
    /// passed its verification after commit (or had none). A read error counts as no.
    fn verified(&self, cp: &CheckpointRecord) -> bool {
        let t = self.tables().transaction(&cp.transaction);
        t.ok()
            .flatten()
            .is_some_and(|t| unverified_refused(&t, false).is_ok())
    }

    /// `project` at `version` with what the source staged it from.
    fn component(
        &self,
        from: &Environment,
        project: &lockstep::names::ProjectName,
        version: &lockstep::names::Version,
    ) -> Result<ComponentSpec> {
        let build = self
            .tables()
            .build(from, project, version)?
            .unwrap_or_default();
        Ok(ComponentSpec {
            project: project.clone(),
            version: version.clone(),
            artifact: build.artifact,
            metadata: build.metadata,
        })
    }

    /// After `committed` finished: the promotions its environment's auto-promoting
    /// downstreams take, created in the background.
    pub(super) fn auto_promote(&self, committed: &TxRecord) {
        let release = committed.state == TxState::Committed && committed.kind == TxKind::Release;
        if !release || !committed.live_check.verified() {
            return;
        }
        for to in self.auto_promoting_after(&committed.environment) {
            let ask = PromoteAsk {
                from: committed.environment.clone(),
                to,
                checkpoint: Some(committed.checkpoint),
                release: None,
                force: false,
            };
            let (this, on_behalf) = (self.clone(), committed.created_by.clone());
            tokio::spawn(async move { this.promote_automatically(ask, on_behalf).await });
        }
    }

    fn auto_promoting_after(&self, from: &Environment) -> Vec<Environment> {
        let s = self.state();
        let downstream = s.environments.values();
        let auto = downstream.filter(|e| e.stages.auto_promote && e.after.contains(from));
        auto.map(|e| e.name.clone()).collect()
    }

    /// Creates `ask` as made by the upstream release's creator (`on_behalf`), so that
    /// they cannot approve its downstream verification either.
    async fn promote_automatically(&self, ask: PromoteAsk, on_behalf: String) {
        let id = format!(
            "promote-{}-{}-to-{}",
            ask.from,
            ask.checkpoint.unwrap_or(0),
            ask.to
        );
        let created = async {
            let mut base = auto_spec(&ask, &id)?;
            if !on_behalf.is_empty() {
                base.actor = on_behalf;
            }
            let spec = self.promotion(&ask, base)?;
            self.admit(spec, &|_| Ok(())).await
        };
        match created.await {
            Ok(_) => tracing::info!(%id, "auto-promotion created"),
            Err(e) => tracing::warn!(%id, "auto-promotion not created: {e}"),
        }
    }
}

fn auto_spec(ask: &PromoteAsk, id: &str) -> Result<CreateSpec> {
    Ok(CreateSpec {
        id: Some(TxId::derived(id)),
        id_hint: None,
        environment: ask.to.clone(),
        request: Request::Rollback { revision: 0 },
        prepare_timeout: None,
        dry_run: false,
        actor: "auto-promotion".into(),
        ticket: String::new(),
        promoted_from: None,
    })
}

fn untested_refused(cp: &CheckpointRecord, force: bool) -> Result<()> {
    if !cp.untested || force {
        return Ok(());
    }
    Err(CoordinatorError::Refused(format!(
        "checkpoint: {} checkpoint {} is untested ({}, forced into a combination never verified); --force to promote it all the same",
        cp.environment, cp.revision, cp.description
    )))
}

fn unverified_refused(t: &TxRecord, force: bool) -> Result<()> {
    let why = match &t.live_check {
        _ if force => return Ok(()),
        _ if t.state != TxState::Committed => "is not live everywhere yet".to_string(),
        _ if t.quarantined => "was pulled by a revert".to_string(),
        LiveCheck::Failed(why) => format!("failed its verification after commit ({why})"),
        LiveCheck::Soaking => "is still in its verification after commit".into(),
        LiveCheck::None | LiveCheck::Passed => return Ok(()),
    };
    Err(CoordinatorError::Refused(format!(
        "checkpoint: {} (checkpoint {}) {why}; --force to promote it all the same",
        t.id, t.checkpoint
    )))
}

fn committed_release(t: &TxRecord) -> Result<()> {
    if t.state == TxState::Committed && t.kind == TxKind::Release {
        return Ok(());
    }
    Err(CoordinatorError::Refused(format!(
        "release: {} is a {:?} in state {:?}; only a committed release can be promoted as a bracket",
        t.id, t.kind, t.state
    )))
}
