//! What a reader sees: a read of an environment (its releases, live versions, history,
//! projects, events) returns only what the caller may read there, so a viewer granted
//! project A reads A's data and nothing of B's, the way `GetRelease` already refuses it
//! B's transactions. The one question every read handler asks is [`Principal::reads`]
//! ("may it read project P in environment E"); the others here are built on it or on
//! the same [`Grant::allows`](super::roles::Grant::allows).
//!
//! A transaction is shown only when every one of its projects may be read
//! ([`Principal::reads_all`]): a transaction of A and B carries B's version, plan and
//! votes, and `GetRelease` refuses it to a reader of A alone, so a listing showing it
//! would leak what the direct read refuses. What names no project (an environment's
//! own events, a webhook's) is shown to readers of the whole environment (or of
//! everything) only ([`Principal::reads_whole`]).

use lockstep::names::{Environment, ProjectName};

use super::{
    Principal, Standing,
    roles::{Grant, Permission, Scope},
};

impl Principal {
    /// Whether it may read project `project` in environment `env`: the one question
    /// behind every filtered read.
    pub fn reads(&self, env: &Environment, project: &ProjectName) -> bool {
        self.allows(Permission::Read, &Scope::projects(env, [project.clone()]))
    }

    /// Whether it may read every one of `projects` in `env` (a transaction's), and,
    /// when there are none, the whole of `env`.
    pub fn reads_all<'a>(
        &self,
        env: &Environment,
        projects: impl IntoIterator<Item = &'a ProjectName>,
    ) -> bool {
        let mut projects = projects.into_iter().peekable();
        match projects.peek() {
            None => self.reads_whole(Some(env)),
            Some(_) => projects.all(|p| self.reads(env, p)),
        }
    }

    /// Whether it may read the whole of `env` (`None`: of every environment), projects
    /// registered later included: then nothing there needs filtering.
    pub fn reads_whole(&self, env: Option<&Environment>) -> bool {
        self.allows(Permission::Read, &Scope::whole(env))
    }

    /// Whether it may read anything in `env` (some project of it, or all): the entry
    /// check of a read of one environment, and which environments a listing shows.
    pub fn reads_in(&self, env: &Environment) -> bool {
        self.allows(Permission::Read, &Scope::environment(env))
    }

    /// The grants through which it may read (`None`: it may read everything, unchecked),
    /// so that a listing can look only where they reach.
    pub fn read_grants(&self) -> Option<Vec<&Grant>> {
        match &self.standing {
            Standing::Unchecked => None,
            Standing::Granted(grants) => {
                let reading = grants.iter().filter(|g| g.role >= Permission::Read.role());
                Some(reading.collect())
            }
            Standing::Agent { .. } | Standing::Nothing => Some(Vec::new()),
        }
    }

    /// Whether it holds `permission` anywhere at all: the entry check of a filtered
    /// read over every environment (what it returns is then filtered by
    /// [`Principal::reads`]).
    pub fn holds_anywhere(&self, permission: Permission) -> bool {
        match &self.standing {
            Standing::Unchecked => true,
            Standing::Granted(grants) => grants.iter().any(|g| g.role >= permission.role()),
            Standing::Agent { .. } | Standing::Nothing => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::access::roles::{Grant, Role};

    fn env(name: &str) -> Environment {
        Environment::parse("e", name).unwrap()
    }

    fn project(name: &str) -> ProjectName {
        ProjectName::parse("p", name).unwrap()
    }

    fn viewer(environments: &[&str], projects: &[&str]) -> Principal {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        let grant = Grant {
            role: Role::Viewer,
            environments: strings(environments),
            projects: strings(projects),
        };
        Principal {
            actor: "user/bob".into(),
            standing: Standing::Granted(vec![grant]),
        }
    }

    /// Issue 26: a viewer of A reads A everywhere, B nowhere, and a transaction of A
    /// and B not at all; a viewer of the environment reads all of it.
    #[test]
    fn a_project_reader_reads_its_project_and_transactions_wholly_its_own() {
        let (staging, a, b) = (env("staging"), project("A"), project("B"));
        let bob = viewer(&[], &["A"]);
        assert!(bob.reads(&staging, &a));
        assert!(!bob.reads(&staging, &b));
        assert!(bob.reads_all(&staging, [&a]));
        assert!(!bob.reads_all(&staging, [&a, &b]));
        assert!(!bob.reads_whole(Some(&staging)));
        assert!(
            !bob.reads_all(&staging, []),
            "no project: the whole environment"
        );
        assert!(bob.reads_in(&staging) && bob.holds_anywhere(Permission::Read));
        let alice = viewer(&["staging"], &[]);
        assert!(alice.reads_all(&staging, [&a, &b]) && alice.reads_whole(Some(&staging)));
        assert!(!alice.reads(&env("prod"), &a) && !alice.reads_in(&env("prod")));
        assert!(!alice.reads_whole(None));
    }

    /// A filtered read naming no environment admits any grant (the answer is
    /// filtered); one naming an environment, a grant there; an agent, never.
    #[test]
    fn a_filtered_read_admits_any_reader_and_no_agent() {
        use crate::access::table::{Target, rule};
        let list = rule("ListReleases").unwrap();
        let prod_a = viewer(&["prod"], &["A"]);
        assert!(list.admits(&prod_a, &Target::every()));
        assert!(!list.admits(&prod_a, &Target::environment(&env("staging"))));
        let agent = Principal {
            actor: "agent/prod/A".into(),
            standing: Standing::Agent {
                environment: env("prod"),
                project: project("A"),
            },
        };
        assert!(!list.admits(&agent, &Target::every()));
        let message = list.refusal(&agent, &Target::every());
        assert!(message.contains("somewhere"), "{message}");
    }

    #[test]
    fn unauthenticated_callers_read_everything_and_agents_nothing() {
        let anyone = Principal {
            actor: String::new(),
            standing: Standing::Unchecked,
        };
        assert!(anyone.reads_whole(None));
        let agent = Principal {
            actor: "agent/staging/A".into(),
            standing: Standing::Agent {
                environment: env("staging"),
                project: project("A"),
            },
        };
        assert!(!agent.reads(&env("staging"), &project("A")));
        assert!(!agent.holds_anywhere(Permission::Read));
    }
}
