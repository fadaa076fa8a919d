//! Artifacts by URL and digest (defect 7 of issue 27): there was no way to name a build
//! by URL and digest, and a vote never said what was staged.

#![allow(clippy::unwrap_used)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use support::{Cluster, wait_for};

/// A `.tar.gz` in `dir` whose `VERSION` file says `text`; returns its path and digest.
fn tarball(dir: &Path, name: &str, text: &str) -> (PathBuf, String) {
    let src = dir.join(format!("src-{name}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("VERSION"), text).unwrap();
    let file = dir.join(format!("{name}.tar.gz"));
    let tar = Command::new("tar")
        .arg("czf")
        .arg(&file)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    let sum = Command::new("sha256sum").arg(&file).output().unwrap();
    let digest = String::from_utf8(sum.stdout).unwrap();
    (file, digest.split_whitespace().next().unwrap().to_string())
}

/// A real HTTP server (Python's) serving `dir`, killed on drop.
struct Store {
    child: Child,
    port: u16,
}

impl Store {
    async fn serve(dir: &Path) -> Self {
        let port = support::free_port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the artifact store to listen", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(drop)
        })
        .await;
        Store { child, port }
    }

    fn url(&self, file: &str, digest: &str) -> String {
        format!("http://127.0.0.1:{}/{file}@sha256:{digest}", self.port)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster with agent A, and a store serving two builds of it, app-1 and app-2
/// (their `VERSION` files say `built 1` and `built 2`), with their digests.
async fn agent_and_store() -> (Cluster, Store, String, String) {
    let mut c = Cluster::new().await;
    c.add_agent("A").await;
    c.register("A", &[]).await;
    let store_dir = c.dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let (_, one) = tarball(&store_dir, "app-1", "built 1");
    let (_, two) = tarball(&store_dir, "app-2", "built 2");
    let store = Store::serve(&store_dir).await;
    (c, store, one, two)
}

fn version_of(c: &Cluster) -> String {
    let file = c.agent("A").deploy_root.join("current/VERSION");
    std::fs::read_to_string(file).unwrap()
}

/// Given an artifact store over HTTP, when T1 names A's build by URL and digest, then
/// A goes live with its files and `release get` says what was staged (the digest and
/// the URL); with the store gone, the same digest under another version comes from the
/// agent's cache (the digest names the build, the URL only where to fetch it); a file
/// whose digest differs is refused before the vote and nothing
/// moves; a URL without a digest is refused at admission naming the field; and a
/// version without an artifact says so.
#[tokio::test(flavor = "multi_thread")]
async fn an_artifact_by_url_is_verified_cached_and_shown() {
    let (c, store, one, two) = agent_and_store().await;
    let store_dir = c.dir.path().join("store");

    let url = store.url("app-1.tar.gz", &one);
    let flag = format!("A={url}");
    let t1 = [
        "release",
        "create",
        "T1",
        "A=1.0",
        "--artifact",
        &flag,
        "--wait",
    ];
    assert_eq!(c.cli(&t1).await.code, 0);
    assert_eq!(version_of(&c), "built 1");
    let shown = c.cli(&["release", "get", "T1"]).await.stdout;
    let plain_url = url.split_once('@').unwrap().0;
    assert!(
        shown.contains(&format!("A 1.0 staged: sha256:{one} from {plain_url}")),
        "{shown}"
    );

    drop(store);
    let t2 = [
        "release",
        "create",
        "T2",
        "A=1.0-b",
        "--artifact",
        &flag,
        "--wait",
    ];
    let out = c.cli(&t2).await;
    assert_eq!(out.code, 0, "from the cache with the store gone: {out:?}");
    let shown = c.cli(&["release", "get", "T2"]).await.stdout;
    assert!(shown.contains("(cached)"), "{shown}");

    let store = Store::serve(&store_dir).await;
    // The digest names the build: app-1 under app-2's digest (not in the cache yet).
    let lying = format!("A={}", store.url("app-1.tar.gz", &two));
    let t3 = [
        "release",
        "create",
        "T3",
        "A=2.0",
        "--artifact",
        &lying,
        "--wait",
    ];
    let out = c.cli(&t3).await;
    assert_eq!(out.code, 1, "{out:?}");
    let t3 = c.transaction("T3").await;
    let reason = &t3.participants[0].vote_reason;
    assert!(
        reason.contains("digest mismatch") && reason.contains(&two) && reason.contains(&one),
        "{t3:?}"
    );
    assert_eq!(version_of(&c), "built 1", "nothing moved");
    assert!(!c.agent("A").deploy_root.join("releases/2.0").exists());

    let bare = format!("A=http://127.0.0.1:{}/app-2.tar.gz", store.port);
    let t4 = ["release", "create", "T4", "A=2.0", "--artifact", &bare];
    let out = c.cli(&t4).await;
    assert_eq!(out.code, 2, "bad input: {out:?}");
    assert!(
        out.stderr.contains("components[0].artifact") && out.stderr.contains("needs its digest"),
        "{out:?}"
    );

    c.release("T5", &["A=3.0"], 0).await;
    let shown = c.cli(&["release", "get", "T5"]).await.stdout;
    assert!(
        shown.contains("A 3.0 staged: no artifact: version only"),
        "{shown}"
    );
}

/// A version names one build: once 1.0 is committed from app-1, a release of 1.0 from
/// app-2 is refused at admission, naming the field (the agent would keep
/// `releases/1.0` as it is, and a revert would send app-2 to restore it), and nothing
/// moves; 1.0 from app-1 again is a plain move back.
#[tokio::test(flavor = "multi_thread")]
async fn a_committed_version_is_not_released_again_from_another_build() {
    let (c, store, one, two) = agent_and_store().await;
    let app_1 = format!("A={}", store.url("app-1.tar.gz", &one));
    let app_2 = format!("A={}", store.url("app-2.tar.gz", &two));
    let release = |id: &'static str, version: &'static str, artifact: &str| {
        let args = [
            "release",
            "create",
            id,
            version,
            "--artifact",
            artifact,
            "--wait",
        ];
        args.map(str::to_string)
    };
    let run = |args: [String; 7]| {
        let c = &c;
        async move { c.cli(&args.each_ref().map(String::as_str)).await }
    };

    assert_eq!(run(release("T1", "A=1.0", &app_1)).await.code, 0);
    assert_eq!(run(release("T2", "A=2.0", &app_2)).await.code, 0);
    assert_eq!(version_of(&c), "built 2");

    let out = run(release("T3", "A=1.0", &app_2)).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("components[0].artifact: A=1.0 was committed in default from")
            && out.stderr.contains("a version names one build"),
        "{out:?}"
    );
    assert_eq!(version_of(&c), "built 2", "nothing moved");

    assert_eq!(run(release("T4", "A=1.0", &app_1)).await.code, 0);
    assert_eq!(version_of(&c), "built 1");
}
