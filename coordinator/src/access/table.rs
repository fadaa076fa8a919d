//! The permission table: every call of `lockstep.v1.Coordinator` (and every variant
//! whose permission depends on the request, such as `CreateRelease --force`) is one
//! [`Rule`] here, naming the [`Permission`] it needs and the [`ScopeRule`] that turns
//! what the request names (a [`Target`]) into the [`Scope`] checked. Handlers look up
//! their row by name ([`rule`]) and never name a permission themselves, so this table
//! is the one place that says who may do what; grants are checked by one function,
//! [`Grant::allows`](super::roles::Grant::allows); what a [`ScopeRule::Filtered`] read
//! returns is filtered by [`Principal::reads`]. `docs/security.md` prints this table
//! ([`markdown`]), and a test keeps the two equal.

use std::collections::BTreeSet;

use lockstep::names::{Environment, ProjectName};

use super::{
    Principal, Standing,
    roles::{Grant, Permission, Role, Scope},
};

/// How a row turns what a request names into the scope its permission is checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeRule {
    /// A read filtered to the caller's projects: the environment the request names
    /// (none named: any grant holding the permission will do), and the answer holds
    /// only what the caller may read there (`access::reads`): its projects' versions,
    /// the transactions all of whose projects are its own, their events.
    Filtered,
    /// One project of one environment.
    OneProject,
    /// The environment first, then (inside admission) every project the final plan
    /// changes there, so a plan never reaches a project the grant does not cover.
    Plan,
    /// `read` on the source environment, then the target environment and every
    /// project the final plan changes there.
    Promotion,
    /// The environment and every project of the transaction the request names.
    Transaction,
    /// The agent of the part asked about; anyone else needs the permission on the
    /// transaction's environment.
    OwnPart,
    /// The whole of the environment the request names: a grant over every project
    /// there, those registered later included.
    WholeEnvironment,
    /// The whole of the environment the request names, or of everything when it
    /// names none.
    WholeEnvironmentOrEverything,
    /// Everything: a grant over every project of every environment.
    Everything,
    /// The grant asked for must lie within one of the caller's own grants that holds
    /// the permission (grants never widen); a token for another person needs that
    /// permission over everything (its subject is a voice in the four-eyes rule).
    WithinOwnGrant,
}

impl ScopeRule {
    /// The rule in words, as `docs/security.md` prints it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Filtered => {
                "the environment named (none: any), filtered to the caller's projects there"
            }
            Self::OneProject => "one project of one environment",
            Self::Plan => "the environment, then every project the final plan changes",
            Self::Promotion => {
                "`read` on every project it copies from the source; the target, then every project the final plan changes"
            }
            Self::Transaction => "the transaction's environment and projects",
            Self::OwnPart => {
                "an agent: its own part only; others: the part asked about in the environment the request names, else the transaction's projects in its environment"
            }
            Self::WholeEnvironment => "the whole environment (every project there)",
            Self::WholeEnvironmentOrEverything => {
                "the whole environment named, else everything (every project everywhere)"
            }
            Self::Everything => "everything (every project everywhere)",
            Self::WithinOwnGrant => {
                "the new grant within one of the caller's own (for another person: everything)"
            }
        }
    }

    /// The scope checked for `target`.
    pub fn scope(self, target: &Target) -> Scope {
        match self {
            Self::WholeEnvironment | Self::WholeEnvironmentOrEverything => {
                Scope::whole(target.environment.as_ref())
            }
            Self::Everything => Scope::whole(None),
            Self::Filtered => Scope {
                environment: target.environment.clone(),
                ..Scope::default()
            },
            // The parts asked about; with none known, the whole environment.
            Self::OwnPart if target.projects.is_empty() => {
                Scope::whole(target.environment.as_ref())
            }
            _ => Scope {
                environment: target.environment.clone(),
                projects: target.projects.clone(),
                whole: false,
            },
        }
    }
}

/// What a request names, from which its row's [`ScopeRule`] makes the scope: built by
/// the handler from the request (or from the transaction it names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// The environment (none: every one, or none named).
    pub environment: Option<Environment>,
    /// The projects (none: none in particular, e.g. before the plan is known).
    pub projects: BTreeSet<ProjectName>,
    /// Promote: the environment promoted from.
    pub source: Option<Environment>,
    /// CreateToken: the grant asked for.
    pub grant: Option<Grant>,
}

