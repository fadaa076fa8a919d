//! Who may do what: four built-in roles, each including the ones below it, granted for
//! some environments and projects (a small table, no policy engine, so that a person can
//! read a grant and know what it allows). Pure: no I/O, no clock.

use std::{collections::BTreeSet, fmt};

use lockstep::names::{Environment, ProjectName};
use serde::{Deserialize, Serialize};

/// A role. Each includes every permission of the roles before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and watches.
    Viewer,
    /// Creates releases, reverts and rollbacks.
    Releaser,
    /// Forces, allows quarantined versions, aborts, resolves, retries, registers and
    /// moves projects, reads the audit log.
    Operator,
    /// Creates and revokes tokens.
    Admin,
}

impl Role {
    /// Parses a role's name; `Err` lists the names.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "viewer" => Ok(Self::Viewer),
            "releaser" => Ok(Self::Releaser),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "{other:?} is no role (viewer, releaser, operator, admin)"
            )),
        }
    }

    /// Its name, as `parse` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Releaser => "releaser",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// The person behind an actor, whatever credential it showed: `user/alice` (a
/// certificate) and `alice (token tok-…)` (a token whose subject is alice) are both
/// alice, so the four-eyes rule and token subjects compare people, not credentials.
pub fn person(actor: &str) -> &str {
    let name = actor.split(" (token ").next().unwrap_or(actor);
    name.strip_prefix("user/").unwrap_or(name)
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read state, history and events.
    Read,
    /// Create a release, revert or rollback.
    Release,
    /// Steer: force, quarantine overrides, abort, resolve, retry, (re)register projects,
    /// read the audit log.
    Operate,
    /// Manage tokens.
    Administer,
}

impl Permission {
    /// The least role that has it.
    pub fn role(self) -> Role {
        match self {
            Self::Read => Role::Viewer,
            Self::Release => Role::Releaser,
            Self::Operate => Role::Operator,
            Self::Administer => Role::Admin,
        }
    }

    /// Its name in refusals and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Release => "release",
            Self::Operate => "operate",
            Self::Administer => "administer",
        }
    }
}

/// Where a call acts: an environment (none: every one, e.g. listing all releases) and
/// the projects it touches (none: no particular project). A scope is either *some*
/// projects (those named, or none in particular: reads of an environment, the entry
/// check of a release whose plan's projects are checked next), or the *whole* of an
/// environment or of everything (its verify steps, its webhooks, tokens): a whole
/// scope needs a grant over every project there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The environment.
    pub environment: Option<Environment>,
    /// The projects.
    pub projects: BTreeSet<ProjectName>,
    /// The call acts on every project of the environment (or of every environment).
    pub whole: bool,
}

impl Scope {
    /// The whole of `env` (`None`: of every environment): every project there, those
    /// registered later included.
    pub fn whole(env: Option<&Environment>) -> Self {
        Self {
            environment: env.cloned(),
            projects: BTreeSet::new(),
            whole: true,
        }
    }

    /// One environment, no project in particular (a read, or the entry check of a
    /// call whose projects are checked once known).
    pub fn environment(env: &Environment) -> Self {
        Self {
            environment: Some(env.clone()),
            ..Self::default()
        }
    }

    /// Some projects of one environment.
    pub fn projects(env: &Environment, projects: impl IntoIterator<Item = ProjectName>) -> Self {
        Self {
            environment: Some(env.clone()),
            projects: projects.into_iter().collect(),
            whole: false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.environment {
            Some(env) => write!(f, "environment {env}")?,
            None => f.write_str("every environment")?,
        }
        if !self.projects.is_empty() {
            let names: Vec<&str> = self.projects.iter().map(|p| p.as_str()).collect();
            write!(f, ", projects {}", names.join(","))?;
        }
        if self.whole {
            f.write_str(", every project")?;
        }
        Ok(())
    }
}

/// A role for some environments and projects (empty: all of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The role.
    pub role: Role,
    /// The environments it holds in; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
    /// The projects it holds for; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
}

