//! Which subscription gets which event. Pure: the filters of one subscription, the
//! routes every subscription together offers, and the event.
//!
//! Failures (see [`kinds::is_failure`]) go to one place, the one most likely to reach
//! the person who can act: the ticket sinks when the transaction carries a release
//! ticket; otherwise the subscriptions of the project that failed (the repository where
//! the issue appeared); otherwise the environment's. Catch-all subscriptions (no
//! environment, project or ticket scope) see every event their kinds allow.

use std::collections::BTreeSet;

use lockstep::pb;

use super::{kinds, subscription::SubscriptionRecord};

/// What every subscription together offers failures: is there a ticket sink, and
/// which (environment, project) pairs have a project subscription. An environment of
/// `None` stands for a project subscription of every environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    ticket_sinks: bool,
    projects: BTreeSet<(Option<String>, String)>,
}

impl Routes {
    /// The routes of the subscriptions that are on.
    pub fn of<'a>(subscriptions: impl IntoIterator<Item = &'a SubscriptionRecord>) -> Self {
        let mut routes = Self::default();
        for s in subscriptions.into_iter().filter(|s| s.disabled.is_empty()) {
            routes.ticket_sinks |= s.ticket_sink;
            if let Some(p) = &s.project {
                let env = s.environment.as_ref().map(|e| e.to_string());
                routes.projects.insert((env, p.to_string()));
            }
        }
        routes
    }

    fn has_project(&self, env: &str, project: &str) -> bool {
        let any = (None, project.to_string());
        let here = (Some(env.to_string()), project.to_string());
        self.projects.contains(&any) || self.projects.contains(&here)
    }

    /// Where failure `e` goes.
    pub fn target(&self, e: &pb::Event) -> Target {
        if !e.ticket.is_empty() && self.ticket_sinks {
            Target::Tickets
        } else if !e.project.is_empty() && self.has_project(&e.environment, &e.project) {
            Target::Project(e.project.clone())
        } else {
            Target::Environment(e.environment.clone())
        }
    }
}

/// The one destination of a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The ticket sinks.
    Tickets,
    /// The subscriptions of this project.
    Project(String),
    /// The subscriptions of this environment that name no project.
    Environment(String),
}

/// Whether subscription `s` gets event `e`; `involves(p)` says whether `e`'s
/// transaction includes project `p` (for events of no transaction: whether `e` is
/// about `p`).
pub fn wants(
    s: &SubscriptionRecord,
    e: &pb::Event,
    routes: &Routes,
    involves: impl Fn(&str) -> bool,
) -> bool {
    let kind_ok = s.events.is_empty() || s.events.contains(&e.kind);
    let env_ok = s
        .environment
        .as_ref()
        .is_none_or(|env| env.as_str() == e.environment);
    if !kind_ok || !env_ok {
        return false;
    }
    if !s.is_scoped() {
        return true;
    }
    let project_ok = || s.project.as_ref().is_none_or(|p| involves(p.as_str()));
    if s.ticket_sink {
        return !e.ticket.is_empty() && project_ok();
    }
    if !kinds::is_failure(e) {
        return project_ok();
    }
    match routes.target(e) {
        Target::Tickets => false,
        Target::Project(p) => s.project.as_ref().is_some_and(|mine| mine.as_str() == p),
        Target::Environment(env) => {
            s.project.is_none() && s.environment.is_some() && env == e.environment
        }
    }
}

#[cfg(test)]
mod tests {
    use lockstep::names::{Environment, ProjectName};

    use super::*;
    use crate::notify::subscription::Mode;

    fn sub(
        name: &str,
        env: Option<&str>,
        project: Option<&str>,
        ticket_sink: bool,
    ) -> SubscriptionRecord {
        SubscriptionRecord {
            name: name.into(),
            url: "http://127.0.0.1:9/".into(),
            events: BTreeSet::new(),
            environment: env.map(|e| Environment::parse("e", e).unwrap()),
            project: project.map(|p| ProjectName::parse("p", p).unwrap()),
            mode: Mode::Structured,
            secret: String::new(),
            ticket_sink,
            cursor: 0,
            disabled: String::new(),
            created_by: String::new(),
        }
    }

    fn aborted(project: &str, ticket: &str) -> pb::Event {
        pb::Event {
            kind: pb::EventKind::TransactionAborted as i32,
            transaction_id: "T4".into(),
            environment: "default".into(),
            project: project.into(),
            ticket: ticket.into(),
            ..Default::default()
        }
    }

    /// Which of `subs` get `e` (every transaction includes A, B and C).
    fn receivers(subs: &[SubscriptionRecord], e: &pb::Event) -> Vec<String> {
        let routes = Routes::of(subs);
        let involves = |p: &str| ["A", "B", "C"].contains(&p);
        let got = subs.iter().filter(|s| wants(s, e, &routes, involves));
        got.map(|s| s.name.clone()).collect()
    }

    #[test]
    fn a_failure_goes_to_the_ticket_else_the_project_else_the_environment() {
        let subs = [
            sub("tickets", None, None, true),
            sub("repo-a", None, Some("A"), false),
            sub("env", Some("default"), None, false),
            sub("all", None, None, false),
        ];
        let with_ticket = aborted("B", "https://tracker/REL-1");
        assert_eq!(receivers(&subs, &with_ticket), ["tickets", "all"]);
        assert_eq!(receivers(&subs, &aborted("A", "")), ["repo-a", "all"]);
        assert_eq!(receivers(&subs, &aborted("C", "")), ["env", "all"]);
        // No ticket sink: a ticket's failure takes the project's or environment's route.
        assert_eq!(
            receivers(&subs[1..], &aborted("A", "https://t/1")),
            ["repo-a", "all"]
        );
    }

    #[test]
    fn other_events_follow_the_filters() {
        let subs = [
            sub("tickets", None, None, true),
            sub("repo-a", None, Some("A"), false),
            sub("repo-d", None, Some("D"), false),
            sub("env", Some("default"), None, false),
            sub("prod", Some("production"), None, false),
        ];
        let committed = pb::Event {
            kind: pb::EventKind::TransactionCommitted as i32,
            environment: "default".into(),
            ..Default::default()
        };
        assert_eq!(receivers(&subs, &committed), ["repo-a", "env"]);
        let mut only_aborts = sub("aborts", None, None, false);
        only_aborts
            .events
            .insert(pb::EventKind::TransactionAborted as i32);
        assert!(receivers(std::slice::from_ref(&only_aborts), &committed).is_empty());
    }
}