impl Target {
    /// Nothing in particular: every environment, or everything.
    pub fn every() -> Self {
        Self::default()
    }

    /// One environment.
    pub fn environment(env: &Environment) -> Self {
        Self::optional(Some(env))
    }

    /// One environment, or none named.
    pub fn optional(env: Option<&Environment>) -> Self {
        Self {
            environment: env.cloned(),
            ..Self::default()
        }
    }

    /// Some projects of one environment.
    pub fn projects(env: &Environment, projects: impl IntoIterator<Item = ProjectName>) -> Self {
        Self {
            projects: projects.into_iter().collect(),
            ..Self::environment(env)
        }
    }

    /// A promotion from `source` into `target`'s environment and projects.
    pub fn promotion(source: &Environment, target: Target) -> Self {
        Self {
            source: Some(source.clone()),
            ..target
        }
    }

    /// A grant asked for.
    pub fn grant(grant: Grant) -> Self {
        Self {
            grant: Some(grant),
            ..Self::default()
        }
    }
}

/// One row: a call (or a variant of one) and what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The RPC's name, then the variant's flag if any (`CreateRelease --force`).
    pub key: &'static str,
    /// When the variant applies (empty for the plain call).
    pub when: &'static str,
    /// The permission it needs.
    pub permission: Permission,
    /// Where it needs it.
    pub scope: ScopeRule,
}

impl Rule {
    /// The RPC's name (the key without its variant).
    pub fn rpc(&self) -> &'static str {
        self.key.split(' ').next().unwrap_or(self.key)
    }

    /// Whether `principal` may make this call on `target`.
    pub fn admits(&self, principal: &Principal, target: &Target) -> bool {
        match self.scope {
            ScopeRule::OwnPart => self.own_part(principal, target),
            ScopeRule::Filtered if target.environment.is_none() => {
                principal.holds_anywhere(self.permission)
            }
            ScopeRule::WithinOwnGrant => target
                .grant
                .as_ref()
                .is_some_and(|g| principal.may_grant(self.permission.role(), g)),
            _ => self.failing(principal, target).is_none(),
        }
    }

    /// The PERMISSION_DENIED message for `principal` on `target`: names the call, the
    /// permission, the scope and what the principal holds.
    pub fn refusal(&self, principal: &Principal, target: &Target) -> String {
        let call = self.rpc();
        match self.scope {
            ScopeRule::OwnPart => own_part_refusal(self.permission, principal, target),
            ScopeRule::Filtered if target.environment.is_none() => format!(
                "{call} needs permission {} ({} or above) somewhere; {} holds {}",
                self.permission.name(),
                self.permission.role().name(),
                principal.actor,
                principal.holds()
            ),
            ScopeRule::WithinOwnGrant => format!(
                "{} may not make a token for {}: it holds {}, and a token's grant must be within one of its maker's {} grants",
                principal.actor,
                target
                    .grant
                    .as_ref()
                    .map_or("nothing".into(), Grant::to_string),
                principal.holds(),
                self.permission.role().name(),
            ),
            _ => {
                let (permission, scope) = self
                    .failing(principal, target)
                    .unwrap_or((self.permission, self.scope.scope(target)));
                principal.refusal(call, permission, &scope)
            }
        }
    }

    /// Every check the call makes, in order: a promotion reads its source first.
    fn checks(&self, target: &Target) -> Vec<(Permission, Scope)> {
        let main = (self.permission, self.scope.scope(target));
        match (&self.scope, &target.source) {
            (ScopeRule::Promotion, Some(source)) => {
                vec![(Permission::Read, Scope::environment(source)), main]
            }
            _ => vec![main],
        }
    }

    /// The first check `principal` fails, if any.
    fn failing(&self, principal: &Principal, target: &Target) -> Option<(Permission, Scope)> {
        self.checks(target)
            .into_iter()
            .find(|(permission, scope)| !principal.allows(*permission, scope))
    }

    /// An agent hears the decision for its own part only (so a parent's agent cannot
    /// learn COMMIT from its child's part and go live first); anyone else needs the
    /// permission on the transaction's environment.
    fn own_part(&self, principal: &Principal, target: &Target) -> bool {
        match &principal.standing {
            Standing::Agent {
                environment,
                project,
            } => {
                target.environment.as_ref() == Some(environment)
                    && target.projects.len() == 1
                    && target.projects.contains(project)
            }
            _ => principal.allows(self.permission, &self.scope.scope(target)),
        }
    }
}

