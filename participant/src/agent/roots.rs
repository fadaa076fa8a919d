//! Where an agent may stage artifacts from (`--artifact-root`, repeatable): a Prepare
//! naming a path outside every root is refused, so a caller who can create releases
//! cannot make any readable directory on the agent's host live. Paths are compared
//! after resolving symlinks and `..`, so neither leads outside a root.

use std::{
    io,
    path::{Path, PathBuf},
};

/// The directories artifacts may come from; none: anywhere (only under `--insecure`).
#[derive(Debug, Clone, Default)]
pub struct ArtifactRoots {
    roots: Vec<PathBuf>,
}

impl ArtifactRoots {
    /// The roots, resolved now (each must exist).
    pub fn new(roots: &[PathBuf]) -> io::Result<Self> {
        let resolved = roots.iter().map(|r| {
            r.canonicalize().map_err(|e| {
                io::Error::new(e.kind(), format!("--artifact-root {}: {e}", r.display()))
            })
        });
        Ok(Self {
            roots: resolved.collect::<io::Result<_>>()?,
        })
    }

    /// Whether any root is set.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// `Ok` if `artifact` lies inside a root; `Err` names the path and the roots.
    pub fn admit(&self, artifact: &Path) -> Result<(), String> {
        if self.roots.is_empty() {
            return Ok(());
        }
        let resolved = artifact
            .canonicalize()
            .map_err(|e| format!("artifact {}: {e}", artifact.display()))?;
        if self.roots.iter().any(|root| resolved.starts_with(root)) {
            return Ok(());
        }
        let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
        Err(format!(
            "artifact {} is outside every --artifact-root of this agent ({}); refusing to stage it",
            artifact.display(),
            roots.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_inside_a_root_are_admitted_even_through_dot_dot() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("builds");
        let outside = dir.path().join("secrets");
        std::fs::create_dir_all(root.join("T1A")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let roots = ArtifactRoots::new(std::slice::from_ref(&root)).unwrap();
        assert!(roots.admit(&root.join("T1A")).is_ok());
        let sneaky = root.join("..").join("secrets");
        let refused = roots.admit(&sneaky).unwrap_err();
        assert!(
            refused.contains("outside every --artifact-root"),
            "{refused}"
        );
        assert!(refused.contains("secrets"), "names the path: {refused}");
        assert!(roots.admit(&outside).is_err());
    }
}
