//! What the access layer writes and reads: refused calls (an ACCESS_DENIED event, the
//! only thing a refused call writes), tokens made and revoked, and the audit log (every
//! event a principal caused, and every refusal) read back from the one ordered log.

use lockstep::pb;
use lockstep_store::Batch;

use super::Registry;
use crate::{
    error::{CoordinatorError, Result},
    journal::Durable,
    model::TokenRecord,
    tables::Tables,
};

/// How many events one audit page looks through at most, so a page over a long stretch
/// of unaudited events still answers quickly (its cursor says where to go on).
const AUDIT_SCAN: usize = 10_000;

/// A page of the audit log and where the next one starts (`None`: the end).
pub struct AuditPage {
    /// Audit events, oldest first.
    pub events: Vec<pb::Event>,
    /// The `since` of the next page.
    pub next: Option<u64>,
}

impl Registry {
    /// Records a refused call; resolves once durable.
    pub async fn deny(&self, event: pb::Event) -> Result<()> {
        let written = self
            .inner
            .journal
            .append(Batch::default(), vec![event], Durable::Soon);
        written.await?;
        Ok(())
    }

    /// Records a token made (never the token itself); resolves once durable, so a
    /// token is handed out only when its revocation could find it.
    pub async fn record_token(&self, token: &TokenRecord, event: pb::Event) -> Result<()> {
        let mut batch = Batch::default();
        Tables::put_token(&mut batch, token);
        let written = self.inner.journal.append(batch, vec![event], Durable::Now);
        written.await?;
        Ok(())
    }

    /// Revokes token `id`, durably; `false` when it was revoked already.
    pub async fn revoke_token(&self, id: &str, event: pb::Event) -> Result<bool> {
        let Some(mut token) = self.inner.tables.token(id)? else {
            return Err(CoordinatorError::NotFound(format!(
                "id: no token {id:?} was made here (`lockstep audit` lists TOKEN_CREATED events)"
            )));
        };
        if token.revoked {
            return Ok(false);
        }
        token.revoked = true;
        let mut batch = Batch::default();
        Tables::put_token(&mut batch, &token);
        let written = self.inner.journal.append(batch, vec![event], Durable::Now);
        written.await?;
        Ok(true)
    }

    /// Ids of revoked tokens (the deny list, loaded at start).
    pub fn revoked_tokens(&self) -> Result<Vec<String>> {
        let tokens = self.inner.tables.tokens()?;
        Ok(tokens
            .into_iter()
            .filter(|t| t.revoked)
            .map(|t| t.id)
            .collect())
    }

    /// Up to `size` audit events from `since` on.
    pub fn audit(&self, since: u64, size: usize) -> Result<AuditPage> {
        let (mut events, next) =
            self.inner
                .feed
                .read_matching(since.max(1), AUDIT_SCAN, is_audit)?;
        let more = events.len() > size;
        events.truncate(size);
        let next = match (more, events.last()) {
            (true, Some(last)) => Some(last.seq + 1),
            _ if next > since.max(1) && next <= self.newest_seq() => Some(next),
            _ => None,
        };
        Ok(AuditPage { events, next })
    }

    fn newest_seq(&self) -> u64 {
        *self.inner.feed.latest().borrow()
    }
}

/// Whether an event belongs to the audit log: a principal caused it, or it is a refusal
/// or a token change.
fn is_audit(event: &pb::Event) -> bool {
    use pb::EventKind::{AccessDenied, TokenCreated, TokenRevoked};
    let kind = pb::EventKind::try_from(event.kind).ok();
    !event.actor.is_empty() || matches!(kind, Some(AccessDenied | TokenCreated | TokenRevoked))
}
