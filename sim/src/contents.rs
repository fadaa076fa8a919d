//! Rules about what the checkpoints hold, judged from the requests and the checkpoints
//! before them rather than taken on the coordinator's word (the other rules hold the
//! participants to the checkpoints, so a coordinator that recorded the wrong state and
//! had every agent agree would pass them):
//! - `checkpoint-contents`: each committed transaction has its own checkpoint in its
//!   environment; each checkpoint is the one before it with its transaction's versions
//!   laid over it, and every participant moved from the version that checkpoint had (no
//!   lost update).
//! - `asked-versions`: a committed release makes live exactly the versions asked for,
//!   and changes nothing it was not asked to.
//! - `revert-target` / `rollback-target`: a revert puts each project a reverted release
//!   changed back to its version before the first of them that changed it; a rollback
//!   puts back every version of the checkpoint it names.
//! - `family`: a transaction that moves a parent moves it with all its children, and on
//!   the participants themselves the parent went live after each child that changed.

use std::collections::BTreeMap;

use lockstep::pb::{self, TransactionState as State};

use crate::checker::{Observation, Violation, member};

/// Versions by project.
type Versions = BTreeMap<String, String>;

/// Checkpoints by (environment, revision).
struct Checkpoints<'a>(BTreeMap<(&'a str, u64), &'a pb::Checkpoint>);

impl<'a> Checkpoints<'a> {
    fn of(o: &'a Observation) -> Self {
        let by = o.checkpoints.iter();
        Self(
            by.map(|c| ((c.environment.as_str(), c.revision), c))
                .collect(),
        )
    }

    fn get(&self, env: &str, revision: u64) -> Option<&'a pb::Checkpoint> {
        self.0.get(&(env, revision)).copied()
    }

    /// The versions of `env`'s checkpoint `revision` (none for revision 0).
    fn versions(&self, env: &str, revision: u64) -> Versions {
        self.get(env, revision).map(versions).unwrap_or_default()
    }
}

fn versions(c: &pb::Checkpoint) -> Versions {
    let pairs = c.versions.iter();
    pairs
        .map(|v| (v.project.clone(), v.version.clone()))
        .collect()
}

/// Whether `p` changes what is live.
fn changes(p: &pb::Participation) -> bool {
    p.from_version != p.to_version
}

/// Checks every rule of this module.
pub fn check(o: &Observation) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut say = |rule: &'static str, detail: String| v.push(Violation { rule, detail });
    let checkpoints = Checkpoints::of(o);
    let txs: BTreeMap<&str, &pb::Transaction> =
        o.transactions.iter().map(|t| (t.id.as_str(), t)).collect();
    let committed = o
        .transactions
        .iter()
        .filter(|t| t.state == State::Committed as i32);
    for t in committed {
        let Some(cp) = checkpoints.get(&t.environment, t.checkpoint) else {
            let why = format!(
                "{} is COMMITTED without a checkpoint {}",
                t.id, t.checkpoint
            );
            say("checkpoint-contents", why);
            continue;
        };
        if cp.transaction_id != t.id {
            let why = format!(
                "checkpoint {} of {} names {}",
                cp.revision, t.id, cp.transaction_id
            );
            say("checkpoint-contents", why);
            continue;
        }
        let before = checkpoints.versions(&t.environment, cp.revision - 1);
        laid_over(t, &before, &versions(cp), &mut say);
        asked(o, t, &mut say);
        revert_target(t, &txs, &checkpoints, &versions(cp), &mut say);
        rollback_target(t, &checkpoints, &versions(cp), &mut say);
        family(o, t, &mut say);
    }
    v
}

