//! A deployment with mutual TLS everywhere, as a user sets one up: `lockstep certs
//! init` writes the certificates, the coordinator and every agent start with their TLS
//! flags (agents with `--artifact-root`), and every client presents a certificate or a
//! token. Real handshakes on real TCP ports.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
};

use lockstep::pb::{coordinator_client::CoordinatorClient, participant_client::ParticipantClient};
use tokio::process::Command;
use tonic::transport::{Channel, ClientTlsConfig};

use super::{Agent, Cli, DEADLINE, Server, bin};

/// Who a client is.
#[derive(Clone, Debug)]
pub enum As {
    /// A user's certificate from the deployment's CA (`user-<name>`).
    User(String),
    /// Any certificate file pair (e.g. from another CA), with the deployment's CA.
    Files(PathBuf, PathBuf),
    /// A bearer token, over TLS without a client certificate.
    Token(String),
    /// TLS with no credential at all.
    Nobody,
}

/// The admin user `certs init` makes by default.
pub fn admin() -> As {
    As::User("admin".into())
}

/// A coordinator and agents with mutual TLS, in one temp dir.
pub struct Secure {
    pub dir: tempfile::TempDir,
    /// Where `certs init` wrote the certificates.
    pub certs: PathBuf,
    pub coordinator: Server,
    pub agents: BTreeMap<String, Agent>,
}

/// Runs `lockstep certs init` into `dir`.
pub async fn certs_init(dir: &Path, agents: &str, users: &str) {
    let out = Command::new(bin("lockstep"))
        .args(["certs", "init"])
        .arg(dir)
        .args(["--agents", agents, "--users", users])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "certs init: {out:?}");
}

impl Secure {
    /// Certificates for A, B, C and the users admin, alice and bob; a coordinator
    /// (with `coordinator_flags`); agents for `projects`, registered independently.
    pub async fn start(projects: &[&str], coordinator_flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        certs_init(&certs, "A,B,C", "admin,alice,bob").await;
        std::fs::create_dir_all(dir.path().join("artifacts")).unwrap();
        let file = |name: &str| certs.join(name).display().to_string();
        let mut args = vec![
            "--data-dir".to_string(),
            dir.path().join("coordinator").display().to_string(),
            "--tls-cert".into(),
            file("coordinator.crt"),
            "--tls-key".into(),
            file("coordinator.key"),
            "--tls-client-ca".into(),
            file("ca.crt"),
        ];
        args.extend(coordinator_flags.iter().map(|s| s.to_string()));
        let log = dir.path().join("coordinator.log");
        let coordinator = Server::start(
            "coordinator",
            bin("lockstep-coordinator"),
            args,
            Vec::new(),
            log,
            0,
        )
        .await;
        let mut s = Secure {
            dir,
            certs,
            coordinator,
            agents: BTreeMap::new(),
        };
        for p in projects {
            s.add_agent(p).await;
            let endpoint = s.agents[*p].server.https_url();
            let out = s
                .cli(&admin(), &["project", "add", p, "--endpoint", &endpoint])
                .await;
            assert_eq!(out.code, 0, "{out:?}");
        }
        s
    }

    /// Starts an agent for `project` with its certificate, taking artifacts from the
    /// cluster's `artifacts/` only.
    pub async fn add_agent(&mut self, project: &str) {
        self.start_agent("default", project, project).await;
    }

    /// [`Secure::add_agent`] in environment `env` (its certificate
    /// `agent-<env>-<project>` must be in the certs dir), known as `env/project`.
    pub async fn add_env_agent(&mut self, env: &str, project: &str) {
        self.start_agent(env, project, &format!("{env}/{project}"))
            .await;
    }

    /// [`Secure::add_env_agent`], then registered in `env` by the admin at its URL.
    pub async fn add_registered_env_agent(&mut self, env: &str, project: &str) {
        self.add_env_agent(env, project).await;
        let endpoint = self.agents[&format!("{env}/{project}")].server.https_url();
        let add = [
            "-e",
            env,
            "project",
            "add",
            project,
            "--endpoint",
            &endpoint,
        ];
        let out = self.cli(&admin(), &add).await;
        assert_eq!(out.code, 0, "{out:?}");
    }

    async fn start_agent(&mut self, env: &str, project: &str, key: &str) {
        let file = |name: &str| self.certs.join(name).display().to_string();
        let name = key.replace('/', "-");
        let root = self.dir.path().join(format!("deploy-{name}"));
        let args = vec![
            "--project".to_string(),
            project.into(),
            "--environment".into(),
            env.into(),
            "--data-dir".into(),
            self.dir
                .path()
                .join(format!("agent-{name}"))
                .display()
                .to_string(),
            "--deploy-root".into(),
            root.display().to_string(),
            "--coordinator".into(),
            self.coordinator.https_url(),
            "--tls-cert".into(),
            file(&format!("agent-{env}-{project}.crt")),
            "--tls-key".into(),
            file(&format!("agent-{env}-{project}.key")),
            "--tls-client-ca".into(),
            file("ca.crt"),
            "--artifact-root".into(),
            self.dir.path().join("artifacts").display().to_string(),
            "--ask-decision-after".into(),
            "1s".into(),
            "--prepare-hook".into(),
            format!(
                "while [ -e \"{}/$LOCKSTEP_PROJECT.block\" ]; do sleep 0.02; done",
                self.dir.path().display()
            ),
        ];
        let log = self.dir.path().join(format!("agent-{name}.log"));
        let server = Server::start(
            &format!("agent-{name}"),
            bin("lockstep-agent"),
            args,
            Vec::new(),
            log,
            0,
        )
        .await;
        let agent = Agent {
            project: project.into(),
            server,
            deploy_root: root,
        };
        self.agents.insert(key.to_string(), agent);
    }

