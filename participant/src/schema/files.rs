//! Migration files as shipped in an artifact's `migrations/` directory, sqlx-style:
//! `<version>_<name>.up.sql` and `<version>_<name>.down.sql`, version a positive integer
//! (`0001_create_users`, `20240101120000_add_index`).

use std::{collections::BTreeMap, fs, path::Path};

use serde::{Deserialize, Serialize};

use super::Backend;
use sha2::{Digest, Sha256};

/// One versioned migration with its scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    /// Version (orders migrations).
    pub version: i64,
    /// The name part of the file name.
    pub name: String,
    /// The file name without `.up.sql` (`0002_add_email`).
    pub stem: String,
    /// SHA-256 of the up script: an applied migration whose file changes is refused.
    pub checksum: String,
    /// Up script.
    pub up: String,
    /// Down script (None when the file is missing: such a migration is refused).
    pub down: Option<String>,
}

impl Migration {
    /// `0002_add_email.up.sql`.
    pub fn up_file(&self) -> String {
        format!("{}.up.sql", self.stem)
    }

    /// `0002_add_email.down.sql`.
    pub fn down_file(&self) -> String {
        format!("{}.down.sql", self.stem)
    }
}

/// Reads every migration in `dir`, ordered by version. Errors name the offending file.
pub fn read_dir(dir: &Path, backend: Backend) -> Result<Vec<Migration>, String> {
    let mut files = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.ends_with(".sql") {
            let text =
                fs::read_to_string(entry.path()).map_err(|e| format!("migrations/{file}: {e}"))?;
            files.push((file, text));
        }
    }
    parse(files, backend)
}

/// Pairs `(file name, content)` into migrations, ordered by version; each script is
/// checked for transaction control as `backend` reads it.
pub fn parse(files: Vec<(String, String)>, backend: Backend) -> Result<Vec<Migration>, String> {
    let mut ups: BTreeMap<i64, (String, String)> = BTreeMap::new();
    let mut downs: BTreeMap<i64, (String, String)> = BTreeMap::new();
    for (file, text) in files {
        if let Some((words, line, why)) = super::control::transaction_control(&text, backend) {
            return Err(format!(
                "migrations/{file}: line {line}: {words} {why}; remove it from the script"
            ));
        }
        let (stem, target) = if let Some(stem) = file.strip_suffix(".up.sql") {
            (stem, &mut ups)
        } else if let Some(stem) = file.strip_suffix(".down.sql") {
            (stem, &mut downs)
        } else {
            continue;
        };
        let version = version_of(stem).ok_or_else(|| {
            format!("migrations/{file}: the name must start with a version number, like 0001_create_users.up.sql")
        })?;
        if let Some((other, _)) = target.insert(version, (stem.to_string(), text)) {
            return Err(format!(
                "migrations/{file}: version {version} is used twice (also {other})"
            ));
        }
    }
    if let Some((version, (stem, _))) = downs.iter().find(|(v, _)| !ups.contains_key(v)) {
        return Err(format!(
            "migrations/{stem}.down.sql: there is no {stem}.up.sql for version {version}"
        ));
    }
    Ok(ups
        .into_iter()
        .map(|(version, (stem, up))| Migration {
            version,
            name: stem
                .split_once('_')
                .map(|(_, n)| n.to_string())
                .unwrap_or_default(),
            checksum: checksum(&up),
            down: downs.remove(&version).map(|(_, d)| d),
            stem,
            up,
        })
        .collect())
}

fn version_of(stem: &str) -> Option<i64> {
    let digits = stem.split('_').next()?;
    let v: i64 = digits.parse().ok()?;
    (v > 0).then_some(v)
}

/// SHA-256 of a script, hex.
pub fn checksum(script: &str) -> String {
    Sha256::digest(script.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn pairs_up_and_down_scripts_in_version_order() {
        let d = dir(&[
            ("0002_add_email.up.sql", "ALTER TABLE u ADD email TEXT;"),
            ("0002_add_email.down.sql", "ALTER TABLE u DROP email;"),
            ("0001_users.up.sql", "CREATE TABLE u (id INT);"),
            ("0001_users.down.sql", "DROP TABLE u;"),
            ("README.md", "ignored"),
        ]);
        let m = read_dir(d.path(), Backend::Postgres).unwrap();
        assert_eq!(m.iter().map(|m| m.version).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(m[1].name, "add_email");
        assert_eq!(m[1].up_file(), "0002_add_email.up.sql");
        assert_eq!(m[1].down.as_deref(), Some("ALTER TABLE u DROP email;"));
    }

    #[test]
    fn a_missing_down_is_kept_visible_and_bad_names_are_refused() {
        let d = dir(&[("0001_users.up.sql", "CREATE TABLE u (id INT);")]);
        assert_eq!(read_dir(d.path(), Backend::Postgres).unwrap()[0].down, None);
        let d = dir(&[("users.up.sql", "x")]);
        assert!(
            read_dir(d.path(), Backend::Postgres)
                .unwrap_err()
                .contains("users.up.sql")
        );
        let d = dir(&[("0001_a.up.sql", "x"), ("0001_b.up.sql", "y")]);
        assert!(
            read_dir(d.path(), Backend::Postgres)
                .unwrap_err()
                .contains("used twice")
        );
    }
}
