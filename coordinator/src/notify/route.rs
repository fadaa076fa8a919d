//! Which subscription gets which event. Pure: the filters of one subscription, the
//! routes every subscription together offers, and the event.
//!
//! Failures (see [`kinds::is_failure`]) go to one place, the one most likely to reach
//! the person who can act: the ticket sinks when the transaction carries a release
//! ticket; otherwise the subscriptions of the project that failed (the repository where
//! the issue appeared); otherwise the environment's. Catch-all subscriptions (no
//! environment, project or ticket scope) see every event their kinds allow.

use lockstep::pb;

use super::{kinds, subscription::SubscriptionRecord};

/// The subscriptions that are on, among which a failure finds its one route: a route
/// counts only through a subscription whose own filters take the failure, so a ticket
/// sink of another environment, or a project subscription that does not want this
/// kind, never swallows it.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    on: Vec<SubscriptionRecord>,
}

impl Routes {
    /// The routes of the subscriptions that are on.
    pub fn of<'a>(subscriptions: impl IntoIterator<Item = &'a SubscriptionRecord>) -> Self {
        let on = subscriptions.into_iter().filter(|s| s.disabled.is_empty());
        Self {
            on: on.cloned().collect(),
        }
    }

    /// Where failure `e` goes (`involves` as in [`wants`]).
    pub fn target(&self, e: &pb::Event, involves: &dyn Fn(&str) -> bool) -> Target {
        let sink = |s: &SubscriptionRecord| s.ticket_sink && sink_takes(s, e, involves);
        let repository = |s: &SubscriptionRecord| {
            let project = s.project.as_ref().is_some_and(|p| p.as_str() == e.project);
            !s.ticket_sink && project && filters_take(s, e)
        };
        if !e.ticket.is_empty() && self.on.iter().any(sink) {
            Target::Tickets
        } else if !e.project.is_empty() && self.on.iter().any(repository) {
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
    if !filters_take(s, e) {
        return false;
    }
    if !s.is_scoped() {
        return true;
    }
    // A scoped subscription's maker may not read the audit log (see `is_audit_only`).
    if kinds::is_audit_only(e) {
        return false;
    }
    if s.ticket_sink {
        return sink_takes(s, e, &involves);
    }
    if !kinds::is_failure(e) {
        return project_ok(s, &involves);
    }
    match routes.target(e, &involves) {
        Target::Tickets => false,
        Target::Project(p) => s.project.as_ref().is_some_and(|mine| mine.as_str() == p),
        Target::Environment(env) => {
            s.project.is_none() && s.environment.is_some() && env == e.environment
        }
    }
}

/// Whether `s`'s kind and environment filters take `e`.
fn filters_take(s: &SubscriptionRecord, e: &pb::Event) -> bool {
    let kind_ok = s.events.is_empty() || s.events.contains(&e.kind);
    let env_ok = s
        .environment
        .as_ref()
        .is_none_or(|env| env.as_str() == e.environment);
    kind_ok && env_ok
}

/// Whether `s`'s project filter (if any) is among the projects `e` involves.
fn project_ok(s: &SubscriptionRecord, involves: &dyn Fn(&str) -> bool) -> bool {
    s.project.as_ref().is_none_or(|p| involves(p.as_str()))
}

/// Whether ticket sink `s` takes `e`: a ticketed event its filters take.
fn sink_takes(s: &SubscriptionRecord, e: &pb::Event, involves: &dyn Fn(&str) -> bool) -> bool {
    !e.ticket.is_empty() && filters_take(s, e) && project_ok(s, involves)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

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

    /// Review finding of stop 57: a subscription of one environment (which needs only
    /// `operate` there) got the audit log's own events of that environment (refusals
    /// naming who holds what, tokens made and revoked), which reading needs `operate`
    /// over everything. Only an unscoped subscription, whose maker may read that log,
    /// gets them.
    #[test]
    fn only_an_unscoped_subscription_gets_the_audit_log_s_events() {
        let mut spy = sub("spy", Some("default"), None, false);
        spy.events.insert(pb::EventKind::AccessDenied as i32);
        let subs = [
            spy,
            sub("repo-a", None, Some("A"), false),
            sub("all", None, None, false),
        ];
        for kind in [pb::EventKind::AccessDenied, pb::EventKind::TokenCreated] {
            let e = pb::Event {
                kind: kind as i32,
                environment: "default".into(),
                project: "A".into(),
                ..Default::default()
            };
            assert_eq!(receivers(&subs, &e), ["all"], "{kind:?}");
        }
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

    /// Review finding of stop 53: a route counts only through a subscription that
    /// takes the failure; a ticket sink of another environment or project, or a
    /// project subscription whose kinds leave failures out, swallowed it, and no scoped
    /// subscription got it.
    #[test]
    fn a_failure_takes_only_a_route_that_would_take_it() {
        let mut only_commits = sub("repo-a", None, Some("A"), false);
        let committed = pb::EventKind::TransactionCommitted as i32;
        only_commits.events.insert(committed);
        let subs = [
            sub("prod-tickets", Some("production"), None, true),
            sub("d-tickets", None, Some("D"), true),
            only_commits,
            sub("repo-b", None, Some("B"), false),
            sub("env", Some("default"), None, false),
        ];
        // No sink takes B's ticketed failure (another environment; D not involved).
        assert_eq!(receivers(&subs, &aborted("B", "https://t/1")), ["repo-b"]);
        // A's subscription takes commits only: the environment's gets A's failure.
        assert_eq!(receivers(&subs, &aborted("A", "")), ["env"]);
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