fn own_part_refusal(permission: Permission, principal: &Principal, target: &Target) -> String {
    let part = match target.projects.iter().next() {
        Some(p) => format!("{p}'s"),
        None => "every".into(),
    };
    let env = target.environment.clone().unwrap_or_default();
    format!(
        "GetDecision for {part} part in environment {env}: an agent may ask for its own part only, anyone else needs permission {}; {} holds {}",
        permission.name(),
        principal.actor,
        principal.holds()
    )
}

const fn row(key: &'static str, permission: Permission, scope: ScopeRule) -> Rule {
    variant(key, "", permission, scope)
}

const fn variant(
    key: &'static str,
    when: &'static str,
    permission: Permission,
    scope: ScopeRule,
) -> Rule {
    Rule {
        key,
        when,
        permission,
        scope,
    }
}

use Permission::{Administer, Operate, Read, Release};
use ScopeRule::{
    Everything, Filtered, OneProject, OwnPart, Plan, Promotion, Transaction, WholeEnvironment,
    WholeEnvironmentOrEverything, WithinOwnGrant,
};

/// Every call of `lockstep.v1.Coordinator` and what it needs, in the proto's order.
pub const TABLE: &[Rule] = &[
    row("RegisterProject", Operate, OneProject),
    row("UpdateProject", Operate, OneProject),
    row("RemoveProject", Operate, OneProject),
    row("ListProjects", Read, Filtered),
    row("CreateRelease", Release, Plan),
    variant(
        "CreateRelease --force",
        "force or allow_quarantined",
        Operate,
        Plan,
    ),
    row("RevertRelease", Release, Plan),
    row("Rollback", Release, Plan),
    variant(
        "Rollback --allow-quarantined",
        "allow_quarantined",
        Operate,
        Plan,
    ),
    row("GetRelease", Read, Transaction),
    row("ListReleases", Read, Filtered),
    row("AbortRelease", Operate, Transaction),
    row("WatchEvents", Read, Transaction),
    variant(
        "WatchEvents --all",
        "no transaction_id: the whole log",
        Read,
        Filtered,
    ),
    row("GetLiveState", Read, Filtered),
    row("GetHistory", Read, Filtered),
    row("GetDecision", Read, OwnPart),
    row("ResolveParticipant", Operate, Transaction),
    row("RetryDelivery", Operate, Transaction),
    row("CreateToken", Administer, WithinOwnGrant),
    row("RevokeToken", Administer, Everything),
    row("ListAudit", Operate, Everything),
    row("AddSubscription", Operate, WholeEnvironmentOrEverything),
    row("ListSubscriptions", Read, Everything),
    row("RemoveSubscription", Operate, Everything),
    row("TestSubscription", Operate, Everything),
    row("AddEnvironment", Operate, WholeEnvironment),
    row("ListEnvironments", Read, Filtered),
    row("GetEnvironment", Read, Filtered),
    row("ApplyPipeline", Operate, Everything),
    row("ReportVerify", Release, Transaction),
    row("Approve", Operate, Transaction),
    row("Reject", Operate, Transaction),
    row("Promote", Release, Promotion),
    variant("Promote --force", "force", Operate, Promotion),
    row("GetCluster", Read, Everything),
];

/// The row named `key`, if there is one (a handler whose key is not here is refused:
/// the table fails closed).
pub fn rule(key: &str) -> Option<&'static Rule> {
    TABLE.iter().find(|r| r.key == key)
}

/// The table as the Markdown `docs/security.md` prints between its markers.
pub fn markdown() -> String {
    let mut out = String::from("| call | permission (least role) | scope |\n|---|---|---|\n");
    for r in TABLE {
        let when = match r.when {
            "" => String::new(),
            w => format!(" ({w})"),
        };
        out.push_str(&format!(
            "| `{}`{when} | {} ({}) | {} |\n",
            r.key,
            r.permission.name(),
            r.permission.role().name(),
            r.scope.describe()
        ));
    }
    out
}

