//! Promotion (issue 14): a tested state of one environment becomes one release in a
//! downstream environment, with exactly the versions, artifacts and metadata the
//! source went live with: the whole composite state of a checkpoint, or the projects
//! one release moved (a bracket). It is turned into an ordinary release request before
//! planning, so the target's release rules, queue, verify steps and 2PC apply
//! unchanged, and the record says where it came from.
//!
//! Only a verified state is promoted without `--force`: every version it holds went
//! live in a release that was not forced, not pulled, and passed its verification
//! after commit (see `verified`). A forced promotion of anything else is recorded as
//! forced in the target, so it never arrives there as a tested state.
//!
//! Auto-promotion: an environment with `auto_promote = true` takes every release its
//! upstream commits (a committed transaction has passed every verify step), as a
//! promotion of the checkpoint it produced with a deterministic id, so that asking
//! twice (or again after a restart) is an idempotent retry. Reverts and rollbacks are
//! not promoted automatically. It acts for the upstream release's creator with what
//! that creator was allowed (its recorded authority), checked in the target as a
//! `promote` of theirs would be; a refusal is an event (ACCESS_DENIED for want of
//! permission, PROMOTION_REFUSED otherwise) and creates nothing.

use lockstep::{
    names::{Environment, TxId},
    pb,
};
use lockstep_store::Batch;

