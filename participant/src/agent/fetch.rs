//! Where a build comes from. A release names it by reference: a path on this agent's
//! machine (a directory or a `.tar.gz`), or a `.tar.gz` by URL with its digest,
//! `https://…/app.tar.gz@sha256:HEX` (also `http://` and `file://`). A URL artifact is
//! downloaded into the agent's cache and its digest verified before anything is
//! staged from it; one already in the cache is not downloaded again. A URL without a
//! digest is refused: a build named only by where it lives can change under the name.
//! Every source says what it is in words for people, which the vote carries.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use lockstep::reference::{Reference, parse};
use sha2::{Digest, Sha256};

use super::{artifact, roots::ArtifactRoots};

/// What the vote says when a version comes without an artifact.
pub const NO_ARTIFACT: &str = "no artifact: version only";

/// A build ready to stage: the local file or directory, and what it is in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Where it is on this machine.
    pub path: PathBuf,
    /// What the vote says was staged (`sha256:… from URL`).
    pub staged: String,
}

/// Resolves references: downloads into the cache, checks roots and digests.
#[derive(Debug, Clone)]
pub struct Fetcher {
    cache: PathBuf,
    roots: ArtifactRoots,
    client: reqwest::Client,
}

impl Fetcher {
    /// Downloads into `cache`, takes local paths only inside `roots`, and trusts the
    /// extra CA `ca` (PEM) for `https://` besides the public roots.
    pub fn new(cache: PathBuf, roots: ArtifactRoots, ca: Option<&[u8]>) -> Result<Self, String> {
        let mut client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(pem) = ca {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| format!("--artifact-ca: not a PEM certificate: {e}"))?;
            client = client.add_root_certificate(cert);
        }
        let client = client
            .build()
            .map_err(|e| format!("the artifact client: {e}"))?;
        sweep_downloads(&cache);
        Ok(Self {
            cache,
            roots,
            client,
        })
    }

    /// The roots local paths must lie in.
    pub fn roots(&self) -> &ArtifactRoots {
        &self.roots
    }

    /// The build `reference` names, ready to stage (`None`: no artifact).
    pub async fn resolve(&self, reference: &str) -> Result<Option<Source>, String> {
        match parse(reference)? {
            Reference::None => Ok(None),
            Reference::Local(path, digest) => {
                let roots = self.roots.clone();
                let local = move || local(&roots, path, digest);
                tokio::task::spawn_blocking(local)
                    .await
                    .map_err(|e| format!("reading the artifact: {e}"))?
                    .map(Some)
            }
            Reference::Remote(url, digest) => self.remote(&url, &digest).await.map(Some),
        }
    }

    /// The cached file of `digest`, downloaded from `url` when it is not there yet.
    async fn remote(&self, url: &str, digest: &str) -> Result<Source, String> {
        let path = self.cache.join(format!("sha256-{digest}.tar.gz"));
        let staged = format!("sha256:{digest} from {url}");
        if path.is_file() {
            let cached = path.clone();
            let found = tokio::task::spawn_blocking(move || sha256_of(&cached)).await;
            if found.ok().and_then(Result::ok).as_deref() == Some(digest) {
                let staged = format!("{staged} (cached)");
                return Ok(Source { path, staged });
            }
        }
        self.download(url, digest, &path).await?;
        Ok(Source { path, staged })
    }

    /// Streams `url` into a temporary file beside `to`, hashing as it writes, and
    /// renames it into place only when the digest matches.
    async fn download(&self, url: &str, digest: &str, to: &Path) -> Result<(), String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("artifact {url}: {what}: {e}");
        fs::create_dir_all(&self.cache).map_err(|e| fail("creating the cache", &e))?;
        let temp = self.cache.join(format!(".download-{}", unique()));
        let mut partial = Partial(Some(temp.clone()));
        let response = self.client.get(url).send().await;
        let mut response = response
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| fail("downloading", &e))?;
        let mut file = fs::File::create(&temp).map_err(|e| fail("writing the cache", &e))?;
        let mut hasher = Sha256::new();
        let copied: Result<(), String> = async {
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| fail("downloading", &e))?
            {
                hasher.update(&chunk);
                io::Write::write_all(&mut file, &chunk).map_err(|e| fail("writing", &e))?;
            }
            file.sync_all().map_err(|e| fail("syncing", &e))
        }
        .await;
        let got = hex(&hasher.finalize());
        let checked = copied.and_then(|()| match got == digest {
            true => Ok(()),
            false => Err(mismatch(url, digest, &got)),
        });
        checked?;
        fs::rename(&temp, to).map_err(|e| fail("moving into the cache", &e))?;
        partial.0 = None;
        artifact::sync_dir(&self.cache).map_err(|e| fail("moving into the cache", &e))
    }
}

