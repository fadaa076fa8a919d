//! Who is calling and what they may do: every call to the coordinator is authenticated
//! once, by an interceptor that turns its credentials (a client certificate that chains
//! to the CA, or a signed token) into a [`Principal`], and each handler then looks up
//! its row of the permission [`table`] and asks it whether the principal may act on
//! what the request names; the row's [`Permission`] and [`Scope`] are checked by
//! [`Grant::allows`]. Reads of an environment are filtered down to what the caller
//! may read there ([`reads`]).
//!
//! `--insecure` (no TLS) keeps the old behaviour for local experiments: every caller is
//! let through, named by the `actor` it gives.

pub mod reads;
pub mod refusals;
pub mod roles;
pub mod table;
pub mod tokens;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::{Arc, Mutex, RwLock},
};

use lockstep::{
    caller::Credentials,
    identity::Identity,
    names::{Environment, ProjectName},
    tls::ServerTls,
};
use tonic::{Request, Status};

use self::{
    refusals::{Refusals, Verdict},
    roles::{Grant, Permission, Role, Scope},
    tokens::{Claims, TokenKey},
};

/// Milliseconds since the epoch (tokens' expiry); a plain closure, so that this module
/// depends on nothing else of the coordinator.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Who makes a call, as the handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// How the log names it (`user/alice`, `ci (token tok-…)`, `agent/staging/A`).
    pub actor: String,
    /// What it may do.
    pub standing: Standing,
}

/// What a principal may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Anything: the coordinator runs with `--insecure`.
    Unchecked,
    /// What its grants allow.
    Granted(Vec<Grant>),
    /// Ask for its own part's decisions, nothing else.
    Agent {
        /// Its environment.
        environment: Environment,
        /// Its project.
        project: ProjectName,
    },
    /// Nothing on the coordinator (the coordinator's own certificate).
    Nothing,
}

impl Principal {
    /// Whether it may do something needing `permission` over `scope`.
    pub fn allows(&self, permission: Permission, scope: &Scope) -> bool {
        match &self.standing {
            Standing::Unchecked => true,
            Standing::Granted(grants) => grants.iter().any(|g| g.allows(permission, scope)),
            Standing::Agent { .. } | Standing::Nothing => false,
        }
    }

    /// Whether it may make a grant (a token) carrying `grant`: one of its own grants
    /// has `role` or above and contains `grant` (grants never widen).
    pub fn may_grant(&self, role: Role, grant: &Grant) -> bool {
        match &self.standing {
            Standing::Unchecked => true,
            Standing::Granted(grants) => grants.iter().any(|g| g.role >= role && g.contains(grant)),
            Standing::Agent { .. } | Standing::Nothing => false,
        }
    }

    /// The actor to record for what it does: its own name, or (without authentication)
    /// the name the request gives.
    pub fn actor_or(&self, given: &str) -> String {
        match self.standing {
            Standing::Unchecked => given.to_string(),
            _ => self.actor.clone(),
        }
    }

    /// What it holds, for a refusal's message.
    pub fn holds(&self) -> String {
        match &self.standing {
            Standing::Unchecked => "everything".into(),
            Standing::Granted(grants) if grants.is_empty() => "no role".into(),
            Standing::Granted(grants) => {
                let all: Vec<String> = grants.iter().map(|g| g.to_string()).collect();
                all.join("; ")
            }
            Standing::Agent {
                environment,
                project,
            } => format!("the agent identity of {environment}/{project}"),
            Standing::Nothing => "the coordinator's identity".into(),
        }
    }

    /// The PERMISSION_DENIED answer for `call` needing `permission` over `scope`: names
    /// all three and the principal.
    pub fn refusal(&self, call: &str, permission: Permission, scope: &Scope) -> String {
        format!(
            "{call} needs permission {} ({} or above) on {scope}; {} holds {}",
            permission.name(),
            permission.role().name(),
            self.actor,
            self.holds()
        )
    }
}