use super::{Registry, verified::unverified};
use crate::{
    access::{
        roles::{Authority, Permission, Scope},
        table,
    },
    error::{CoordinatorError, Result},
    journal::Durable,
    model::{
        CheckpointRecord, ComponentSpec, CreateSpec, PromoteAsk, Request, TxKind, TxRecord, TxState,
    },
    planner::Plan,
    txn::events,
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

    /// A retry with the id of an existing promotion along the same path, by the caller
    /// who made it: its request as it was accepted, so that the retry is answered with
    /// it even if a newer checkpoint became the default since. Someone else's is never
    /// adopted (a manual `promote` takes the automatic promotion's id): its request
    /// carries what they asked, `--force` included, and a restart that aborted it would
    /// have it made again as the asker's own. Planned afresh, an asker's promotion that
    /// differs from it is refused as an id taken with other content.
    fn same_promotion(&self, ask: &PromoteAsk, base: &CreateSpec) -> Result<Option<CreateSpec>> {
        let Some(id) = &base.id else { return Ok(None) };
        let Some(existing) = self.tables().transaction(id)? else {
            return Ok(None);
        };
        let from = existing.promoted_from.as_ref().map(|(env, _)| env);
        let theirs = existing.created_by != base.actor;
        if theirs || existing.environment != ask.to || from != Some(&ask.from) {
            return Ok(None);
        }
        Ok(Some(CreateSpec {
            environment: existing.environment,
            request: existing.request,
            promoted_from: existing.promoted_from,
            ..base.clone()
        }))
    }

    pub(super) fn downstream(&self, from: &Environment, to: &Environment) -> Result<()> {
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

    /// Every project of a source checkpoint at its version: refused unless every one
    /// is verified, or forced (then recorded as untested, so forced in the target).
    fn whole_checkpoint(&self, ask: &PromoteAsk) -> Result<(Vec<ComponentSpec>, CheckpointRecord)> {
        let mut cp = self.source_checkpoint(ask)?;
        if let Some(refused) = self.refusal_of(&cp)? {
            if !ask.force {
                return Err(refused);
            }
            cp.untested = true;
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
            None => self.newest_verified(from),
        }
    }

    /// Why promoting `cp` without `--force` is refused: it is untested, its own
    /// transaction is not verified, or a version it holds is not (`None`: verified).
    pub(super) fn refusal_of(&self, cp: &CheckpointRecord) -> Result<Option<CoordinatorError>> {
        if cp.untested {
            return Ok(Some(untested(cp)));
        }
        let own = self.tables().transaction(&cp.transaction)?;
        if let Some(why) = own.as_ref().and_then(unverified) {
            return Ok(Some(CoordinatorError::Refused(format!(
                "checkpoint: {} (checkpoint {}) {why}; --force to promote it all the same",
                cp.transaction, cp.revision
            ))));
        }
        Ok(self.unverified_version(cp)?.map(|u| u.refusal(cp)))
    }

    /// Why promoting the bracket of `cp`'s own release (`--release`) without `--force`
    /// is refused: that release is not verified (`None`: it is). Only the release is
    /// judged, as when the bracket was asked for: its checkpoint's other versions do
    /// not go with it.
    pub(super) fn bracket_refusal(
        &self,
        cp: &CheckpointRecord,
    ) -> Result<Option<CoordinatorError>> {
        let own = self.tables().transaction(&cp.transaction)?;
        Ok(own.as_ref().and_then(unverified).map(|why| {
            CoordinatorError::Refused(format!(
                "release: {} {why}; --force to promote it all the same",
                cp.transaction
            ))
        }))
    }

    /// The newest checkpoint of `from` whose every version is verified. A checkpoint
    /// holding an unverified version skips every older one that holds it too.
    fn newest_verified(&self, from: &Environment) -> Result<CheckpointRecord> {
        let mut below = u64::MAX;
        loop {
            let mut candidate =
                |cp: &CheckpointRecord| cp.revision < below && !cp.untested && self.verified(cp);
            let at_most = (below != u64::MAX).then(|| below.saturating_sub(1));
            let cp =
                self.tables()
                    .newest_checkpoint_where(from, (None, at_most), &mut candidate)?;
            let cp = cp.ok_or_else(|| {
                CoordinatorError::NotFound(format!(
                    "from: {from} has no verified checkpoint to promote"
                ))
            })?;
            match self.unverified_version(&cp)? {
                None => return Ok(cp),
                Some(u) => below = u.origin.since,
            }
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
        let why = unverified(&t);
        if let Some(why) = why.as_ref().filter(|_| !ask.force) {
            return Err(CoordinatorError::Refused(format!(
                "release: {release} {why}; --force to promote it all the same"
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
        let mut cp = cp.ok_or_else(|| {
            CoordinatorError::NotFound(format!("release: {release} left no checkpoint"))
        })?;
        cp.untested |= why.is_some();
        Ok((components, cp))
    }

    /// Whether `cp`'s own transaction is live everywhere, not forced, not pulled by a
    /// revert, and passed its verification after commit (or had none). A read error
    /// counts as no.
    fn verified(&self, cp: &CheckpointRecord) -> bool {
        let t = self.tables().transaction(&cp.transaction);
        t.ok().flatten().is_some_and(|t| unverified(&t).is_none())
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
    /// downstreams take, created in the background for its creator.
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
            let (this, upstream) = (self.clone(), committed.clone());
            tokio::spawn(async move { this.promote_automatically(ask, upstream).await });
        }
    }

    fn auto_promoting_after(&self, from: &Environment) -> Vec<Environment> {
        let s = self.state();
        let downstream = s.environments.values();
        let auto = downstream.filter(|e| e.stages.auto_promote && e.after.contains(from));
        auto.map(|e| e.name.clone()).collect()
    }

    /// Creates `ask` as made by the `upstream` release's creator, with what they were
    /// allowed (so they cannot approve its downstream verification either, and a
    /// releaser of the upstream only cannot release downstream through it). A refusal
    /// is written to the log.
    async fn promote_automatically(&self, ask: PromoteAsk, upstream: TxRecord) {
        let id = format!(
            "promote-{}-{}-to-{}",
            ask.from,
            ask.checkpoint.unwrap_or(0),
            ask.to
        );
        let created = async {
            let base = auto_spec(&ask, &id, &upstream)?;
            self.creator_not_revoked(&upstream, &id)?;
            let spec = self.promotion(&ask, base)?;
            let may = may_release(&upstream, &ask.to, &id);
            self.admit(spec, &may).await
        };
        match created.await {
            Ok(_) => tracing::info!(%id, "auto-promotion created"),
            Err(CoordinatorError::ShuttingDown) => {}
            Err(e) => self.auto_promotion_refused(&upstream, &id, e).await,
        }
    }

    /// `Err` ([`CoordinatorError::Denied`]) when `upstream` was created with a token
    /// revoked since: a revoked credential acts no more, not even through what it
    /// set going.
    fn creator_not_revoked(&self, upstream: &TxRecord, id: &str) -> Result<()> {
        let Some(token) = self.tables().revoked_token_of(&upstream.created_by)? else {
            return Ok(());
        };
        Err(CoordinatorError::Denied(format!(
            "{id} acts for the upstream release's creator {}, whose token {token} was revoked",
            upstream.created_by
        )))
    }

    /// Writes why promotion `id` of `upstream` was not created, correlated with
    /// `upstream` and naming the principal it would have acted for.
    async fn auto_promotion_refused(&self, upstream: &TxRecord, id: &str, e: CoordinatorError) {
        tracing::warn!(%id, "auto-promotion not created: {e}");
        let kind = match e {
            CoordinatorError::Denied(_) => pb::EventKind::AccessDenied,
            _ => pb::EventKind::PromotionRefused,
        };
        let message = format!("auto-promotion {id} refused: {e}");
        let mut event = events::event(upstream, kind, None, message);
        event.actor = acting_for(upstream);
        let durable = Durable::Soon;
        let written = self
            .inner
            .journal
            .append(Batch::default(), vec![event], durable);
        if let Err(e) = written.await {
            tracing::error!(%id, "recording a refused auto-promotion: {e}");
        }
    }
}

/// Who an automatic promotion of `upstream` acts for: its creator, or `auto-promotion`
/// when callers are not authenticated.
fn acting_for(upstream: &TxRecord) -> String {
    match upstream.created_by.as_str() {
        "" => "auto-promotion".into(),
        creator => creator.into(),
    }
}

fn auto_spec(ask: &PromoteAsk, id: &str, upstream: &TxRecord) -> Result<CreateSpec> {
    Ok(CreateSpec {
        id: Some(TxId::derived(id)),
        id_hint: None,
        environment: ask.to.clone(),
        request: Request::Rollback {
            revision: 0,
            allow_quarantined: false,
        },
        prepare_timeout: None,
        dry_run: false,
        actor: acting_for(upstream),
        authority: upstream.authority.clone(),
        ticket: String::new(),
        promoted_from: None,
        again_after_restart: true,
    })
}

/// The check an automatic promotion `id` of `upstream` makes against its final plan:
/// the upstream creator may do what the permission table's `Promote` row needs
/// (`release`) on every project it changes in `to`.
fn may_release(
    upstream: &TxRecord,
    to: &Environment,
    id: &str,
) -> impl Fn(&Plan) -> Result<()> + Sync + use<> {
    let (creator, authority) = (upstream.created_by.clone(), upstream.authority.clone());
    let (to, id) = (to.clone(), id.to_string());
    let promote = table::rule("Promote").expect("the table has a row for every rpc");
    let permission = promote.permission;
    move |plan: &Plan| {
        let scope = Scope::projects(&to, plan.projects());
        if authority.allows(&creator, permission, &scope) {
            return Ok(());
        }
        let why = denial(&id, &creator, &authority, permission, &scope);
        Err(CoordinatorError::Denied(why))
    }
}

fn denial(
    id: &str,
    creator: &str,
    authority: &Authority,
    permission: Permission,
    scope: &Scope,
) -> String {
    let permission = permission.name();
    format!(
        "{id} acts for the upstream release's creator {creator}, who needs permission {permission} on {scope}; {creator} holds {authority}"
    )
}

fn untested(cp: &CheckpointRecord) -> CoordinatorError {
    CoordinatorError::Refused(format!(
        "checkpoint: {} checkpoint {} is untested ({}, forced into a combination never verified); --force to promote it all the same",
        cp.environment, cp.revision, cp.description
    ))
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
