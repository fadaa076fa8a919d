//! Per-project ordering: two transactions that share a project (in one environment)
//! never run at once. A transaction holds its projects from the moment it starts
//! preparing until its last acknowledgement; a later one that needs any of them waits.
//!
//! The queue is strictly first-come-first-served per project: a waiting transaction
//! also blocks later ones that want the same projects, so a long stream of small
//! releases cannot starve a big one. It lives in memory only: after a restart, every
//! undecided transaction is aborted (presumed abort) and decided ones re-take their
//! projects in creation order.

use std::collections::{BTreeMap, BTreeSet};

use lockstep::names::{Environment, ProjectName, TxId};

type Key = (Environment, ProjectName);

/// Who holds which project, and who waits, in creation order.
#[derive(Debug, Default)]
pub struct Queue {
    holders: BTreeMap<Key, TxId>,
    waiting: BTreeMap<u64, (TxId, BTreeSet<Key>)>,
}

/// Why a transaction cannot start yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The transaction in the way.
    pub by: TxId,
    /// The project it holds or waits for.
    pub project: ProjectName,
    /// True when `by` holds the project; false when it waits for it too, earlier.
    pub holds: bool,
}

impl Blocked {
    /// `waiting for T7, which holds project B`.
    pub fn explain(&self) -> String {
        if self.holds {
            format!(
                "waiting for {}, which holds project {}",
                self.by, self.project
            )
        } else {
            format!(
                "queued behind {}, which also waits for project {}",
                self.by, self.project
            )
        }
    }
}

impl Queue {
    /// Adds a transaction. Returns `None` when it may start now (it then holds its
    /// projects), or what blocks it.
    pub fn enqueue(
        &mut self,
        ordinal: u64,
        tx: TxId,
        env: &Environment,
        projects: impl IntoIterator<Item = ProjectName>,
    ) -> Option<Blocked> {
        let keys: BTreeSet<Key> = projects.into_iter().map(|p| (env.clone(), p)).collect();
        let blocked = self.blocker(ordinal, &keys);
        if blocked.is_none() {
            self.take(&tx, &keys);
        } else {
            self.waiting.insert(ordinal, (tx, keys));
        }
        blocked
    }

    /// Makes `tx` hold its projects again (recovery of transactions that sent Prepare,
    /// which held them before the restart). A hold is never overwritten: a project
    /// already held stays with its holder.
    pub fn hold(
        &mut self,
        tx: &TxId,
        env: &Environment,
        projects: impl IntoIterator<Item = ProjectName>,
    ) {
        for project in projects {
            let key = (env.clone(), project);
            self.holders.entry(key).or_insert_with(|| tx.clone());
        }
    }

    /// Releases what `tx` holds (or drops it from the waiting line) and returns the
    /// transactions that may start now, in creation order; they hold their projects.
    pub fn finish(&mut self, tx: &TxId) -> Vec<TxId> {
        self.holders.retain(|_, holder| holder != tx);
        self.waiting.retain(|_, (waiting, _)| waiting != tx);
        let mut started = Vec::new();
        let ordinals: Vec<u64> = self.waiting.keys().copied().collect();
        for ordinal in ordinals {
            let Some((id, keys)) = self.waiting.get(&ordinal).cloned() else {
                continue;
            };
            if self.blocker(ordinal, &keys).is_none() {
                self.waiting.remove(&ordinal);
                self.take(&id, &keys);
                started.push(id);
            }
        }
        started
    }

    /// What blocks a waiting transaction now (for explanations).
    pub fn blocked(&self, ordinal: u64) -> Option<Blocked> {
        let (_, keys) = self.waiting.get(&ordinal)?;
        self.blocker(ordinal, keys)
    }

    /// Every waiting transaction, in creation order, with what blocks it now.
    pub fn waiting(&self) -> Vec<(u64, TxId, Option<Blocked>)> {
        self.waiting
            .iter()
            .map(|(ordinal, (id, keys))| (*ordinal, id.clone(), self.blocker(*ordinal, keys)))
            .collect()
    }

