//! The permission matrix, asked of a real coordinator over mutual TLS: every row of the
//! permission table (`lockstep_coordinator::access::table`) × every kind of caller
//! (a grant everywhere, over one environment, over one project, over both, a token, a
//! plain certificate, admins of somewhere else, two agents, the coordinator's own
//! certificate, and no credential at all) × each role. What each call must answer —
//! allowed (any status but PERMISSION_DENIED and UNAUTHENTICATED) or refused — comes
//! from the table itself, never from a second list here: this test proves the handlers
//! ask the table the right question on what each request really names.
//!
//! Given a coordinator with a registered project, two environments, two committed
//! releases, a webhook subscription and tokens, when every refused call is made first,
//! then the log (but for its ACCESS_DENIED events) and everything a caller can read are
//! unchanged; then every allowed call is made and none is refused.

#![allow(clippy::unwrap_used)]

mod support;

use std::{collections::BTreeSet, time::Instant};

use lockstep::{
    names::{Environment, ProjectName},
    pb::{self, coordinator_client::CoordinatorClient},
};
use lockstep_coordinator::access::{
    Principal, Standing, parse_grant,
    roles::{Grant, Role},
    table::{self, ROLES, Rule, Target},
};
use support::{
    DEADLINE, Server, bin,
    secure::{Secure, admin, certs_init},
};
use tokio::process::Command;
use tonic::{
    Code, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// The environment the scoped grants hold in, where the fixtures live.
const ENV: &str = "default";
/// The environment downstream of it (promotions go there).
const PROD: &str = "prod";
/// The project the scoped grants hold for.
const PROJECT: &str = "A";

/// Adds a bearer token to every call (when there is one).
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

type Client = CoordinatorClient<InterceptedService<Channel, Bearer>>;

/// One kind of caller: its name in failures, its client (one channel, reused), and
/// who the coordinator should see (`None`: no credential, UNAUTHENTICATED).
struct Caller {
    name: String,
    client: Client,
    seen: Option<Principal>,
}

/// What the matrix's requests name.
struct Fixtures {
    /// The agent of A in `ENV`, as registered.
    endpoint: String,
    /// An artifact for a release of A.
    artifact: String,
    /// The id of a token no caller uses, for RevokeToken.
    spare_token: String,
    /// That token.
    spare_bearer: String,
}

fn env(name: &str) -> Environment {
    Environment::parse("environment", name).unwrap()
}

fn project() -> ProjectName {
    ProjectName::parse("project", PROJECT).unwrap()
}

/// A grant over `ENV` and `PROJECT` for `role` (the tokens' and CreateToken's shape).
fn scoped(role: Role) -> Grant {
    Grant {
        role,
        environments: vec![ENV.into()],
        projects: vec![PROJECT.into()],
    }
}

/// The users given a grant with `--grant`: (name, `--grant` value) per shape and role,
/// plus the admins of somewhere else.
fn granted_users() -> Vec<(String, String)> {
    let mut users = Vec::new();
    for role in ROLES {
        let r = role.name();
        users.push((format!("g-{r}"), r.to_string()));
        users.push((format!("e-{r}"), format!("{r}@{ENV}")));
        users.push((format!("p-{r}"), format!("{r}/{PROJECT}")));
        users.push((format!("ep-{r}"), format!("{r}@{ENV}/{PROJECT}")));
    }
    users.push(("x-env".into(), format!("admin@{PROD}")));
    users.push(("x-proj".into(), "admin/B".into()));
    users
}

/// Certificates for everyone (agents of A in both environments), a coordinator with
/// the grants, and both agents.
async fn start() -> Secure {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let mut names: Vec<String> = granted_users().into_iter().map(|u| u.0).collect();
    names.extend(["admin".into(), "plain".into()]);
    certs_init(&certs, PROJECT, &names.join(",")).await;
    let out = Command::new(bin("lockstep"))
        .args(["certs", "init"])
        .arg(&certs)
        .args(["--env", PROD, "--agents", PROJECT, "--users", "admin"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "certs init --env {PROD}: {out:?}");
    std::fs::create_dir_all(dir.path().join("artifacts")).unwrap();
    let coordinator = start_coordinator(dir.path(), &certs).await;
    let mut s = Secure {
        dir,
        certs,
        coordinator,
        agents: Default::default(),
    };
    s.add_agent(PROJECT).await;
    s.add_env_agent(PROD, PROJECT).await;
    s
}

async fn start_coordinator(dir: &std::path::Path, certs: &std::path::Path) -> Server {
    let file = |name: &str| certs.join(name).display().to_string();
    let mut args = vec![
        "--data-dir".to_string(),
        dir.join("coordinator").display().to_string(),
        "--tls-cert".into(),
        file("coordinator.crt"),
        "--tls-key".into(),
        file("coordinator.key"),
        "--tls-client-ca".into(),
        file("ca.crt"),
    ];
    for (name, grant) in granted_users() {
        args.extend(["--grant".into(), format!("{name}={grant}")]);
    }
    let log = dir.join("coordinator.log");
    let bin = bin("lockstep-coordinator");
    Server::start("coordinator", bin, args, Vec::new(), log, 0).await
}

/// A client over one TLS channel with `identity`'s files (a certificate and key in the
/// certs dir) and/or a bearer `token`.
async fn client(s: &Secure, identity: Option<&str>, token: Option<&str>) -> Client {
    let files = identity.map(|stem| (format!("{stem}.crt"), format!("{stem}.key")));
    let tls = s.tls(files.as_ref().map(|(c, k)| (c.as_str(), k.as_str())));
    let channel = Channel::from_shared(s.coordinator.https_url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = token.map(|t| format!("Bearer {t}").parse().unwrap());
    CoordinatorClient::with_interceptor(channel, Bearer(bearer))
}

fn granted(actor: String, grants: Vec<Grant>) -> Option<Principal> {
    let standing = Standing::Granted(grants);
    Some(Principal { actor, standing })
}

/// Every caller of the matrix, with who the coordinator should see.
async fn callers(s: &Secure, tokens: &[(Role, String)]) -> Vec<Caller> {
    let mut all = Vec::new();
    for (name, grant) in granted_users() {
        let (_, grant) = parse_grant(&format!("{name}={grant}")).unwrap();
        let client = client(s, Some(&format!("user-{name}")), None).await;
        let seen = granted(format!("user/{name}"), vec![grant]);
        all.push(Caller { name, client, seen });
    }
    for (role, token) in tokens {
        let name = format!("token t-{}", role.name());
        let client = client(s, None, Some(token)).await;
        let seen = granted(name.clone(), vec![scoped(*role)]);
        all.push(Caller { name, client, seen });
    }
    let plain = granted("user/plain".into(), vec![Grant::everywhere(Role::Viewer)]);
    all.push(caller(s, "certificate without --grant", Some("user-plain"), plain).await);
    for environment in [ENV, PROD] {
        let seen = Some(Principal {
            actor: format!("agent/{environment}/{PROJECT}"),
            standing: Standing::Agent {
                environment: env(environment),
                project: project(),
            },
        });
        let stem = format!("agent-{environment}-{PROJECT}");
        all.push(caller(s, &stem.clone(), Some(&stem), seen).await);
    }
    let nothing = Some(Principal {
        actor: "coordinator".into(),
        standing: Standing::Nothing,
    });
    all.push(
        caller(
            s,
            "the coordinator's certificate",
            Some("coordinator"),
            nothing,
        )
        .await,
    );
    all.push(caller(s, "no credential", None, None).await);
    all
}

async fn caller(s: &Secure, name: &str, identity: Option<&str>, seen: Option<Principal>) -> Caller {
    let client = client(s, identity, None).await;
    let name = name.to_string();
    Caller { name, client, seen }
}

/// What the matrix's request for row `key` names (kept next to [`ask`]'s requests).
fn target(key: &str) -> Target {
    let a = || Target::projects(&env(ENV), [project()]);
    match key {
        "RegisterProject"
        | "UpdateProject"
        | "RemoveProject"
        | "CreateRelease"
        | "CreateRelease --force"
        | "RevertRelease"
        | "Rollback"
        | "Rollback --allow-quarantined" => a(),
        "GetRelease" | "AbortRelease" | "WatchEvents" | "GetDecision" | "ResolveParticipant"
        | "RetryDelivery" | "ReportVerify" | "Approve" | "Reject" => a(),
        "ListProjects" | "GetLiveState" | "GetHistory" | "GetEnvironment" => {
            Target::environment(&env(ENV))
        }
        "AddEnvironment" => Target::environment(&env("qa")),
        "Promote" | "Promote --force" => {
            Target::promotion(&env(ENV), Target::projects(&env(PROD), [project()]))
        }
        "CreateToken" => Target::grant(scoped(Role::Viewer)),
        "ListReleases" | "WatchEvents --all" | "RevokeToken" | "ListAudit" | "AddSubscription"
        | "ListSubscriptions" | "RemoveSubscription" | "TestSubscription" | "ListEnvironments"
        | "ApplyPipeline" | "GetCluster" => Target::every(),
        other => panic!("the matrix has no request for row {other}: add one"),
    }
}

/// Makes row `key`'s call (T1 and T2 are committed releases of A in `ENV`).
async fn ask(c: &mut Client, key: &str, f: &Fixtures) -> Result<(), Status> {
    let release = |force: bool| pb::CreateReleaseRequest {
        id: "M1".into(),
        components: vec![pb::Component {
            project: PROJECT.into(),
            version: "M1A".into(),
            artifact: f.artifact.clone(),
            ..Default::default()
        }],
        dry_run: true,
        force,
        ..Default::default()
    };
    let promote = |force: bool| pb::PromoteRequest {
        from: ENV.into(),
        to: PROD.into(),
        dry_run: true,
        force,
        ..Default::default()
    };
    let t1 = || "T1".to_string();
    let approval = || pb::ApprovalRequest {
        transaction_id: t1(),
        reason: "matrix".into(),
        ..Default::default()
    };
    let env = || ENV.to_string();
    match key {
        "RegisterProject" => c
            .register_project(registration(&f.endpoint))
            .await
            .map(drop),
        // The same endpoint: allowed calls change nothing.
        "UpdateProject" => c
            .update_project(pb::UpdateProjectRequest {
                name: PROJECT.into(),
                environment: env(),
                endpoint: Some(f.endpoint.clone()),
                requires: None,
                unchecked: false,
            })
            .await
            .map(drop),
        // The parent registered by the fixtures requires A: allowed calls are refused
        // by that rule, after the permission check, and remove nothing.
        "RemoveProject" => c
            .remove_project(pb::RemoveProjectRequest {
                name: PROJECT.into(),
                environment: env(),
            })
            .await
            .map(drop),
        "ListProjects" => c
            .list_projects(pb::ListProjectsRequest { environment: env() })
            .await
            .map(drop),
        "CreateRelease" => c.create_release(release(false)).await.map(drop),
        "CreateRelease --force" => c.create_release(release(true)).await.map(drop),
        "RevertRelease" => c
            .revert_release(pb::RevertReleaseRequest {
                release_id: "T2".into(),
                dry_run: true,
                ..Default::default()
            })
            .await
            .map(drop),
        "Rollback" | "Rollback --allow-quarantined" => c
            .rollback(pb::RollbackRequest {
                revision: 1,
                environment: env(),
                dry_run: true,
                allow_quarantined: key.ends_with("quarantined"),
                ..Default::default()
            })
            .await
            .map(drop),
        "GetRelease" => c
            .get_release(pb::GetReleaseRequest { id: t1() })
            .await
            .map(drop),
        "ListReleases" => c
            .list_releases(pb::ListReleasesRequest::default())
            .await
            .map(drop),
        "AbortRelease" => c
            .abort_release(pb::AbortReleaseRequest {
                id: t1(),
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        "WatchEvents" | "WatchEvents --all" => {
            let transaction_id = if key == "WatchEvents" {
                t1()
            } else {
                String::new()
            };
            let watch = pb::WatchEventsRequest {
                transaction_id,
                ..Default::default()
            };
            c.watch_events(watch).await.map(drop)
        }
        "GetLiveState" => c
            .get_live_state(pb::GetLiveStateRequest {
                environment: env(),
                observe: true,
            })
            .await
            .map(drop),
        "GetHistory" => c
            .get_history(pb::GetHistoryRequest {
                environment: env(),
                ..Default::default()
            })
            .await
            .map(drop),
        "GetDecision" => c
            .get_decision(pb::GetDecisionRequest {
                transaction_id: t1(),
                project: PROJECT.into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "ResolveParticipant" => c
            .resolve_participant(pb::ResolveParticipantRequest {
                transaction_id: t1(),
                project: PROJECT.into(),
                r#as: pb::Resolution::Committed as i32,
                reason: "matrix".into(),
                dry_run: true,
                ..Default::default()
            })
            .await
            .map(drop),
        "RetryDelivery" => c
            .retry_delivery(pb::RetryDeliveryRequest {
                transaction_id: t1(),
                ..Default::default()
            })
            .await
            .map(drop),
        "CreateToken" => c
            .create_token(pb::CreateTokenRequest {
                role: "viewer".into(),
                environments: vec![env()],
                projects: vec![PROJECT.into()],
                // For the caller itself: a token for another person needs admin over
                // everything (t95 checks that).
                subject: String::new(),
                ..Default::default()
            })
            .await
            .map(drop),
        "RevokeToken" => c
            .revoke_token(pb::RevokeTokenRequest {
                id: f.spare_token.clone(),
            })
            .await
            .map(drop),
        "ListAudit" => c
            .list_audit(pb::ListAuditRequest::default())
            .await
            .map(drop),
        "AddSubscription" => c
            .add_subscription(pb::AddSubscriptionRequest {
                name: "added-in-matrix".into(),
                url: "http://127.0.0.1:9/matrix".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "ListSubscriptions" => c
            .list_subscriptions(pb::ListSubscriptionsRequest {})
            .await
            .map(drop),
        "GetCluster" => c.get_cluster(pb::GetClusterRequest {}).await.map(drop),
        "RemoveSubscription" => c
            .remove_subscription(pb::RemoveSubscriptionRequest {
                name: "fixture".into(),
            })
            .await
            .map(drop),
        "TestSubscription" => c
            .test_subscription(pb::TestSubscriptionRequest {
                name: "fixture".into(),
            })
            .await
            .map(drop),
        "AddEnvironment" => c
            .add_environment(pb::AddEnvironmentRequest {
                name: "qa".into(),
                after: Vec::new(),
            })
            .await
            .map(drop),
        "ListEnvironments" => c
            .list_environments(pb::ListEnvironmentsRequest {})
            .await
            .map(drop),
        "GetEnvironment" => c
            .get_environment(pb::GetEnvironmentRequest { name: env() })
            .await
            .map(drop),
        "ApplyPipeline" => c
            .apply_pipeline(pb::ApplyPipelineRequest {
                text: PIPELINE.into(),
                dry_run: true,
                unchecked: false,
            })
            .await
            .map(drop),
        "ReportVerify" => c
            .report_verify(pb::ReportVerifyRequest {
                transaction_id: t1(),
                step: "tests".into(),
                outcome: pb::VerifyOutcome::Passed as i32,
                ..Default::default()
            })
            .await
            .map(drop),
        "Approve" => c.approve(approval()).await.map(drop),
        "Reject" => c.reject(approval()).await.map(drop),
        "Promote" => c.promote(promote(false)).await.map(drop),
        "Promote --force" => c.promote(promote(true)).await.map(drop),
        other => panic!("the matrix has no request for row {other}: add one"),
    }
}

/// The pipeline the fixtures declare (ApplyPipeline applies it again, as a dry run).
const PIPELINE: &str = "[[environment]]\nname = \"default\"\n\n[[environment]]\nname = \"prod\"\nafter = [\"default\"]\n";

fn registration(endpoint: &str) -> pb::RegisterProjectRequest {
    pb::RegisterProjectRequest {
        name: PROJECT.into(),
        environment: ENV.into(),
        endpoint: endpoint.into(),
        requires: Vec::new(),
        unchecked: false,
    }
}

/// What the matrix's request for `key` names as the coordinator reads it from
/// `principal`: an agent asks GetDecision from its own environment (a transaction of
/// another one under the id is not its own, and is answered ABORT).
fn target_for(key: &str, principal: &Principal) -> Target {
    match (&principal.standing, key) {
        (Standing::Agent { environment, .. }, "GetDecision") => {
            Target::projects(environment, [project()])
        }
        _ => target(key),
    }
}

/// What the table says `caller` must hear for `rule`: `None` allowed, else the code.
fn expected(caller: &Caller, rule: &Rule) -> Option<Code> {
    match &caller.seen {
        None => Some(Code::Unauthenticated),
        Some(p) if rule.admits(p, &target_for(rule.key, p)) => None,
        Some(_) => Some(Code::PermissionDenied),
    }
}

/// Makes every call of the matrix whose expectation is refused (`refused`) or allowed
/// (`!refused`), failing on the first answer that differs from the table. Returns how
/// many calls were made.
async fn run_phase(callers: &mut [Caller], f: &Fixtures, refused: bool) -> usize {
    let mut made = 0;
    for caller in callers.iter_mut() {
        for rule in table::TABLE {
            let want = expected(caller, rule);
            if want.is_some() != refused {
                continue;
            }
            let got = ask(&mut caller.client, rule.key, f).await.err();
            let got_code = got.as_ref().map(Status::code);
            let answer = format!("{} as {}: {got:?}", rule.key, caller.name);
            match want {
                Some(code) => assert_eq!(got_code, Some(code), "the table refuses {answer}"),
                None => assert!(
                    !matches!(
                        got_code,
                        Some(Code::PermissionDenied | Code::Unauthenticated)
                    ),
                    "the table allows {answer}"
                ),
            }
            made += 1;
        }
    }
    made
}

/// Everything a caller can read, with what refused calls may change left out (the
/// log's ACCESS_DENIED events and head, webhook delivery progress), and how many
/// ACCESS_DENIED events the log holds.
async fn visible_state(c: &mut Client) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    for environment in [ENV, PROD] {
        out.extend(environment_state(c, environment).await);
    }
    let releases = c.list_releases(pb::ListReleasesRequest::default());
    out.push(format!("{:?}", releases.await.unwrap().into_inner()));
    let environments = c.list_environments(pb::ListEnvironmentsRequest {});
    out.push(format!("{:?}", environments.await.unwrap().into_inner()));
    out.extend(subscriptions(c).await);
    let (log, denied) = log(c).await;
    out.extend(log);
    (out, denied)
}

/// Live state (without the log's head), projects and history of `environment`.
async fn environment_state(c: &mut Client, environment: &str) -> Vec<String> {
    let environment = environment.to_string();
    let live = pb::GetLiveStateRequest {
        environment: environment.clone(),
        observe: false,
    };
    let mut live = c.get_live_state(live).await.unwrap().into_inner();
    live.last_event_seq = 0;
    let projects = pb::ListProjectsRequest {
        environment: environment.clone(),
    };
    let projects = c.list_projects(projects).await.unwrap().into_inner();
    let history = pb::GetHistoryRequest {
        environment,
        ..Default::default()
    };
    let history = c.get_history(history).await.unwrap().into_inner();
    vec![
        format!("{live:?}"),
        format!("{projects:?}"),
        format!("{history:?}"),
    ]
}

/// Each subscription without its delivery progress.
async fn subscriptions(c: &mut Client) -> Vec<String> {
    let list = c.list_subscriptions(pb::ListSubscriptionsRequest {});
    let list = list.await.unwrap().into_inner().subscriptions;
    list.into_iter()
        .map(|s| {
            format!(
                "{} {} {:?} {} {}",
                s.name, s.url, s.events, s.environment, s.created_by
            )
        })
        .collect()
}

/// Every event of the log but the ACCESS_DENIED ones, and how many those are.
async fn log(c: &mut Client) -> (Vec<String>, usize) {
    let head = pb::GetLiveStateRequest::default();
    let latest = c
        .get_live_state(head)
        .await
        .unwrap()
        .into_inner()
        .last_event_seq;
    let watch = pb::WatchEventsRequest {
        from_seq: 1,
        ..Default::default()
    };
    let mut stream = c.watch_events(watch).await.unwrap().into_inner();
    let (mut out, mut denied, mut seq) = (Vec::new(), 0, 0);
    while seq < latest {
        let next = tokio::time::timeout(DEADLINE, stream.message()).await;
        let e = next.unwrap().unwrap().unwrap();
        seq = e.seq;
        match e.kind == pb::EventKind::AccessDenied as i32 {
            true => denied += 1,
            false => out.push(format!("{e:?}")),
        }
    }
    (out, denied)
}

/// The fixtures: A registered in both environments, `prod` after `default`, releases
/// T1 and T2 of A committed in `default`, the subscription `fixture`, the callers'
/// tokens and a spare one.
async fn fixtures(s: &Secure, boot: &mut Client) -> (Fixtures, Vec<(Role, String)>) {
    let pipeline = pb::ApplyPipelineRequest {
        text: PIPELINE.into(),
        dry_run: false,
        unchecked: false,
    };
    boot.apply_pipeline(pipeline).await.unwrap();
    let endpoint = s.agents[PROJECT].server.https_url();
    boot.register_project(registration(&endpoint))
        .await
        .unwrap();
    let parent = pb::RegisterProjectRequest {
        name: "Parent".into(),
        requires: vec![PROJECT.into()],
        unchecked: true,
        ..registration(&endpoint)
    };
    boot.register_project(parent).await.unwrap();
    let mut in_prod = registration(&s.agents[&format!("{PROD}/{PROJECT}")].server.https_url());
    in_prod.environment = PROD.into();
    boot.register_project(in_prod).await.unwrap();
    for id in ["T1", "T2"] {
        let artifact = s.artifact(PROJECT, &format!("{id}A"));
        let version = format!("A={id}A");
        let args = [
            "release",
            "create",
            id,
            &version,
            "--artifact",
            &artifact,
            "--wait",
        ];
        let out = s.cli(&admin(), &args).await;
        assert_eq!(out.code, 0, "{id} commits: {out:?}");
    }
    let fixture = pb::AddSubscriptionRequest {
        name: "fixture".into(),
        url: "http://127.0.0.1:9/fixture".into(),
        ..Default::default()
    };
    boot.add_subscription(fixture).await.unwrap();
    let mut tokens = Vec::new();
    for role in ROLES {
        tokens.push((
            role,
            token(boot, scoped(role), &format!("t-{}", role.name()))
                .await
                .1,
        ));
    }
    let (spare_token, spare_bearer) = token(boot, scoped(Role::Viewer), "spare").await;
    let artifact = s.artifact(PROJECT, "M1A");
    let artifact = artifact.split_once('=').unwrap().1.to_string();
    let f = Fixtures {
        endpoint,
        artifact,
        spare_token,
        spare_bearer,
    };
    (f, tokens)
}

/// A token for `subject` carrying `grant`: (id, token).
async fn token(boot: &mut Client, grant: Grant, subject: &str) -> (String, String) {
    let made = boot.create_token(pb::CreateTokenRequest {
        role: grant.role.name().into(),
        environments: grant.environments,
        projects: grant.projects,
        subject: subject.into(),
        ..Default::default()
    });
    let made = made.await.unwrap().into_inner();
    (made.id, made.token)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_answers_every_caller_as_the_permission_table_says() {
    let started = Instant::now();
    let s = start().await;
    let mut admin = client(&s, Some("user-admin"), None).await;
    let (f, tokens) = fixtures(&s, &mut admin).await;
    let mut callers = callers(&s, &tokens).await;
    let (before, denied_before) = visible_state(&mut admin).await;

    let refused = run_phase(&mut callers, &f, true).await;
    let (after, denied_after) = visible_state(&mut admin).await;
    let mut spare = client(&s, None, Some(&f.spare_bearer)).await;
    let still = spare
        .get_live_state(pb::GetLiveStateRequest::default())
        .await;
    let allowed = run_phase(&mut callers, &f, false).await;

    assert_eq!(
        after, before,
        "refused calls wrote more than their ACCESS_DENIED events"
    );
    assert!(denied_after > denied_before, "refused calls are audited");
    assert!(still.is_ok(), "no refused RevokeToken revoked: {still:?}");
    let calls = table::TABLE.len() * callers.len();
    assert_eq!(refused + allowed, calls);
    let shapes: BTreeSet<&str> = callers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(shapes.len(), callers.len(), "callers are told apart");
    eprintln!(
        "permission matrix: {} rows x {} callers = {calls} calls ({refused} refused, {allowed} allowed) in {:?}",
        table::TABLE.len(),
        callers.len(),
        started.elapsed()
    );
}