/// A download not yet moved into the cache: removed when dropped, on a failure and
/// also when an Abort cancels the staging mid-download (review finding of stop 60:
/// the partial file stayed until the agent's next start, on a disk that may be full).
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

fn mismatch(place: &str, want: &str, got: &str) -> String {
    format!(
        "artifact {place}: digest mismatch: the release names sha256:{want}, the file is sha256:{got}; refusing to stage it"
    )
}

/// A local artifact inside the roots, its digest checked when one is given.
fn local(roots: &ArtifactRoots, path: PathBuf, digest: Option<String>) -> Result<Source, String> {
    roots.admit(&path)?;
    let meta = fs::metadata(&path).map_err(|e| format!("artifact {}: {e}", path.display()))?;
    let shown = path.display().to_string();
    if meta.is_dir() {
        if digest.is_some() {
            return Err(format!(
                "artifact {shown}: a digest names a file (a .tar.gz), and this is a directory"
            ));
        }
        let staged = format!("directory {shown} (no digest)");
        return Ok(Source { path, staged });
    }
    let got = sha256_of(&path).map_err(|e| format!("artifact {shown}: {e}"))?;
    if let Some(want) = digest.filter(|want| *want != got) {
        return Err(mismatch(&shown, &want, &got));
    }
    let staged = format!("sha256:{got} from {shown}");
    Ok(Source { path, staged })
}

fn sha256_of(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Removes the partial downloads of agents that died mid-download (SIGKILL, OOM):
/// `.download-PID-N` of a process that no longer runs. The digest check already keeps
/// them from being staged; this keeps them from filling the disk.
fn sweep_downloads(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(".download-")
            .and_then(|r| r.split('-').next());
        let dead = pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists());
        if dead {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// A name no other download of this process uses.
fn unique() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Review finding of stop 57: a download cut by a SIGKILL stayed in the cache for
    /// good. An agent's start removes those of processes that no longer run, and keeps
    /// one a running process is writing, and the cached builds.
    #[test]
    fn partial_downloads_of_dead_agents_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        fs::create_dir_all(&cache).unwrap();
        let dead = cache.join(".download-4294967295-0");
        let running = cache.join(format!(".download-{}-7", std::process::id()));
        let cached = cache.join(format!("sha256-{D}.tar.gz"));
        for file in [&dead, &running, &cached] {
            fs::write(file, b"part").unwrap();
        }
        Fetcher::new(cache, ArtifactRoots::default(), None).unwrap();
        assert!(!dead.exists(), "a dead agent's partial download is kept");
        assert!(running.exists() && cached.exists());
    }

    /// Given a download that stalls half-way, when the staging that asked for it is
    /// cancelled (an Abort), then no partial file is left in the cache.
    #[tokio::test]
    async fn a_cancelled_download_leaves_nothing_in_the_cache() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/app.tar.gz", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut request).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n";
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(&[7; 1000]).await.unwrap();
            std::future::pending::<()>().await;
        });
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let fetcher = Fetcher::new(cache.clone(), ArtifactRoots::default(), None).unwrap();
        let to = cache.join("app.tar.gz");
        let mut download = Box::pin(fetcher.download(&url, D, &to));
        let files = || fs::read_dir(&cache).map_or(0, |d| d.count());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while files() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the download never began writing"
            );
            tokio::select! {
                r = &mut download => panic!("the download ended although the server stalls: {r:?}"),
                _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
            }
        }

        drop(download);

        assert_eq!(files(), 0, "a partial download stayed in the cache");
    }

    #[test]
    fn a_local_file_is_checked_against_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.tar.gz");
        fs::write(&file, b"build").unwrap();
        let right = sha256_of(&file).unwrap();
        let roots = ArtifactRoots::default();
        let ok = local(&roots, file.clone(), Some(right.clone())).unwrap();
        assert_eq!(ok.staged, format!("sha256:{right} from {}", file.display()));
        let wrong = local(&roots, file, Some(D.into())).unwrap_err();
        assert!(wrong.contains("digest mismatch"), "{wrong}");
    }
}