/// The roles, least first.
pub const ROLES: [Role; 4] = [Role::Viewer, Role::Releaser, Role::Operator, Role::Admin];

/// The grant shapes of the summary: (column title, environments, projects) of a grant
/// over environment `E` and project `A`.
const SHAPES: [(&str, &[&str], &[&str]); 4] = [
    ("global", &[], &[]),
    ("environment E", &["E"], &[]),
    ("project A", &[], &["A"]),
    ("E and A", &["E"], &["A"]),
];

/// Who may make each call on environment `E` and project `A` (promoting from `S`): per
/// grant shape the least role that may (a certificate's and a token's grants are
/// such grants), and whether the agent of `E`/`A` may. `docs/security.md` prints it.
pub fn summary_markdown() -> String {
    let titles: Vec<&str> = SHAPES.iter().map(|s| s.0).collect();
    let mut out = format!(
        "| call | {} | agent of E/A |\n|---|{}---|\n",
        titles.join(" | "),
        "---|".repeat(SHAPES.len())
    );
    let agent = example_agent();
    for r in TABLE {
        let target = example_target(r.scope);
        let cells: Vec<&str> = SHAPES
            .iter()
            .map(|(_, envs, projects)| least_role(r, &target, envs, projects))
            .collect();
        let by_agent = if r.admits(&agent, &target) {
            "yes"
        } else {
            "—"
        };
        out.push_str(&format!(
            "| `{}` | {} | {by_agent} |\n",
            r.key,
            cells.join(" | ")
        ));
    }
    out
}

/// The least role a grant over `envs` and `projects` needs for `rule` on `target`.
fn least_role(rule: &Rule, target: &Target, envs: &[&str], projects: &[&str]) -> &'static str {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    let admitted = |role: &&Role| {
        let grant = Grant {
            role: **role,
            environments: strings(envs),
            projects: strings(projects),
        };
        let principal = Principal {
            actor: String::new(),
            standing: Standing::Granted(vec![grant]),
        };
        rule.admits(&principal, target)
    };
    ROLES.iter().find(admitted).map_or("—", |r| r.name())
}

fn example(name: &str) -> Environment {
    Environment::parse("environment", name).expect("a valid environment name")
}

fn example_project() -> ProjectName {
    ProjectName::parse("project", "A").expect("a valid project name")
}

fn example_agent() -> Principal {
    Principal {
        actor: "agent/E/A".into(),
        standing: Standing::Agent {
            environment: example("E"),
            project: example_project(),
        },
    }
}