impl Grant {
    /// A role everywhere.
    pub fn everywhere(role: Role) -> Self {
        Self {
            role,
            environments: Vec::new(),
            projects: Vec::new(),
        }
    }

    /// Whether it allows `permission` over `scope`: the role is high enough, the
    /// environment is one of its own, and so is every project. A call over every
    /// environment needs a grant over every environment, and a call over the whole of
    /// one (or of all) a grant over every project.
    pub fn allows(&self, permission: Permission, scope: &Scope) -> bool {
        let env_ok = match &scope.environment {
            Some(env) => {
                self.environments.is_empty() || self.environments.iter().any(|e| e == env.as_str())
            }
            None => self.environments.is_empty(),
        };
        let projects_ok = self.projects.is_empty()
            || (!scope.whole
                && scope
                    .projects
                    .iter()
                    .all(|p| self.projects.iter().any(|g| g == p.as_str())));
        self.role >= permission.role() && env_ok && projects_ok
    }

    /// Whether `other` is within this grant: no higher role, and no environment or
    /// project this one does not cover. A grant a principal makes (a token) must be
    /// within one of its own: grants never widen.
    pub fn contains(&self, other: &Grant) -> bool {
        let within = |mine: &[String], theirs: &[String]| {
            mine.is_empty() || (!theirs.is_empty() && theirs.iter().all(|t| mine.contains(t)))
        };
        self.role >= other.role
            && within(&self.environments, &other.environments)
            && within(&self.projects, &other.projects)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.role.name())?;
        let list = |v: &[String]| {
            if v.is_empty() {
                "*".to_string()
            } else {
                v.join(",")
            }
        };
        write!(
            f,
            " for environments {} and projects {}",
            list(&self.environments),
            list(&self.projects)
        )
    }
}

/// What a transaction's creator was allowed when it created it, recorded with the
/// transaction so that what follows from it automatically (a promotion downstream)
/// acts with no more than its creator may do, never with the coordinator's own power.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Authority {
    /// Not recorded (a record written before this was): allows only what a record
    /// without a creator was made under, an unauthenticated coordinator.
    #[default]
    Unrecorded,
    /// Callers are not authenticated (`--insecure`): anything.
    Unchecked,
    /// What these grants allow (none: nothing).
    Granted(Vec<Grant>),
}

