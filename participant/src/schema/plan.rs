//! The migration plan of one Prepare, computed from what is applied in the database and
//! what the staged artifact ships: ups to go forward, the stored downs to go back. Pure,
//! so the dry run's preview and the real Prepare compute the same plan.

use serde::{Deserialize, Serialize};

use super::{SchemaPosition, files::Migration};

/// Which way the plan moves the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// Apply ups, oldest first.
    Up,
    /// Apply stored downs, newest first.
    Down,
}

/// What a transaction does to the schema, and everything needed to undo it exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaPlan {
    /// Position before.
    pub from: SchemaPosition,
    /// Position after.
    pub to: SchemaPosition,
    /// Forward or back.
    pub direction: Direction,
    /// The migrations involved, in the order their scripts run.
    pub steps: Vec<Migration>,
}

impl SchemaPlan {
    /// File names of the scripts that run, in order.
    pub fn files(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|m| match self.direction {
                Direction::Up => m.up_file(),
                Direction::Down => m.down_file(),
            })
            .collect()
    }

    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The plan that undoes this one exactly: the other scripts of the same migrations,
    /// in reverse order.
    pub fn inverse(&self) -> SchemaPlan {
        SchemaPlan {
            from: self.to.clone(),
            to: self.from.clone(),
            direction: match self.direction {
                Direction::Up => Direction::Down,
                Direction::Down => Direction::Up,
            },
            steps: self.steps.iter().rev().cloned().collect(),
        }
    }
}

fn position(m: Option<&Migration>) -> SchemaPosition {
    m.map(|m| SchemaPosition {
        version: m.version,
        name: m.name.clone(),
    })
    .unwrap_or_default()
}

/// Plans the move from `applied` (in the database, with stored scripts) to the newest
/// migration `shipped` in the artifact. Errors name the file and the rule.
pub fn plan(applied: &[Migration], shipped: &[Migration]) -> Result<SchemaPlan, String> {
    let live = applied.iter().map(|m| m.version).max().unwrap_or(0);
    let target = shipped.iter().map(|m| m.version).max().unwrap_or(0);
    for m in shipped {
        if let Some(a) = applied.iter().find(|a| a.version == m.version)
            && a.checksum != m.checksum
        {
            return Err(format!(
                "migrations/{} changed after it was applied here (applied checksum {}, shipped {}); ship a new migration instead of editing an applied one",
                m.up_file(),
                &a.checksum[..12],
                &m.checksum[..12]
            ));
        }
        if m.version <= live && !applied.iter().any(|a| a.version == m.version) {
            let known: Vec<String> = applied.iter().map(|a| a.version.to_string()).collect();
            return Err(if m.version == target {
                format!(
                    "unknown target schema version {target} (the newest in this artifact): it was never applied here (applied: {}), so there is no way back to it",
                    known.join(", ")
                )
            } else {
                format!(
                    "migrations/{} (version {}) is older than the live schema version {live} but was never applied here; give it a version above {live}",
                    m.up_file(),
                    m.version
                )
            });
        }
    }
    let from = position(applied.iter().max_by_key(|m| m.version));
    if target >= live {
        let steps: Vec<Migration> = shipped
            .iter()
            .filter(|m| m.version > live)
            .cloned()
            .collect();
        if let Some(m) = steps.iter().find(|m| m.down.is_none()) {
            return Err(format!(
                "migrations/{} has no {}: every migration must be reversible",
                m.up_file(),
                m.down_file()
            ));
        }
        let to = position(shipped.iter().max_by_key(|m| m.version));
        let to = if steps.is_empty() { from.clone() } else { to };
        return Ok(SchemaPlan {
            from,
            to,
            direction: Direction::Up,
            steps,
        });
    }
    let mut steps: Vec<Migration> = applied
        .iter()
        .filter(|m| m.version > target)
        .cloned()
        .collect();
    steps.sort_by_key(|m| std::cmp::Reverse(m.version));
    let to = position(applied.iter().find(|a| a.version == target));
    Ok(SchemaPlan {
        from,
        to,
        direction: Direction::Down,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::files::checksum;

    fn m(version: i64, up: &str, down: Option<&str>) -> Migration {
        Migration {
            version,
            name: format!("m{version}"),
            stem: format!("{version:04}_m{version}"),
            checksum: checksum(up),
            up: up.into(),
            down: down.map(str::to_string),
        }
    }

    #[test]
    fn forward_runs_the_new_ups_oldest_first() {
        let applied = [m(1, "a", Some("-a"))];
        let shipped = [
            m(1, "a", Some("-a")),
            m(2, "b", Some("-b")),
            m(3, "c", Some("-c")),
        ];
        let p = plan(&applied, &shipped).unwrap();
        assert_eq!(p.files(), ["0002_m2.up.sql", "0003_m3.up.sql"]);
        assert_eq!((p.from.version, p.to.version), (1, 3));
        assert_eq!(
            p.inverse().files(),
            ["0003_m3.down.sql", "0002_m2.down.sql"]
        );
    }

    #[test]
    fn back_runs_the_stored_downs_newest_first_even_if_the_artifact_lacks_them() {
        let applied = [
            m(1, "a", Some("-a")),
            m(2, "b", Some("-b")),
            m(3, "c", Some("-c")),
        ];
        let shipped = [m(1, "a", Some("-a"))];
        let p = plan(&applied, &shipped).unwrap();
        assert_eq!(p.direction, Direction::Down);
        assert_eq!(p.files(), ["0003_m3.down.sql", "0002_m2.down.sql"]);
        assert_eq!(p.to.version, 1);
    }

    #[test]
    fn the_rules_refuse_with_the_file_named() {
        let no_down = plan(&[], &[m(1, "a", None)]).unwrap_err();
        assert!(
            no_down.contains("0001_m1.up.sql has no 0001_m1.down.sql"),
            "{no_down}"
        );
        let changed = plan(&[m(1, "a", Some("-a"))], &[m(1, "a2", Some("-a"))]).unwrap_err();
        assert!(
            changed.contains("0001_m1.up.sql changed after it was applied"),
            "{changed}"
        );
        let gap = plan(
            &[m(1, "a", Some("-a")), m(3, "c", Some("-c"))],
            &[m(2, "b", Some("-b")), m(4, "d", Some("-d"))],
        )
        .unwrap_err();
        assert!(
            gap.contains("0002_m2.up.sql (version 2) is older than the live schema version 3"),
            "{gap}"
        );
        let applied = [m(2, "b", Some("-b")), m(4, "d", Some("-d"))];
        let never = plan(&applied, &[m(3, "c", Some("-c"))]).unwrap_err();
        assert!(never.contains("unknown target schema version 3"), "{never}");
    }

    #[test]
    fn the_same_version_is_an_empty_plan() {
        let both = [m(1, "a", Some("-a"))];
        let p = plan(&both, &both).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.to, p.from);
    }
}