/// The handler's view of the caller, put there by the interceptor.
pub fn principal_of<T>(request: &Request<T>) -> Principal {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        // Every server built by `server::serve_incoming` authenticates first; a missing
        // principal means a server built some other way, which gets no rights.
        .unwrap_or(Principal {
            actor: "unauthenticated".into(),
            standing: Standing::Granted(Vec::new()),
        })
}

/// How the coordinator authenticates callers.
#[derive(Clone)]
pub struct Access {
    inner: Arc<Mode>,
    /// Each principal's refusals written lately ([`refusals`]).
    refusals: Arc<Mutex<Refusals>>,
    /// Counts revocations, so that an open stream of a revoked token ends at once.
    revocations: Arc<tokio::sync::watch::Sender<u64>>,
}

enum Mode {
    Insecure,
    Secure(Box<Secure>),
}

/// Everything needed to tell who a caller is.
pub struct Secure {
    /// The server's TLS, whose CA client certificates must chain to.
    pub tls: ServerTls,
    /// The key tokens are signed with.
    pub key: TokenKey,
    /// Users (by certificate name) who are admins.
    pub admins: BTreeSet<String>,
    /// Further roles given to users by certificate name; others are viewers.
    pub grants: BTreeMap<String, Vec<Grant>>,
    /// Ids of revoked tokens.
    pub revoked: RwLock<HashSet<String>>,
    /// Milliseconds since the epoch (tokens' expiry).
    pub clock: Clock,
}

impl Access {
    /// No authentication: everyone may do everything (`--insecure`).
    pub fn insecure() -> Self {
        Self {
            inner: Arc::new(Mode::Insecure),
            refusals: Arc::default(),
            revocations: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// Authentication by certificate and token.
    pub fn secure(secure: Secure) -> Self {
        Self {
            inner: Arc::new(Mode::Secure(Box::new(secure))),
            refusals: Arc::default(),
            revocations: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// Whether callers are authenticated.
    pub fn is_secure(&self) -> bool {
        matches!(*self.inner, Mode::Secure(_))
    }

    /// The token key, when tokens are in use.
    pub fn token_key(&self) -> Option<&TokenKey> {
        match &*self.inner {
            Mode::Secure(s) => Some(&s.key),
            Mode::Insecure => None,
        }
    }

    /// Now, in milliseconds since the epoch, by the clock tokens expire on.
    pub fn now_ms(&self) -> u64 {
        match &*self.inner {
            Mode::Secure(s) => (s.clock)(),
            Mode::Insecure => lockstep::wire::now_millis(),
        }
    }

    /// Whether a refusal of `principal` now is written to the log ([`refusals`]: at
    /// most [`refusals::PER_MINUTE`] a minute each).
    pub fn admit_refusal(&self, principal: &Principal) -> Verdict {
        let now = self.now_ms();
        // Every critical section is one map update.
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        refusals.admit(&principal.actor, now)
    }

    /// Marks a token revoked for every later call, and for the open streams of the
    /// callers acting through it (see [`Access::revocations`]).
    pub fn revoke(&self, id: &str) {
        if let Mode::Secure(s) = &*self.inner {
            s.revoked
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.to_string());
            self.revocations.send_modify(|n| *n += 1);
        }
    }

    /// Hears every revocation once it has taken effect: an open stream asks
    /// [`Access::revoked_in`] again then, even when no event comes.
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    /// The revoked token among those `actor` acts through (its own, or one that made
    /// it), if any.
    pub fn revoked_in(&self, actor: &str) -> Option<String> {
        let Mode::Secure(s) = &*self.inner else {
            return None;
        };
        let revoked = s.revoked.read().unwrap_or_else(|p| p.into_inner());
        tokens_in(actor)
            .find(|t| revoked.contains(*t))
            .map(str::to_string)
    }

    /// When the token `request` carries expires (ms since the epoch by
    /// [`Access::now_ms`]'s clock), if it carries one: a stream opened with it ends then.
    pub fn token_expiry<T>(&self, request: &Request<T>) -> Option<u64> {
        let Mode::Secure(secure) = &*self.inner else {
            return None;
        };
        let token = Credentials::of(request, &secure.tls).ok()?.token?;
        let claims = secure.key.verify(&token, 0).ok()?;
        Some(claims.exp.saturating_mul(1000))
    }

    /// Who makes `request`, or UNAUTHENTICATED with the reason.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let secure = match &*self.inner {
            Mode::Insecure => return Ok(anyone()),
            Mode::Secure(s) => s,
        };
        let credentials = Credentials::of(request, &secure.tls)?;
        match (&credentials.token, &credentials.certificate) {
            (Some(token), _) => secure.token_principal(token),
            (None, Some(identity)) => Ok(secure.certificate_principal(identity)),
            (None, None) => Err(Credentials::none_given()),
        }
    }
}

/// The ids of the tokens an actor acted through, oldest first: `alice (token t1) (token
/// t2)` is alice through t1, which made t2. Revoking any of them revokes what it made.
pub fn tokens_in(actor: &str) -> impl Iterator<Item = &str> {
    actor
        .split(" (token ")
        .skip(1)
        .filter_map(|part| part.split(')').next())
}

fn anyone() -> Principal {
    Principal {
        actor: String::new(),
        standing: Standing::Unchecked,
    }
}

impl Secure {
    fn token_principal(&self, token: &str) -> Result<Principal, Status> {
        let now_s = (self.clock)() / 1000;
        let claims: Claims = self
            .key
            .verify(token, now_s)
            .map_err(Status::unauthenticated)?;
        let revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        if revoked.contains(&claims.jti) {
            return Err(Status::unauthenticated(format!(
                "token {} was revoked",
                claims.jti
            )));
        }
        if let Some(maker) = tokens_in(&claims.sub).find(|t| revoked.contains(*t)) {
            return Err(Status::unauthenticated(format!(
                "token {} was made by token {maker}, which was revoked",
                claims.jti
            )));
        }
        Ok(Principal {
            actor: format!("{} (token {})", claims.sub, claims.jti),
            standing: Standing::Granted(vec![claims.grant]),
        })
    }