/// What a call of `rule` names in the summary: environment `E`, project `A` where the
/// rule takes projects, source `S` for a promotion, a viewer grant over E and A for a
/// token.
fn example_target(rule: ScopeRule) -> Target {
    let e = example("E");
    let e_a = Target::projects(&e, [example_project()]);
    match rule {
        OneProject | Plan | Transaction | OwnPart => e_a,
        Promotion => Target::promotion(&example("S"), e_a),
        WithinOwnGrant => Target::grant(Grant {
            role: Role::Viewer,
            environments: vec!["E".into()],
            projects: vec!["A".into()],
        }),
        Filtered | WholeEnvironment | WholeEnvironmentOrEverything => Target::environment(&e),
        Everything => Target::every(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The RPC names the proto declares for `lockstep.v1.Coordinator`.
    fn proto_rpcs() -> Vec<String> {
        let text = include_str!("../../../proto/lockstep/v1/coordinator.proto");
        let service = text
            .split("service Coordinator {")
            .nth(1)
            .and_then(|s| s.split("\n}").next())
            .unwrap();
        service
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .map(|l| l.split('(').next().unwrap().trim().to_string())
            .collect()
    }

    #[test]
    fn every_rpc_of_the_proto_has_a_row_and_every_row_an_rpc() {
        let rpcs = proto_rpcs();
        assert_eq!(rpcs.len(), 32, "{rpcs:?}");
        for rpc in &rpcs {
            assert!(
                rule(rpc).is_some(),
                "{rpc} has no row in the permission table"
            );
        }
        for r in TABLE {
            assert!(rpcs.iter().any(|p| p == r.rpc()), "{} is no rpc", r.key);
        }
    }

    #[test]
    fn keys_are_unique_and_variants_say_when() {
        for (i, r) in TABLE.iter().enumerate() {
            assert!(TABLE[..i].iter().all(|o| o.key != r.key), "{}", r.key);
            assert_eq!(r.key == r.rpc(), r.when.is_empty(), "{}", r.key);
        }
    }

    /// The text of `docs/security.md` between `<!-- NAME -->` and `<!-- /NAME -->`.
    fn in_doc(name: &str) -> &'static str {
        let doc = include_str!("../../../docs/security.md");
        doc.split(&format!("<!-- {name} -->\n"))
            .nth(1)
            .and_then(|s| s.split(&format!("<!-- /{name} -->")).next())
            .unwrap_or_else(|| panic!("docs/security.md has no <!-- {name} --> markers"))
    }

    /// `docs/security.md` prints the table and its summary as the code has them, so the
    /// two cannot drift (`LOCKSTEP_PRINT_TABLE=1` prints what to paste).
    #[test]
    fn the_matrix_in_docs_security_md_is_this_one() {
        if std::env::var_os("LOCKSTEP_PRINT_TABLE").is_some() {
            println!("{}\n{}", markdown(), summary_markdown());
        }
        assert_eq!(
            in_doc("permission-table"),
            markdown(),
            "docs/security.md: permission-table"
        );
        assert_eq!(
            in_doc("permission-summary"),
            summary_markdown(),
            "docs/security.md: permission-summary"
        );
    }

    fn env(name: &str) -> Environment {
        Environment::parse("e", name).unwrap()
    }

    fn granted(grant: Grant) -> Principal {
        Principal {
            actor: "user/bob".into(),
            standing: Standing::Granted(vec![grant]),
        }
    }

    fn operator_for_a() -> Grant {
        Grant {
            role: Role::Operator,
            environments: Vec::new(),
            projects: vec!["A".into()],
        }
    }

    /// Issue 26, defect 1, through the table: an operator for A steers A's
    /// transactions but nothing whole.
    #[test]
    fn a_project_grant_reaches_its_transactions_but_nothing_whole() {
        let bob = granted(operator_for_a());
        let a = ProjectName::parse("p", "A").unwrap();
        let staging = env("staging");
        let tx = Target::projects(&staging, [a]);
        assert!(rule("AbortRelease").unwrap().admits(&bob, &tx));
        for key in ["ApplyPipeline", "AddSubscription", "ListAudit"] {
            let r = rule(key).unwrap();
            assert!(!r.admits(&bob, &Target::every()), "{key}");
        }
        let whole = rule("AddEnvironment").unwrap();
        assert!(!whole.admits(&bob, &Target::environment(&staging)));
    }

    #[test]
    fn a_promotion_needs_read_on_its_source_first() {
        let prod_only = granted(Grant {
            role: Role::Releaser,
            environments: vec!["prod".into()],
            projects: Vec::new(),
        });
        let target = Target::promotion(&env("staging"), Target::environment(&env("prod")));
        let promote = rule("Promote").unwrap();
        assert!(!promote.admits(&prod_only, &target));
        let message = promote.refusal(&prod_only, &target);
        assert!(message.contains("permission read"), "{message}");
        assert!(message.contains("environment staging"), "{message}");
    }

    #[test]
    fn an_agent_hears_its_own_part_only() {
        let staging = env("staging");
        let (a, b) = (
            ProjectName::parse("p", "A").unwrap(),
            ProjectName::parse("p", "B").unwrap(),
        );
        let agent = Principal {
            actor: "agent/staging/A".into(),
            standing: Standing::Agent {
                environment: staging.clone(),
                project: a.clone(),
            },
        };
        let decision = rule("GetDecision").unwrap();
        assert!(decision.admits(&agent, &Target::projects(&staging, [a.clone()])));
        assert!(!decision.admits(&agent, &Target::projects(&staging, [b])));
        assert!(!decision.admits(&agent, &Target::environment(&staging)));
        assert!(
            !rule("GetRelease")
                .unwrap()
                .admits(&agent, &Target::projects(&staging, [a]))
        );
    }
}