/// `after` is `before` with `t`'s versions laid over it, and `t` moved each project
/// from its version in `before`.
fn laid_over(
    t: &pb::Transaction,
    before: &Versions,
    after: &Versions,
    say: &mut impl FnMut(&'static str, String),
) {
    let mut expected = before.clone();
    for p in &t.participants {
        let was = before.get(&p.project).map_or("", String::as_str);
        if p.from_version != was {
            let why = format!(
                "{} moved {} from {:?}, but the checkpoint before had {was:?}",
                t.id, p.project, p.from_version
            );
            say("checkpoint-contents", why);
        }
        expected.insert(p.project.clone(), p.to_version.clone());
    }
    if &expected != after {
        let why = format!(
            "{}'s checkpoint holds {after:?}; the one before with its versions is {expected:?}",
            t.id
        );
        say("checkpoint-contents", why);
    }
}

/// A committed release made live what its request asked, and nothing else.
fn asked(o: &Observation, t: &pb::Transaction, say: &mut impl FnMut(&'static str, String)) {
    let Some(asked) = o.asked.get(&t.id) else {
        return;
    };
    for p in &t.participants {
        let wanted = asked.get(&p.project);
        if wanted.is_some_and(|v| v != &p.to_version) || (wanted.is_none() && changes(p)) {
            let why = format!(
                "{} made {} live for {}; the request asked {wanted:?}",
                t.id, p.to_version, p.project
            );
            say("asked-versions", why);
        }
    }
    for project in asked.keys() {
        if !t.participants.iter().any(|p| &p.project == project) {
            let why = format!("{} was asked to release {project} and left it out", t.id);
            say("asked-versions", why);
        }
    }
}

/// A committed revert put each project its reverted releases changed back to its
/// version before the first of them that changed it.
fn revert_target(
    t: &pb::Transaction,
    txs: &BTreeMap<&str, &pb::Transaction>,
    checkpoints: &Checkpoints<'_>,
    after: &Versions,
    say: &mut impl FnMut(&'static str, String),
) {
    // Project -> (the revision of the first reverted release that changed it, the
    // version before it).
    let mut first: BTreeMap<&str, (u64, Option<String>)> = BTreeMap::new();
    for r in t.reverts.iter().filter_map(|id| txs.get(id.as_str())) {
        let before = checkpoints.versions(&r.environment, r.checkpoint.saturating_sub(1));
        for p in r.participants.iter().filter(|p| changes(p)) {
            let earlier = first
                .get(p.project.as_str())
                .is_some_and(|(at, _)| *at < r.checkpoint);
            if !earlier {
                let was = before.get(&p.project).cloned();
                first.insert(p.project.as_str(), (r.checkpoint, was));
            }
        }
    }
    for (project, (_, was)) in first {
        let Some(was) = was else { continue };
        if after.get(project) != Some(&was) {
            let why = format!(
                "{} left {project} at {:?}; before the reverted releases it was {was}",
                t.id,
                after.get(project)
            );
            say("revert-target", why);
        }
    }
}

/// A committed rollback put back every version of the checkpoint it names.
fn rollback_target(
    t: &pb::Transaction,
    checkpoints: &Checkpoints<'_>,
    after: &Versions,
    say: &mut impl FnMut(&'static str, String),
) {
    if t.kind != pb::TransactionKind::Rollback as i32 {
        return;
    }
    let target = checkpoints.versions(&t.environment, t.rollback_to);
    for (project, version) in &target {
        if after.get(project) != Some(version) {
            let why = format!(
                "{} rolled back to checkpoint {} left {project} at {:?}, not {version}",
                t.id,
                t.rollback_to,
                after.get(project)
            );
            say("rollback-target", why);
        }
    }
}

/// A parent moved by `t` comes with every child, and went live after each child that
/// changed, as the participants' own logs show.
fn family(o: &Observation, t: &pb::Transaction, say: &mut impl FnMut(&'static str, String)) {
    let named = |name: &str| t.participants.iter().find(|p| p.project == name);
    let went_live = |project: &str| {
        let view = o.participants.get(&member(&t.environment, project))?;
        let effects = view.effects.as_ref()?;
        effects.iter().find(|e| e.tx == t.id).map(|e| e.at)
    };
    for parent in t.participants.iter().filter(|p| changes(p)) {
        let children = o.requires.get(&parent.project).into_iter().flatten();
        for child in children {
            if named(child).is_none() {
                let why = format!(
                    "{} moved {} without its child {child}",
                    t.id, parent.project
                );
                say("family", why);
            }
            if let (Some(p), Some(c)) = (went_live(&parent.project), went_live(child))
                && p < c
            {
                let why = format!(
                    "{}: parent {} went live before its child {child}",
                    t.id, parent.project
                );
                say("family", why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{checker::ParticipantView, deployer::Effect};

    fn tx(id: &str, checkpoint: u64, parts: &[(&str, &str, &str)]) -> pb::Transaction {
        let participants = parts.iter().map(|(p, from, to)| pb::Participation {
            project: p.to_string(),
            from_version: from.to_string(),
            to_version: to.to_string(),
            ..Default::default()
        });
        pb::Transaction {
            id: id.into(),
            state: State::Committed as i32,
            checkpoint,
            participants: participants.collect(),
            ..Default::default()
        }
    }

    fn cp(revision: u64, tx: &str, live: &[(&str, &str)]) -> pb::Checkpoint {
        let versions = live.iter().map(|(p, v)| pb::LiveVersion {
            project: p.to_string(),
            version: v.to_string(),
            ..Default::default()
        });
        pb::Checkpoint {
            revision,
            transaction_id: tx.into(),
            versions: versions.collect(),
            ..Default::default()
        }
    }

    /// T1 makes A=1 B=1, T2 makes A=2: right as written.
    fn two_releases() -> Observation {
        Observation {
            transactions: vec![
                tx("T1", 1, &[("A", "", "1"), ("B", "", "1")]),
                tx("T2", 2, &[("A", "1", "2")]),
            ],
            checkpoints: vec![
                cp(1, "T1", &[("A", "1"), ("B", "1")]),
                cp(2, "T2", &[("A", "2"), ("B", "1")]),
            ],
            ..Default::default()
        }
    }

    fn rules(o: &Observation) -> Vec<&'static str> {
        check(o).iter().map(|v| v.rule).collect()
    }

    #[test]
    fn a_right_history_passes() {
        assert_eq!(check(&two_releases()), vec![]);
    }

    #[test]
    fn a_checkpoint_that_drops_or_invents_a_version_is_caught() {
        let mut o = two_releases();
        o.checkpoints[1] = cp(2, "T2", &[("A", "2")]);
        assert_eq!(rules(&o), ["checkpoint-contents"]);
        o.checkpoints[1] = cp(2, "T2", &[("A", "2"), ("B", "9")]);
        assert_eq!(rules(&o), ["checkpoint-contents"]);
    }

    #[test]
    fn a_move_from_a_version_no_longer_live_is_caught() {
        let mut o = two_releases();
        o.transactions[1] = tx("T2", 2, &[("A", "0", "2")]);
        assert_eq!(rules(&o), ["checkpoint-contents"]);
    }

    #[test]
    fn a_release_of_other_versions_than_asked_is_caught() {
        let mut o = two_releases();
        o.asked
            .insert("T2".into(), [("A".to_string(), "3".to_string())].into());
        assert_eq!(rules(&o), ["asked-versions"]);
        o.asked
            .insert("T2".into(), [("A".to_string(), "2".to_string())].into());
        assert_eq!(rules(&o), Vec::<&str>::new());
    }

    #[test]
    fn a_revert_to_anything_but_the_version_before_is_caught() {
        let mut o = two_releases();
        let mut revert = tx("RV", 3, &[("A", "2", "2")]);
        revert.reverts = vec!["T2".into()];
        o.transactions.push(revert.clone());
        o.checkpoints.push(cp(3, "RV", &[("A", "2"), ("B", "1")]));
        assert_eq!(rules(&o), ["revert-target"]);
        // Reverting T1 and T2 (a cascade) goes back to before T1: A had nothing then,
        // so only B's... and A's first change is T1's.
        revert.participants = vec![tx("x", 0, &[("A", "2", "1")]).participants[0].clone()];
        o.transactions[2] = revert;
        o.checkpoints[2] = cp(3, "RV", &[("A", "1"), ("B", "1")]);
        assert_eq!(rules(&o), Vec::<&str>::new());
    }

    #[test]
    fn a_rollback_that_leaves_a_version_of_another_checkpoint_is_caught() {
        let mut o = two_releases();
        let mut rollback = tx("RB", 3, &[("B", "1", "1")]);
        rollback.kind = pb::TransactionKind::Rollback as i32;
        rollback.rollback_to = 1;
        o.transactions.push(rollback);
        o.checkpoints.push(cp(3, "RB", &[("A", "2"), ("B", "1")]));
        assert_eq!(rules(&o), ["rollback-target"]);
    }

    #[test]
    fn a_parent_without_its_child_or_live_before_it_is_caught() {
        let mut o = two_releases();
        o.requires.insert("A".into(), vec!["B".into()]);
        assert_eq!(rules(&o), ["family"], "T2 moved A without B");
        o.transactions[1] = tx("T2", 2, &[("A", "1", "2"), ("B", "1", "2")]);
        o.checkpoints[1] = cp(2, "T2", &[("A", "2"), ("B", "2")]);
        let effect = |to: &str, at| Effect {
            tx: "T2".into(),
            from: Some("1".into()),
            to: to.into(),
            at,
            unstaged: false,
        };
        let view = |e: Effect| ParticipantView {
            effects: Some(vec![e]),
            ..Default::default()
        };
        o.participants.insert("A".into(), view(effect("2", 1)));
        o.participants.insert("B".into(), view(effect("2", 2)));
        assert_eq!(rules(&o), ["family"], "A went live first");
        o.participants.insert("B".into(), view(effect("2", 0)));
        assert_eq!(rules(&o), Vec::<&str>::new());
    }
}