    /// Makes `project`'s Prepare wait until [`Secure::heal`].
    pub fn block(&self, project: &str) {
        std::fs::write(self.dir.path().join(format!("{project}.block")), "").unwrap();
    }

    pub fn heal(&self, project: &str) {
        let _ = std::fs::remove_file(self.dir.path().join(format!("{project}.block")));
    }

    /// The CLI flags that make `who`'s credentials.
    pub fn credentials(&self, who: &As) -> Vec<String> {
        let file = |name: &str| self.certs.join(name).display().to_string();
        let mut flags = vec!["--ca".to_string(), file("ca.crt")];
        match who {
            As::User(name) => flags.extend([
                "--cert".into(),
                file(&format!("user-{name}.crt")),
                "--key".into(),
                file(&format!("user-{name}.key")),
            ]),
            As::Files(cert, key) => flags.extend([
                "--cert".into(),
                cert.display().to_string(),
                "--key".into(),
                key.display().to_string(),
            ]),
            As::Token(token) => flags.extend(["--token".into(), token.clone()]),
            As::Nobody => {}
        }
        flags
    }

    /// Runs `lockstep` as `who` against the coordinator.
    pub async fn cli(&self, who: &As, args: &[&str]) -> Cli {
        let out = tokio::time::timeout(
            DEADLINE * 2,
            Command::new(bin("lockstep"))
                .args(self.credentials(who))
                .args(args)
                .env("LOCKSTEP_COORDINATOR", self.coordinator.https_url())
                .env_remove("LOCKSTEP_TOKEN")
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("lockstep {args:?} did not finish"))
        .unwrap();
        Cli {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// A token made by the admin: `lockstep token create ARGS -o json`.
    pub async fn token(&self, args: &[&str]) -> (String, String) {
        let mut all = vec!["token", "create"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.cli(&admin(), &all).await;
        assert_eq!(out.code, 0, "{out:?}");
        let json = out.json();
        let text = |k: &str| json[k].as_str().unwrap().to_string();
        (text("id"), text("token"))
    }

    /// An artifact directory for `project` at `version`, inside the agents' root.
    pub fn artifact(&self, project: &str, version: &str) -> String {
        let dir = self
            .dir
            .path()
            .join("artifacts")
            .join(format!("{project}-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("VERSION"), version).unwrap();
        format!("{project}={}", dir.display())
    }

    /// TLS towards the deployment with `cert`/`key` (file names in the certs dir), or
    /// with no client certificate.
    pub fn tls(&self, identity: Option<(&str, &str)>) -> ClientTlsConfig {
        let read = |name: &str| std::fs::read(self.certs.join(name)).unwrap();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.crt")));
        if let Some((cert, key)) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(read(cert), read(key)));
        }
        tls
    }

    /// A Participant client to `project`'s agent, as the holder of `identity`'s files.
    pub async fn agent_client(
        &self,
        project: &str,
        identity: Option<(&str, &str)>,
    ) -> ParticipantClient<Channel> {
        let url = self.agents[project].server.https_url();
        let channel = Channel::from_shared(url)
            .unwrap()
            .tls_config(self.tls(identity))
            .unwrap()
            .connect()
            .await
            .unwrap();
        ParticipantClient::new(channel)
    }

    /// A Coordinator client as the holder of `identity`'s files.
    pub async fn coordinator_client(&self, identity: (&str, &str)) -> CoordinatorClient<Channel> {
        self.coordinator_over_tls(Some(identity)).await
    }

    /// A Coordinator client over TLS as the holder of `identity`'s files, or with no
    /// client certificate (a caller who brings a token: see [`with_token`]).
    pub async fn coordinator_over_tls(
        &self,
        identity: Option<(&str, &str)>,
    ) -> CoordinatorClient<Channel> {
        let channel = Channel::from_shared(self.coordinator.https_url())
            .unwrap()
            .tls_config(self.tls(identity))
            .unwrap()
            .connect()
            .await
            .unwrap();
        CoordinatorClient::new(channel)
    }

    /// What each agent has live.
    pub fn live(&self) -> BTreeMap<String, Option<String>> {
        self.agents
            .iter()
            .map(|(p, a)| (p.clone(), a.live()))
            .collect()
    }
}

/// `message` as a call bearing `token`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let bearer = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    request
}