impl Authority {
    /// Whether the creator `created_by` (empty: unauthenticated) may do `permission`
    /// over `scope` with it.
    pub fn allows(&self, created_by: &str, permission: Permission, scope: &Scope) -> bool {
        match self {
            Self::Unrecorded => created_by.is_empty(),
            Self::Unchecked => true,
            Self::Granted(grants) => grants.iter().any(|g| g.allows(permission, scope)),
        }
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unrecorded => f.write_str("no recorded grant"),
            Self::Unchecked => f.write_str("everything"),
            Self::Granted(grants) if grants.is_empty() => f.write_str("no role"),
            Self::Granted(grants) => {
                let all: Vec<String> = grants.iter().map(Grant::to_string).collect();
                f.write_str(&all.join("; "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env(name: &str) -> Environment {
        Environment::parse("e", name).unwrap()
    }

    fn projects(names: &[&str]) -> Vec<ProjectName> {
        names
            .iter()
            .map(|n| ProjectName::parse("p", n).unwrap())
            .collect()
    }

    fn releaser_for(envs: &[&str], names: &[&str]) -> Grant {
        Grant {
            role: Role::Releaser,
            environments: envs.iter().map(|s| s.to_string()).collect(),
            projects: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_scoped_releaser_releases_its_own_projects_only() {
        let grant = releaser_for(&["staging"], &["A", "B"]);
        let staging = env("staging");
        assert!(grant.allows(
            Permission::Release,
            &Scope::projects(&staging, projects(&["A", "B"]))
        ));
        assert!(!grant.allows(
            Permission::Release,
            &Scope::projects(&staging, projects(&["A", "C"]))
        ));
        assert!(!grant.allows(
            Permission::Release,
            &Scope::projects(&env("prod"), projects(&["A"]))
        ));
        assert!(
            grant.allows(Permission::Read, &Scope::environment(&staging)),
            "a releaser reads"
        );
        assert!(!grant.allows(
            Permission::Operate,
            &Scope::projects(&staging, projects(&["A"]))
        ));
    }

    #[test]
    fn roles_include_the_ones_below_and_nothing_above() {
        let scope = Scope::environment(&env("staging"));
        let allowed = |role| {
            [
                Permission::Read,
                Permission::Release,
                Permission::Operate,
                Permission::Administer,
            ]
            .into_iter()
            .filter(|p| Grant::everywhere(role).allows(*p, &scope))
            .count()
        };
        assert_eq!(allowed(Role::Viewer), 1);
        assert_eq!(allowed(Role::Releaser), 2);
        assert_eq!(allowed(Role::Operator), 3);
        assert_eq!(allowed(Role::Admin), 4);
    }

    #[test]
    fn a_call_over_every_environment_needs_a_grant_over_every_environment() {
        let every = Scope::default();
        assert!(!releaser_for(&["staging"], &[]).allows(Permission::Read, &every));
        assert!(releaser_for(&[], &[]).allows(Permission::Read, &every));
    }

    /// `role` over project A in every environment.
    fn for_a(role: Role) -> Grant {
        Grant {
            role,
            environments: Vec::new(),
            projects: vec!["A".into()],
        }
    }

    /// Issue 26, defect 1: an operator for project A only may not act on the whole of
    /// an environment (its verify steps, its webhooks) nor on everything.
    #[test]
    fn a_whole_scope_needs_a_grant_over_every_project() {
        let a_only = for_a(Role::Operator);
        let staging = env("staging");
        assert!(!a_only.allows(Permission::Operate, &Scope::whole(Some(&staging))));
        assert!(!a_only.allows(Permission::Operate, &Scope::whole(None)));
        assert!(a_only.allows(Permission::Read, &Scope::environment(&staging)));
        let everyone = Grant::everywhere(Role::Operator);
        assert!(everyone.allows(Permission::Operate, &Scope::whole(None)));
    }

    /// Issue 26, defect 4: an automatic promotion acts with what its upstream creator
    /// was allowed; an unrecorded authority allows only an unauthenticated creator.
    #[test]
    fn a_recorded_authority_allows_what_its_grants_allow() {
        let prod = Scope::projects(&env("production"), projects(&["A"]));
        let dev_only = Authority::Granted(vec![releaser_for(&["dev"], &[])]);
        assert!(!dev_only.allows("user/bob", Permission::Release, &prod));
        let dev = Scope::projects(&env("dev"), projects(&["A"]));
        assert!(dev_only.allows("user/bob", Permission::Release, &dev));
        assert!(Authority::Unchecked.allows("", Permission::Release, &prod));
        assert!(Authority::Unrecorded.allows("", Permission::Release, &prod));
        assert!(!Authority::Unrecorded.allows("user/bob", Permission::Release, &prod));
        assert_eq!(
            dev_only.to_string(),
            "releaser for environments dev and projects *"
        );
    }

    /// Issue 26, defect 2: a grant made by a principal stays within its own.
    #[test]
    fn grants_never_widen() {
        let admin_a = for_a(Role::Admin);
        let everywhere = Grant::everywhere(Role::Admin);
        assert!(
            !admin_a.contains(&everywhere),
            "admin for A cannot mint admin for *"
        );
        let releaser_a = releaser_for(&["staging"], &["A"]);
        assert!(admin_a.contains(&releaser_a));
        assert!(!admin_a.contains(&releaser_for(&["staging"], &["A", "B"])));
        assert!(!releaser_a.contains(&Grant {
            role: Role::Operator,
            ..releaser_a.clone()
        }));
        assert!(everywhere.contains(&admin_a));
    }
}
