//! CreateToken and RevokeToken: admins make signed bearer tokens for CI and people, and
//! revoke them by id. The log records each token's id, subject, grant and expiry (never
//! the token), and a revocation holds for every call from the moment it is durable.

use std::time::Duration;

use lockstep::{
    identity::valid_user,
    names::{Environment, FieldError, ProjectName},
    pb,
};
use tonic::{Request, Status};

use super::CoordinatorService;
use crate::{
    access::{
        Principal,
        roles::{Grant, Role, person},
        table::Target,
        tokens::{self, Claims},
    },
    model::TokenRecord,
};

/// How long a token lives when the request says nothing.
const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest a token may live: tokens must expire.
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

impl CoordinatorService {
    /// CreateToken.
    pub(super) async fn make_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<pb::CreateTokenResponse, Status> {
        let Some(key) = self.access.token_key() else {
            return Err(Status::failed_precondition(
                "tokens need authentication: this coordinator runs with --insecure",
            ));
        };
        let who = crate::access::principal_of(&request);
        let claims = self.claims(&who, request.get_ref())?;
        let target = Target::grant(needed(&who, &claims));
        let who = self.allow(&request, "CreateToken", target).await?;
        let token = key.issue(&claims).map_err(Status::internal)?;
        let record = TokenRecord {
            id: claims.jti.clone(),
            subject: claims.sub.clone(),
            grant: claims.grant.to_string(),
            expires_ms: claims.exp * 1000,
            created_by: who.actor.clone(),
            revoked: false,
        };
        let event = token_event(&who, pb::EventKind::TokenCreated, describe(&record));
        self.coordinator.record_token(&record, event).await?;
        Ok(pb::CreateTokenResponse {
            id: record.id,
            token,
            expires: lockstep::wire::timestamp(record.expires_ms),
        })
    }

    fn claims(&self, who: &Principal, r: &pb::CreateTokenRequest) -> Result<Claims, Status> {
        let role = Role::parse(&r.role).map_err(|e| FieldError::new("role", e))?;
        let grant = Grant {
            role,
            environments: names("environments", &r.environments, |f, v| {
                Environment::parse(f, v).map(|_| ())
            })?,
            projects: names("projects", &r.projects, |f, v| {
                ProjectName::parse(f, v).map(|_| ())
            })?,
        };
        let ttl = ttl(r.ttl.as_ref())?;
        let subject = subject(who, &r.subject)?;
        let now_s = self.access.now_ms() / 1000;
        let asked = now_s + ttl.as_secs();
        Ok(Claims {
            jti: tokens::new_id().map_err(Status::internal)?,
            sub: subject,
            iss: tokens::ISSUER.into(),
            iat: now_s,
            exp: self
                .makers_expire(who)?
                .map_or(asked, |soonest| soonest.min(asked)),
            grant,
        })
    }

    /// When the soonest of the tokens `who` acts through expires (seconds): a token
    /// made through them never outlives them, as it never outlives their revocation.
    fn makers_expire(&self, who: &Principal) -> Result<Option<u64>, Status> {
        let mut soonest: Option<u64> = None;
        for id in crate::access::tokens_in(&who.actor) {
            let expires = self.coordinator.token_expires_ms(id)?;
            let expires = expires.map(|ms| ms / 1000);
            soonest = match (soonest, expires) {
                (Some(s), Some(e)) => Some(s.min(e)),
                (s, e) => s.or(e),
            };
        }
        Ok(soonest)
    }

    /// RevokeToken.
    pub(super) async fn revoke(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<pb::RevokeTokenResponse, Status> {
        let who = self.allow(&request, "RevokeToken", Target::every()).await?;
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(FieldError::new("id", "is required (`tok-...`)").into());
        }
        let message = format!("token {id} revoked");
        let event = token_event(&who, pb::EventKind::TokenRevoked, message);
        let revoked = self.coordinator.revoke_token(&id, event).await?;
        self.access.revoke(&id);
        Ok(pb::RevokeTokenResponse { revoked })
    }
}

/// Checks each of `values` with `check` (naming `field[i]`).
fn names(
    field: &str,
    values: &[String],
    check: impl Fn(&str, &str) -> Result<(), FieldError>,
) -> Result<Vec<String>, FieldError> {
    for (i, value) in values.iter().enumerate() {
        check(&format!("{field}[{i}]"), value)?;
    }
    Ok(values.to_vec())
}

fn ttl(ttl: Option<&lockstep::wkt::Duration>) -> Result<Duration, FieldError> {
    let Some(ttl) = ttl else {
        return Ok(DEFAULT_TTL);
    };
    let seconds = u64::try_from(ttl.seconds).unwrap_or(0);
    if seconds == 0 {
        return Err(FieldError::new("ttl", "must be at least one second"));
    }
    let ttl = Duration::from_secs(seconds);
    if ttl > MAX_TTL {
        return Err(FieldError::new(
            "ttl",
            "must be at most 366 days: tokens expire",
        ));
    }
    Ok(ttl)
}

/// The new token's subject: the maker's own actor, or the person `given`; either way
/// followed by the tokens the maker acts through (`alice (token t1)`), which revocation
/// follows: a token made through a revoked token is refused, whoever it names. Until
/// stop 64 a subject given by name dropped them, so `--subject` (even the maker's own
/// name) made a token that outlived its maker's revocation.
fn subject(who: &Principal, given: &str) -> Result<String, FieldError> {
    if given.is_empty() {
        return Ok(who.actor.clone());
    }
    if !valid_user(given) {
        let why = "must be 1-64 letters, digits, '-', '_' or '.'";
        return Err(FieldError::new("subject", why));
    }
    let through = crate::access::tokens_in(&who.actor).map(|t| format!(" (token {t})"));
    Ok(format!("{given}{}", through.collect::<String>()))
}

/// What the maker must hold to make a token of `claims`: a grant containing the
/// token's (grants never widen); for a token naming another person, admin over
/// everything. A token's subject is who the four-eyes rule and the audit log take it
/// for: an admin scoped to one project minting a token for "dave" could otherwise
/// approve their own release as dave.
fn needed(who: &Principal, claims: &Claims) -> Grant {
    match person(&claims.sub) == person(&who.actor) {
        true => claims.grant.clone(),
        false => Grant::everywhere(Role::Admin),
    }
}

fn describe(t: &TokenRecord) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(t.expires_ms);
    let expires = humantime::format_rfc3339_seconds(at);
    format!(
        "token {} for {}: {} until {expires}",
        t.id, t.subject, t.grant
    )
}

fn token_event(who: &Principal, kind: pb::EventKind, message: String) -> pb::Event {
    pb::Event {
        kind: kind as i32,
        actor: who.actor.clone(),
        message,
        ..Default::default()
    }
}
