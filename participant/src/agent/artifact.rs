//! Puts an artifact into a stage directory: a local directory is copied, a `.tar.gz`
//! (or `.tgz`) is unpacked. Everything written is fsynced before returning, since the
//! agent votes PREPARED right after.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Copies or unpacks `artifact` into `dest` (which must not exist) and syncs it.
pub fn install(artifact: &Path, dest: &Path) -> Result<(), String> {
    let meta =
        fs::metadata(artifact).map_err(|e| format!("artifact {}: {e}", artifact.display()))?;
    let name = artifact.to_string_lossy();
    if meta.is_dir() {
        copy_dir(artifact, dest)
            .map_err(|e| format!("copying artifact {}: {e}", artifact.display()))?;
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        let file = fs::File::open(artifact)
            .map_err(|e| format!("artifact {}: {e}", artifact.display()))?;
        fs::create_dir_all(dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
        tar::Archive::new(flate2::read::GzDecoder::new(file))
            .unpack(dest)
            .map_err(|e| format!("unpacking artifact {}: {e}", artifact.display()))?;
    } else {
        return Err(format!(
            "artifact {} is neither a directory nor a .tar.gz archive",
            artifact.display()
        ));
    }
    sync_tree(dest).map_err(|e| format!("syncing {}: {e}", dest.display()))
}

fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// The `migrations/*.sql` files an artifact ships, read without unpacking it anywhere:
/// `None` when it has no `migrations/` directory.
pub fn migrations_in(artifact: &Path) -> Result<Option<Vec<(String, String)>>, String> {
    let meta =
        fs::metadata(artifact).map_err(|e| format!("artifact {}: {e}", artifact.display()))?;
    if meta.is_dir() {
        let dir = artifact.join("migrations");
        return if dir.is_dir() {
            migrations_in_dir(&dir).map(Some)
        } else {
            Ok(None)
        };
    }
    let file =
        fs::File::open(artifact).map_err(|e| format!("artifact {}: {e}", artifact.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut found: Option<Vec<(String, String)>> = None;
    let entries = archive
        .entries()
        .map_err(|e| format!("reading artifact {}: {e}", artifact.display()))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| format!("reading artifact {}: {e}", artifact.display()))?;
        let path = entry
            .path()
            .map_err(|e| format!("artifact {}: {e}", artifact.display()))?
            .into_owned();
        let mut parts = path
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir));
        if parts.next().is_none_or(|c| c.as_os_str() != "migrations") {
            continue;
        }
        let files = found.get_or_insert_with(Vec::new);
        let name = parts
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        if let (Some(name), None) = (name, parts.next())
            && name.ends_with(".sql")
        {
            let mut text = String::new();
            io::Read::read_to_string(&mut entry, &mut text)
                .map_err(|e| format!("artifact {}: migrations/{name}: {e}", artifact.display()))?;
            files.push((name, text));
        }
    }
    Ok(found)
}

/// The `*.sql` files of a migrations directory.
pub fn migrations_in_dir(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".sql") {
            let text =
                fs::read_to_string(entry.path()).map_err(|e| format!("migrations/{name}: {e}"))?;
            out.push((name, text));
        }
    }
    Ok(out)
}

/// fsyncs every file and directory under `root` (and `root` itself).
pub fn sync_tree(root: &Path) -> io::Result<()> {
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                fs::File::open(entry.path())?.sync_all()?;
            }
        }
        sync_dir(&dir)?;
    }
    Ok(())
}

/// fsyncs a directory, making renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_artifact_is_copied_with_its_tree() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("bin")).unwrap();
        fs::write(src.path().join("bin/app"), b"v4").unwrap();
        let dest = tempfile::tempdir().unwrap();
        let target = dest.path().join("T4");
        install(src.path(), &target).unwrap();
        assert_eq!(fs::read(target.join("bin/app")).unwrap(), b"v4");
    }

    #[test]
    fn a_tarball_is_unpacked() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("app.tar.gz");
        {
            let file = fs::File::create(&archive).unwrap();
            let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::fast(),
            ));
            let mut header = tar::Header::new_gnu();
            header.set_size(2);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, "VERSION", &b"T4"[..])
                .unwrap();
            builder.into_inner().unwrap().finish().unwrap();
        }
        let target = dir.path().join("out");
        install(&archive, &target).unwrap();
        assert_eq!(fs::read(target.join("VERSION")).unwrap(), b"T4");
    }

    #[test]
    fn anything_else_is_refused_with_the_path_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.zip");
        fs::write(&file, b"x").unwrap();
        let err = install(&file, &dir.path().join("out")).unwrap_err();
        assert!(err.contains("app.zip") && err.contains(".tar.gz"), "{err}");
    }
}
