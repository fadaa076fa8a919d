//! Per-project ordering: two transactions that share a project (in one environment)
//! never run at once. A transaction holds its projects from the moment it starts
//! preparing until its last acknowledgement; a later one that needs any of them waits.
//!
//! The queue is strictly first-come-first-served per project: a waiting transaction
//! also blocks later ones that want the same projects, so a long stream of small
//! releases cannot starve a big one. It lives in memory only: after a restart, every
//! undecided transaction is aborted (presumed abort) and decided ones re-take their
//! projects in creation order.
//!
//! Each project keeps its line of waiters, so the end of a transaction looks only at
//! the first in line of each project it frees, and a question about one waiter reads
//! only its own projects' lines (with thousands queued, a scan of every waiter at
//! every end held the registry's lock for milliseconds). Refreshing every waiter's
//! reason after an end ([`Queue::waiting`]) still reads each one, once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lockstep::names::{Environment, ProjectName, TxId};

type Key = (Environment, ProjectName);

/// Who holds which project, and who waits, in creation order.
#[derive(Debug, Default)]
pub struct Queue {
    holders: BTreeMap<Key, TxId>,
    /// What each holder holds (the inverse of `holders`).
    held: HashMap<TxId, BTreeSet<Key>>,
    waiting: BTreeMap<u64, (TxId, BTreeSet<Key>)>,
    /// Each waiting transaction's ordinal (the inverse of `waiting`).
    ordinals: HashMap<TxId, u64>,
    /// Per project, the ordinals waiting for it: its line, first come first.
    lines: BTreeMap<Key, BTreeSet<u64>>,
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
        match blocked {
            None => self.take(&tx, &keys),
            Some(_) => self.wait(ordinal, tx, keys),
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
            if !self.holders.contains_key(&key) {
                self.take(tx, &BTreeSet::from([key]));
            }
        }
    }

    /// Releases what `tx` holds (or drops it from the waiting line) and returns the
    /// transactions that may start now, in creation order; they hold their projects.
    /// Only the first in line of each freed project can be one: any other waits behind
    /// it, and each one started holds its projects, which blocks the lines behind it.
    pub fn finish(&mut self, tx: &TxId) -> Vec<TxId> {
        let mut freed = self.held.remove(tx).unwrap_or_default();
        for key in &freed {
            self.holders.remove(key);
        }
        if let Some((_, keys)) = self.leave(tx) {
            freed.extend(keys);
        }
        let firsts: BTreeSet<u64> = freed.iter().filter_map(|k| self.first_in_line(k)).collect();
        let mut started = Vec::new();
        for ordinal in firsts {
            let Some((_, keys)) = self.waiting.get(&ordinal) else {
                continue;
            };
            if self.blocker(ordinal, keys).is_none() {
                let id = self.waiting[&ordinal].0.clone();
                let (_, keys) = self.leave(&id).expect("it waits");
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
        let before = ordinal.unwrap_or(u64::MAX);
        for project in projects {
            let line = self.lines.get(&(env.clone(), project.clone()));
            let earlier = line.into_iter().flat_map(|l| l.range(..before));
            out.extend(earlier.map(|o| self.waiting[o].0.clone()));
        }
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
        let held = self.held.get(tx).into_iter().flatten();
        held.map(|(_, project)| project.clone()).collect()
    }

    fn take(&mut self, tx: &TxId, keys: &BTreeSet<Key>) {
        for key in keys {
            self.holders.insert(key.clone(), tx.clone());
        }
        let held = self.held.entry(tx.clone()).or_default();
        held.extend(keys.iter().cloned());
    }

    /// Puts `tx` at the end of each of its projects' lines.
    fn wait(&mut self, ordinal: u64, tx: TxId, keys: BTreeSet<Key>) {
        for key in &keys {
            self.lines.entry(key.clone()).or_default().insert(ordinal);
        }
        self.ordinals.insert(tx.clone(), ordinal);
        self.waiting.insert(ordinal, (tx, keys));
    }

    /// Takes `tx` out of every line it waits in; returns its entry.
    fn leave(&mut self, tx: &TxId) -> Option<(TxId, BTreeSet<Key>)> {
        let ordinal = self.ordinals.remove(tx)?;
        let entry = self.waiting.remove(&ordinal)?;
        for key in &entry.1 {
            let line = self.lines.get_mut(key).expect("a waiter is in its lines");
            line.remove(&ordinal);
            if line.is_empty() {
                self.lines.remove(key);
            }
        }
        Some(entry)
    }

    fn first_in_line(&self, key: &Key) -> Option<u64> {
        self.lines.get(key)?.first().copied()
    }

    /// The first holder of one of `keys` (in key order), else the earliest waiter
    /// before `ordinal` that wants one of them, with the first of `keys` it wants.
    fn blocker(&self, ordinal: u64, keys: &BTreeSet<Key>) -> Option<Blocked> {
        if let Some((key, holder)) = keys.iter().find_map(|k| Some((k, self.holders.get(k)?))) {
            return Some(Blocked {
                by: holder.clone(),
                project: key.1.clone(),
                holds: true,
            });
        }
        let earliest = keys
            .iter()
            .filter_map(|k| self.first_in_line(k))
            .filter(|o| *o < ordinal)
            .min()?;
        let (id, wanted) = &self.waiting[&earliest];
        let key = keys.iter().find(|k| wanted.contains(*k))?;
        Some(Blocked {
            by: id.clone(),
            project: key.1.clone(),
            holds: false,
        })
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

    /// The queue as it was before the lines: every waiter checked against every
    /// earlier one at every end. The lines must give the same answers.
    #[derive(Default)]
    struct Naive {
        holders: BTreeMap<Key, TxId>,
        waiting: BTreeMap<u64, (TxId, BTreeSet<Key>)>,
    }

    impl Naive {
        fn blocker(&self, ordinal: u64, keys: &BTreeSet<Key>) -> Option<Blocked> {
            if let Some(k) = keys.iter().find(|k| self.holders.contains_key(*k)) {
                let by = self.holders[k].clone();
                let project = k.1.clone();
                return Some(Blocked {
                    by,
                    project,
                    holds: true,
                });
            }
            let (_, (id, wanted)) = (self.waiting.range(..ordinal))
                .find(|(_, (_, wanted))| keys.iter().any(|k| wanted.contains(k)))?;
            let k = keys.iter().find(|k| wanted.contains(*k))?;
            let (by, project) = (id.clone(), k.1.clone());
            Some(Blocked {
                by,
                project,
                holds: false,
            })
        }

        fn enqueue(&mut self, ordinal: u64, tx: TxId, keys: BTreeSet<Key>) -> Option<Blocked> {
            let blocked = self.blocker(ordinal, &keys);
            match blocked {
                None => keys
                    .into_iter()
                    .for_each(|k| drop(self.holders.insert(k, tx.clone()))),
                Some(_) => drop(self.waiting.insert(ordinal, (tx, keys))),
            }
            blocked
        }

        fn waits_for(
            &self,
            env: &Environment,
            wanted: &BTreeSet<ProjectName>,
            before: u64,
        ) -> Vec<TxId> {
            let wants = |k: &Key| k.0 == *env && wanted.contains(&k.1);
            let held = (self.holders.iter())
                .filter(|(k, _)| wants(k))
                .map(|(_, h)| h.clone());
            let earlier = self
                .waiting
                .range(..before)
                .filter(|(_, (_, keys))| keys.iter().any(wants));
            let mut out: Vec<TxId> = held.chain(earlier.map(|(_, (id, _))| id.clone())).collect();
            out.sort();
            out.dedup();
            out
        }

        fn finish(&mut self, tx: &TxId) -> Vec<TxId> {
            self.holders.retain(|_, holder| holder != tx);
            self.waiting.retain(|_, (waiting, _)| waiting != tx);
            let mut started = Vec::new();
            for ordinal in self.waiting.keys().copied().collect::<Vec<_>>() {
                let (id, keys) = self.waiting[&ordinal].clone();
                if self.blocker(ordinal, &keys).is_none() {
                    self.waiting.remove(&ordinal);
                    keys.into_iter()
                        .for_each(|k| drop(self.holders.insert(k, id.clone())));
                    started.push(id);
                }
            }
            started
        }
    }

    #[test]
    fn the_lines_answer_as_a_scan_of_every_waiter_does() {
        let envs = [
            Environment::default(),
            Environment::parse("e", "prod").unwrap(),
        ];
        let names = ["A", "B", "C", "D", "E", "F"];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut q, mut naive, mut live) = (Queue::default(), Naive::default(), Vec::new());
        for ordinal in 1..4000u64 {
            if next(5) < 3 || live.is_empty() {
                let env = &envs[next(2) as usize];
                let picked: Vec<&str> = names.iter().copied().filter(|_| next(3) == 0).collect();
                let tx = id(&format!("T{ordinal}"));
                let keys = ps(&picked).into_iter().map(|p| (env.clone(), p)).collect();
                let got = q.enqueue(ordinal, tx.clone(), env, ps(&picked));
                assert_eq!(
                    got,
                    naive.enqueue(ordinal, tx.clone(), keys),
                    "enqueue {tx}"
                );
                live.push(tx);
            } else {
                let tx = live.swap_remove(next(live.len() as u64) as usize);
                assert_eq!(q.finish(&tx), naive.finish(&tx), "finish {tx}");
            }
            let expected: Vec<_> = (naive.waiting.iter())
                .map(|(o, (id, keys))| (*o, id.clone(), naive.blocker(*o, keys)))
                .collect();
            assert_eq!(q.waiting(), expected, "after ordinal {ordinal}");
            let env = &envs[next(2) as usize];
            let wanted: BTreeSet<ProjectName> =
                ps(&names[..1 + next(6) as usize]).into_iter().collect();
            let before = next(ordinal + 1);
            let got = q.waits_for(env, &wanted, (before < ordinal).then_some(before));
            let before = if before < ordinal { before } else { u64::MAX };
            assert_eq!(
                got,
                naive.waits_for(env, &wanted, before),
                "waits_for after {ordinal}"
            );
            for tx in &live {
                let held = (naive.holders.iter()).filter(|(_, h)| *h == tx);
                let held: BTreeSet<_> = held.map(|((_, p), _)| p.clone()).collect();
                assert_eq!(q.held_by(tx), held, "held by {tx}");
            }
        }
    }

    #[test]
    fn environments_do_not_block_each_other() {
        let mut q = Queue::default();
        q.enqueue(1, id("T1"), &Environment::default(), ps(&["A"]));
        let prod = Environment::parse("e", "production").unwrap();
        assert_eq!(q.enqueue(2, id("T2"), &prod, ps(&["A"])), None);
    }
}