    fn certificate_principal(&self, identity: &Identity) -> Principal {
        let actor = identity.to_string();
        let standing = match identity {
            Identity::Coordinator => Standing::Nothing,
            Identity::Agent {
                environment,
                project,
            } => Standing::Agent {
                environment: environment.clone(),
                project: project.clone(),
            },
            Identity::User { name } if self.admins.contains(name) => {
                Standing::Granted(vec![Grant::everywhere(Role::Admin)])
            }
            Identity::User { name } => Standing::Granted(
                self.grants
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| vec![Grant::everywhere(Role::Viewer)]),
            ),
        };
        Principal { actor, standing }
    }
}

impl tonic::service::Interceptor for Access {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = self.authenticate(&request)?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// Parses a `--grant` value: `NAME=ROLE[@ENV,...][/PROJECT,...]`.
pub fn parse_grant(text: &str) -> Result<(String, Grant), String> {
    let (name, rest) = text
        .split_once('=')
        .ok_or_else(|| format!("--grant {text:?}: expected NAME=ROLE[@ENV,..][/PROJECT,..]"))?;
    let (rest, projects) = match rest.split_once('/') {
        Some((r, p)) => (r, list(p)),
        None => (rest, Vec::new()),
    };
    let (role, environments) = match rest.split_once('@') {
        Some((r, e)) => (r, list(e)),
        None => (rest, Vec::new()),
    };
    let role = Role::parse(role).map_err(|e| format!("--grant {text:?}: {e}"))?;
    let grant = Grant {
        role,
        environments,
        projects,
    };
    Ok((name.to_string(), grant))
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod chain_tests {
    #[test]
    fn an_actor_names_every_token_it_acted_through_oldest_first() {
        let ids: Vec<&str> = super::tokens_in("alice (token t1) (token t2)").collect();
        assert_eq!(ids, ["t1", "t2"]);
        assert_eq!(super::tokens_in("bob").count(), 0);
    }
}