    /// Transactions holding any of `projects` now.
    pub fn holders_of(&self, env: &Environment, projects: &BTreeSet<ProjectName>) -> Vec<TxId> {
        let mut out: Vec<TxId> = projects
            .iter()
            .filter_map(|p| self.holders.get(&(env.clone(), p.clone())).cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Who a transaction wanting `projects` waits for: every holder of one of them,
    /// and (first come, first served) every transaction waiting since before
    /// `ordinal` (`None`: a new one, after every waiting) that wants one of them.
    pub fn waits_for(
        &self,
        env: &Environment,
        projects: &BTreeSet<ProjectName>,
        ordinal: Option<u64>,
    ) -> Vec<TxId> {
        let mut out = self.holders_of(env, projects);
        let earlier = self.waiting.range(..ordinal.unwrap_or(u64::MAX));
        let wants =
            |keys: &BTreeSet<Key>| keys.iter().any(|(e, p)| e == env && projects.contains(p));
        out.extend(
            earlier
                .filter(|(_, (_, keys))| wants(keys))
                .map(|(_, (id, _))| id.clone()),
        );
        out.sort();
        out.dedup();
        out
    }

    /// The keys waiting transaction `ordinal` wants (`None`: it does not wait).
    pub fn wanted_by(&self, ordinal: u64) -> Option<BTreeSet<ProjectName>> {
        let (_, keys) = self.waiting.get(&ordinal)?;
        Some(keys.iter().map(|(_, p)| p.clone()).collect())
    }

    /// The projects `tx` holds now.
    pub fn held_by(&self, tx: &TxId) -> BTreeSet<ProjectName> {
        let held = self.holders.iter().filter(|(_, holder)| *holder == tx);
        held.map(|((_, project), _)| project.clone()).collect()
    }

    fn take(&mut self, tx: &TxId, keys: &BTreeSet<Key>) {
        for key in keys {
            self.holders.insert(key.clone(), tx.clone());
        }
    }

    fn blocker(&self, ordinal: u64, keys: &BTreeSet<Key>) -> Option<Blocked> {
        for key in keys {
            if let Some(holder) = self.holders.get(key) {
                return Some(Blocked {
                    by: holder.clone(),
                    project: key.1.clone(),
                    holds: true,
                });
            }
        }
        for (earlier, (id, wanted)) in self.waiting.range(..ordinal) {
            let _ = earlier;
            if let Some(key) = keys.iter().find(|k| wanted.contains(*k)) {
                return Some(Blocked {
                    by: id.clone(),
                    project: key.1.clone(),
                    holds: false,
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TxId {
        TxId::parse("id", s).unwrap()
    }
    fn ps(names: &[&str]) -> Vec<ProjectName> {
        names
            .iter()
            .map(|n| ProjectName::parse("p", n).unwrap())
            .collect()
    }

    #[test]
    fn a_release_sharing_a_project_waits_and_says_for_whom() {
        let env = Environment::default();
        let mut q = Queue::default();
        assert_eq!(q.enqueue(1, id("T4"), &env, ps(&["A", "B", "C"])), None);
        let blocked = q.enqueue(2, id("T5"), &env, ps(&["B"])).expect("must wait");
        assert_eq!(blocked.explain(), "waiting for T4, which holds project B");
        assert_eq!(
            q.enqueue(3, id("T6"), &env, ps(&["D"])),
            None,
            "disjoint runs at once"
        );
        assert_eq!(q.finish(&id("T4")), vec![id("T5")]);
    }

    #[test]
    fn first_come_first_served_per_project() {
        let env = Environment::default();
        let mut q = Queue::default();
        q.enqueue(1, id("T1"), &env, ps(&["A"]));
        q.enqueue(2, id("T2"), &env, ps(&["A", "B"]));
        let b = q
            .enqueue(3, id("T3"), &env, ps(&["B"]))
            .expect("T2 came first for B");
        assert_eq!(b.by, id("T2"));
        assert!(!b.holds);
        assert_eq!(q.finish(&id("T1")), vec![id("T2")]);
        assert_eq!(q.finish(&id("T2")), vec![id("T3")]);
    }

    #[test]
    fn a_hold_is_never_overwritten() {
        let env = Environment::default();
        let mut q = Queue::default();
        q.hold(&id("T1"), &env, ps(&["X"]));
        q.hold(&id("T2"), &env, ps(&["X", "Y"]));
        assert_eq!(q.finish(&id("T2")), Vec::<TxId>::new());
        let blocked = q
            .enqueue(3, id("T3"), &env, ps(&["X"]))
            .expect("T1 holds X");
        assert_eq!(blocked.by, id("T1"));
    }

    #[test]
    fn environments_do_not_block_each_other() {
        let mut q = Queue::default();
        q.enqueue(1, id("T1"), &Environment::default(), ps(&["A"]));
        let prod = Environment::parse("e", "production").unwrap();
        assert_eq!(q.enqueue(2, id("T2"), &prod, ps(&["A"])), None);
    }
}
