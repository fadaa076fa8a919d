//! Wire ↔ domain conversions for the coordinator, in one place: requests are validated
//! here (every error names its field), records become messages here.

use std::{collections::BTreeMap, collections::BTreeSet, time::Duration};

use lockstep::{
    limits,
    names::{Environment, FieldError, ProjectName, TxId, Version},
    pb, wire,
};

use crate::{
    access::roles::Authority,
    model::{
        Action, CheckpointRecord, ComponentSpec, CreateSpec, DriftRecord, LiveCheck, Participant,
        ProjectRecord, PromoteAsk, Request, Resolution, Schema, StepRun, StepStatus, TxKind,
        TxRecord, TxState, Vote,
    },
    network,
    observe::Observation,
    planner::Plan,
    registry::projects::ProjectChange,
};

/// Longest prepare timeout a request may ask for.
const MAX_PREPARE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

// ----- requests -----

/// Validates RegisterProject.
pub fn project(r: pb::RegisterProjectRequest) -> Result<ProjectRecord, FieldError> {
    let name = ProjectName::parse("name", &r.name)?;
    let environment = Environment::parse_or_default("environment", &r.environment)?;
    network::validate_endpoint("endpoint", &r.endpoint)?;
    Ok(ProjectRecord {
        name,
        environment,
        endpoint: r.endpoint,
        requires: children("requires", &r.requires)?,
        live_from: 0,
    })
}

/// Validates UpdateProject.
pub fn project_change(r: pb::UpdateProjectRequest) -> Result<ProjectChange, FieldError> {
    if let Some(endpoint) = &r.endpoint {
        network::validate_endpoint("endpoint", endpoint)?;
    }
    let requires = r.requires.map(|c| children("requires.names", &c.names));
    Ok(ProjectChange {
        name: ProjectName::parse("name", &r.name)?,
        environment: Environment::parse_or_default("environment", &r.environment)?,
        endpoint: r.endpoint,
        requires: requires.transpose()?,
    })
}

/// A project's children, sorted, each named once.
fn children(field: &str, names: &[String]) -> Result<Vec<ProjectName>, FieldError> {
    let mut requires = Vec::new();
    for (i, child) in names.iter().enumerate() {
        let child = ProjectName::parse(&format!("{field}[{i}]"), child)?;
        if requires.contains(&child) {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                format!("{child} is listed twice"),
            ));
        }
        requires.push(child);
    }
    requires.sort();
    Ok(requires)
}

/// Validates CreateRelease.
pub fn release(r: pb::CreateReleaseRequest) -> Result<CreateSpec, FieldError> {
    Ok(CreateSpec {
        id: chosen_id("id", &r.id)?,
        id_hint: None,
        environment: Environment::parse_or_default("environment", &r.environment)?,
        request: Request::Release {
            components: components(r.components)?,
            force: r.force,
            allow_quarantined: r.allow_quarantined,
        },
        prepare_timeout: prepare_timeout("prepare_timeout", r.prepare_timeout.as_ref())?,
        dry_run: r.dry_run,
        actor: String::new(),
        authority: Authority::Unrecorded,
        ticket: ticket(&r.ticket)?,
        promoted_from: None,
        again_after_restart: false,
    })
}

/// A release's components, each valid, one per project, sorted by project.
fn components(wire: Vec<pb::Component>) -> Result<Vec<ComponentSpec>, FieldError> {
    if wire.is_empty() {
        return Err(FieldError::new(
            "components",
            "must name at least one project",
        ));
    }
    bounded("components", wire.len(), limits::MAX_COMPONENTS)?;
    let mut seen = BTreeSet::new();
    let mut components = Vec::new();
    for (i, c) in wire.into_iter().enumerate() {
        let project = ProjectName::parse(&format!("components[{i}].project"), &c.project)?;
        if !seen.insert(project.clone()) {
            return Err(FieldError::new(
                format!("components[{i}].project"),
                format!("project {project} appears twice; a release has one version per project"),
            ));
        }
        components.push(component(i, project, c)?);
    }
    components.sort_by(|a, b| a.project.cmp(&b.project));
    Ok(components)
}

fn component(
    i: usize,
    project: ProjectName,
    c: pb::Component,
) -> Result<ComponentSpec, FieldError> {
    let field = |name: &str| format!("components[{i}].{name}");
    let version = Version::parse(&field("version"), &c.version)?;
    text(
        &field("artifact"),
        &c.artifact,
        limits::MAX_METADATA_VALUE_LEN,
    )?;
    lockstep::reference::parse(&c.artifact)
        .map_err(|reason| FieldError::new(field("artifact"), reason))?;
    bounded(
        &field("metadata"),
        c.metadata.len(),
        limits::MAX_METADATA_ENTRIES,
    )?;
    for (k, v) in &c.metadata {
        let name = field(&format!("metadata[{k:?}]"));
        text(&name, k, limits::MAX_METADATA_VALUE_LEN)?;
        text(&name, v, limits::MAX_METADATA_VALUE_LEN)?;
    }
    Ok(ComponentSpec {
        project,
        version,
        artifact: c.artifact,
        metadata: c.metadata.into_iter().collect::<BTreeMap<_, _>>(),
    })
}

fn bounded(field: &str, len: usize, limit: usize) -> Result<(), FieldError> {
    if len > limit {
        return Err(FieldError::new(
            field,
            format!("has {len} entries, the limit is {limit}"),
        ));
    }
    Ok(())
}

/// Validates RevertRelease.
pub fn revert(r: pb::RevertReleaseRequest) -> Result<CreateSpec, FieldError> {
    let release = TxId::parse("release_id", &r.release_id)?;
    Ok(CreateSpec {
        id: chosen_id("id", &r.id)?,
        id_hint: Some(format!("revert-{release}")),
        environment: Environment::parse_or_default("environment", &r.environment)?,
        request: Request::Revert {
            release,
            cascade: r.cascade,
        },
        prepare_timeout: prepare_timeout("prepare_timeout", r.prepare_timeout.as_ref())?,
        dry_run: r.dry_run,
        actor: String::new(),
        authority: Authority::Unrecorded,
        ticket: ticket(&r.ticket)?,
        promoted_from: None,
        again_after_restart: false,
    })
}

/// Validates Rollback; `resolved` is the revision after mapping 0 to "the previous one".
pub fn rollback(r: pb::RollbackRequest, resolved: u64) -> Result<CreateSpec, FieldError> {
    Ok(CreateSpec {
        id: chosen_id("id", &r.id)?,
        id_hint: Some(format!("rollback-to-{resolved}")),
        environment: Environment::parse_or_default("environment", &r.environment)?,
        request: Request::Rollback {
            revision: resolved,
            allow_quarantined: r.allow_quarantined,
        },
        prepare_timeout: prepare_timeout("prepare_timeout", r.prepare_timeout.as_ref())?,
        dry_run: r.dry_run,
        actor: String::new(),
        authority: Authority::Unrecorded,
        ticket: ticket(&r.ticket)?,
        promoted_from: None,
        again_after_restart: false,
    })
}

/// Validates Promote: what to promote, and the create spec's common part (the target
/// environment, id, deadline, dry run, ticket).
pub fn promote(r: pb::PromoteRequest) -> Result<(PromoteAsk, CreateSpec), FieldError> {
    let to = Environment::parse("to", &r.to)?;
    let release = optional_id("release", &r.release)?;
    if release.is_some() && r.checkpoint != 0 {
        return Err(FieldError::new(
            "release",
            "give a checkpoint or a release, not both",
        ));
    }
    let ask = PromoteAsk {
        from: Environment::parse("from", &r.from)?,
        to: to.clone(),
        checkpoint: (r.checkpoint != 0).then_some(r.checkpoint),
        release,
        force: r.force,
    };
    let base = CreateSpec {
        id: chosen_id("id", &r.id)?,
        id_hint: None,
        environment: to,
        request: Request::Rollback {
            revision: 0,
            allow_quarantined: false,
        },
        prepare_timeout: prepare_timeout("prepare_timeout", r.prepare_timeout.as_ref())?,
        dry_run: r.dry_run,
        actor: String::new(),
        authority: Authority::Unrecorded,
        ticket: ticket(&r.ticket)?,
        promoted_from: None,
        again_after_restart: false,
    };
    Ok((ask, base))
}

/// Validates ResolveParticipant: the transaction, the participant, and what to record
/// (`as` and a `reason` are required: the log keeps why).
pub fn resolution(
    r: &pb::ResolveParticipantRequest,
) -> Result<(TxId, ProjectName, Resolution), FieldError> {
    let id = TxId::parse("transaction_id", &r.transaction_id)?;
    let project = ProjectName::parse("project", &r.project)?;
    let committed = match pb::Resolution::try_from(r.r#as) {
        Ok(pb::Resolution::Committed) => true,
        Ok(pb::Resolution::Aborted) => false,
        _ => {
            let why = "must be RESOLUTION_COMMITTED or RESOLUTION_ABORTED: say what the participant really did";
            return Err(FieldError::new("as", why));
        }
    };
    if r.reason.trim().is_empty() {
        let why = "is required: the log keeps why a participant was resolved by hand";
        return Err(FieldError::new("reason", why));
    }
    text("reason", &r.reason, limits::MAX_TEXT_LEN)?;
    let resolution = Resolution {
        committed,
        actor: actor(&r.actor)?,
        reason: r.reason.clone(),
        status: String::new(),
    };
    Ok((id, project, resolution))
}

/// A page size: 0 means `default`; above 1000 is refused naming `field`.
pub fn page_size(field: &str, size: u32, default: usize) -> Result<usize, FieldError> {
    match size {
        0 => Ok(default),
        n if n > 1000 => Err(FieldError::new(
            field,
            format!("{n} is above the maximum of 1000"),
        )),
        n => Ok(n as usize),
    }
}

/// The cursor in a page token `<kind>:<n>` ("" for the first page).
pub fn page_token(field: &str, token: &str, kind: &str) -> Result<Option<u64>, FieldError> {
    if token.is_empty() {
        return Ok(None);
    }
    let cursor = token
        .strip_prefix(kind)
        .and_then(|t| t.strip_prefix(':'))
        .and_then(|n| n.parse().ok());
    let why = format!("{token:?} is not a token this call returned (expected {kind}:N)");
    cursor.map(Some).ok_or_else(|| FieldError::new(field, why))
}

/// The token of the page after one whose last cursor is `next`.
pub fn next_token(kind: &str, next: Option<u64>) -> String {
    next.map(|n| format!("{kind}:{n}")).unwrap_or_default()
}

/// A release ticket: empty, or an absolute http(s) URL.
pub fn ticket(ticket: &str) -> Result<String, FieldError> {
    if !ticket.is_empty() {
        http_url("ticket", ticket)?;
    }
    Ok(ticket.to_string())
}

/// An absolute `http://` or `https://` URL with a host, at most 2048 bytes.
pub fn http_url(field: &str, value: &str) -> Result<reqwest::Url, FieldError> {
    text(field, value, 2048)?;
    // Quoted as shown: a refusal goes to CI logs, credentials must not.
    let quoted = shown_url(value);
    let url = reqwest::Url::parse(value)
        .map_err(|e| FieldError::new(field, format!("{quoted:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        let why = format!("{quoted:?} must be an http:// or https:// URL with a host");
        return Err(FieldError::new(field, why));
    }
    Ok(url)
}

/// `url` as callers see it and the log, traces and errors say it: userinfo and query,
/// where credentials and tokens travel, are `***` (`https://***@host/path?***`), the
/// fragment is dropped. A stored subscription keeps the whole URL for delivery.
pub fn shown_url(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return unparsed_shown(url);
    };
    let userinfo = !parsed.username().is_empty() || parsed.password().is_some();
    if !userinfo && parsed.query().is_none() && parsed.fragment().is_none() {
        return url.to_string();
    }
    if userinfo && (parsed.set_password(None).is_err() || parsed.set_username("***").is_err()) {
        return unparsed_shown(url);
    }
    if parsed.query().is_some() {
        parsed.set_query(Some("***"));
    }
    parsed.set_fragment(None);
    parsed.into()
}

/// [`shown_url`] of what is no URL: cut at the query or fragment, and anything up to
/// the last `@` after the scheme is `***`.
fn unparsed_shown(raw: &str) -> String {
    let (rest, cut) = match raw.find(['?', '#']) {
        Some(at) => (&raw[..at], "?***"),
        None => (raw, ""),
    };
    let (scheme, rest) = rest.split_once("://").unwrap_or(("", rest));
    let rest = match rest.rfind('@') {
        Some(at) => format!("***@{}", &rest[at + 1..]),
        None => rest.to_string(),
    };
    let scheme = if scheme.is_empty() {
        String::new()
    } else {
        format!("{scheme}://")
    };
    format!("{scheme}{rest}{cut}")
}

/// Who asked ("unknown" when nobody said; authentication will fill this in).
pub fn actor(actor: &str) -> Result<String, FieldError> {
    text("actor", actor, 200)?;
    Ok(if actor.is_empty() {
        "unknown".to_string()
    } else {
        actor.to_string()
    })
}

fn optional_id(field: &str, id: &str) -> Result<Option<TxId>, FieldError> {
    (!id.is_empty()).then(|| TxId::parse(field, id)).transpose()
}

/// Ids the coordinator keeps for the transactions it creates by itself (`auto-revert-`
/// for the revert of a release that failed its live check, `promote-` for an automatic
/// promotion): they are known in advance, and a caller who took one first would make
/// the automatic one refused.
pub const AUTOMATIC_ID_PREFIXES: [&str; 2] = ["auto-", "promote-"];

/// A new transaction's id as the caller chose it, outside the automatic ones'
/// (promotions created without an id still get `promote-` ids, chosen by the
/// coordinator).
fn chosen_id(field: &str, id: &str) -> Result<Option<TxId>, FieldError> {
    let automatic = AUTOMATIC_ID_PREFIXES.iter().find(|p| id.starts_with(*p));
    match automatic {
        Some(prefix) => Err(FieldError::new(
            field,
            format!(
                "{id:?}: ids beginning with {prefix:?} are the coordinator's own (automatic reverts and promotions); choose another"
            ),
        )),
        None => optional_id(field, id),
    }
}

/// A free-text field: bounded, no control characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(FieldError::new(
            field,
            format!("is {} bytes long, the limit is {max}", value.len()),
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn prepare_timeout(
    field: &str,
    d: Option<&lockstep::wkt::Duration>,
) -> Result<Option<Duration>, FieldError> {
    let Some(raw) = d else { return Ok(None) };
    let d = wire::std_duration(Some(raw))
        .ok_or_else(|| FieldError::new(field, "must not be negative"))?;
    if d.is_zero() {
        return Err(FieldError::new(field, "must be longer than zero"));
    }
    if d > MAX_PREPARE_TIMEOUT {
        return Err(FieldError::new(
            field,
            format!("{d:?} is longer than the limit of 24h"),
        ));
    }
    Ok(Some(d))
}

// ----- records to messages -----

/// Lifecycle state on the wire.
pub fn state(s: TxState) -> pb::TransactionState {
    match s {
        TxState::Pending => pb::TransactionState::Pending,
        TxState::Preparing => pb::TransactionState::Preparing,
        TxState::Verifying => pb::TransactionState::Verifying,
        TxState::Committing => pb::TransactionState::Committing,
        TxState::Aborting => pb::TransactionState::Aborting,
        TxState::Committed => pb::TransactionState::Committed,
        TxState::Aborted => pb::TransactionState::Aborted,
    }
}

/// Vote on the wire.
pub fn vote(v: Vote) -> pb::Vote {
    match v {
        Vote::None => pb::Vote::Unspecified,
        Vote::Prepared => pb::Vote::Prepared,
        Vote::Refused => pb::Vote::Refused,
        Vote::NoAnswer => pb::Vote::NoAnswer,
    }
}

/// Action on the wire.
pub fn action(a: Action) -> pb::Action {
    pb::Action::from(a)
}

fn kind(k: TxKind) -> pb::TransactionKind {
    match k {
        TxKind::Release => pb::TransactionKind::Release,
        TxKind::Revert => pb::TransactionKind::Revert,
        TxKind::Rollback => pb::TransactionKind::Rollback,
    }
}

fn schema(s: &Option<Schema>) -> Option<pb::SchemaVersion> {
    s.as_ref().map(pb::SchemaVersion::from)
}

fn waves(w: &[Vec<ProjectName>]) -> Vec<pb::CommitWave> {
    w.iter()
        .map(|w| pb::CommitWave {
            projects: w.iter().map(|p| p.to_string()).collect(),
        })
        .collect()
}

/// A project as a message.
pub fn project_message(p: &ProjectRecord) -> pb::Project {
    pb::Project {
        name: p.name.to_string(),
        environment: p.environment.to_string(),
        endpoint: p.endpoint.clone(),
        requires: p.requires.iter().map(|r| r.to_string()).collect(),
    }
}

/// A transaction as a message.
pub fn transaction(t: &TxRecord) -> pb::Transaction {
    pb::Transaction {
        id: t.id.to_string(),
        environment: t.environment.to_string(),
        kind: kind(t.kind) as i32,
        state: state(t.state) as i32,
        participants: t.participants.iter().map(participation).collect(),
        reason: t.reason.clone(),
        reverts: t.reverts.iter().map(|r| r.to_string()).collect(),
        rollback_to: t.rollback_to,
        forced: t.forced,
        quarantined: t.quarantined,
        checkpoint: t.checkpoint,
        prepare_timeout: Some(wire::duration(Duration::from_millis(t.prepare_timeout_ms))),
        created_at: wire::timestamp(t.created_ms),
        finished_at: wire::timestamp(t.finished_ms),
        waves: waves(&t.waves),
        needs_resolution: t.participants.iter().any(|p| p.needs_resolution),
        created_by: t.created_by.clone(),
        ticket: t.ticket.clone(),
        steps: t.steps.iter().map(step_run).collect(),
        promoted_from: t
            .promoted_from
            .as_ref()
            .map(|(env, cp)| format!("{env} checkpoint {cp}"))
            .unwrap_or_default(),
        live_check: match &t.live_check {
            LiveCheck::None => String::new(),
            LiveCheck::Soaking => "soaking".into(),
            LiveCheck::Passed => "passed".into(),
            LiveCheck::Failed(why) => format!("failed: {why}"),
        },
        trace_id: lockstep::trace::trace_id_of(&t.trace_parent),
    }
}

fn step_run(s: &StepRun) -> pb::VerifyStep {
    let status = match s.status {
        StepStatus::Waiting => pb::StepStatus::Waiting,
        StepStatus::Triggered => pb::StepStatus::Triggered,
        StepStatus::Started => pb::StepStatus::Started,
        StepStatus::Passed => pb::StepStatus::Passed,
        StepStatus::Failed => pb::StepStatus::Failed,
    };
    pb::VerifyStep {
        name: s.step.name.clone(),
        kind: s.step.kind.describe(),
        status: status as i32,
        deadline: Some(wire::duration(Duration::from_millis(s.step.deadline_ms))),
        reason: s.reason.clone(),
        link: s.link.clone(),
        actor: s.actor.clone(),
    }
}

fn participation(p: &Participant) -> pb::Participation {
    pb::Participation {
        project: p.project.to_string(),
        endpoint: p.endpoint.clone(),
        from_version: p
            .from_version
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_default(),
        to_version: p.to_version.to_string(),
        action: action(p.action) as i32,
        artifact: p.artifact.clone(),
        metadata: p.metadata.clone().into_iter().collect(),
        vote: vote(p.vote) as i32,
        vote_reason: p.vote_reason.clone(),
        acknowledged: p.acknowledged,
        wave: p.wave,
        from_schema: schema(&p.from_schema),
        to_schema: schema(&p.to_schema),
        migrations: p.migrations.clone(),
        delivery_error: p.delivery_error.clone(),
        needs_resolution: p.needs_resolution,
        restore: p.restore,
        target_schema: schema(&p.target_schema),
        test_uri: p.test_uri.clone(),
        staged_artifact: p.staged_artifact.clone(),
        resolution: p
            .resolution
            .as_ref()
            .map(|r| r.describe())
            .unwrap_or_default(),
    }
}

/// A plan as a message.
pub fn plan(p: &Plan, waits_for: &[TxId]) -> pb::Plan {
    pb::Plan {
        changes: p
            .participants
            .iter()
            .map(|c| pb::PlannedChange {
                project: c.project.to_string(),
                from_version: c
                    .from_version
                    .as_ref()
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                to_version: c.to_version.to_string(),
                action: action(c.action) as i32,
                migrations: c.migrations.clone(),
                from_schema: schema(&c.from_schema),
                to_schema: schema(&c.to_schema),
            })
            .collect(),
        waves: waves(&p.waves),
        preconditions: p
            .preconditions
            .iter()
            .map(|c| pb::Precondition {
                name: c.name.to_string(),
                passed: c.passed,
                detail: c.detail.clone(),
            })
            .collect(),
        allowed: p.allowed(),
        waits_for: waits_for.iter().map(|t| t.to_string()).collect(),
    }
}

/// A checkpoint as a message.
pub fn checkpoint(c: &CheckpointRecord) -> pb::Checkpoint {
    pb::Checkpoint {
        revision: c.revision,
        environment: c.environment.to_string(),
        versions: c
            .versions
            .iter()
            .map(|(p, e)| pb::LiveVersion {
                project: p.to_string(),
                version: e.version.to_string(),
                schema: schema(&e.schema),
            })
            .collect(),
        transaction_id: c.transaction.to_string(),
        kind: kind(c.kind) as i32,
        description: c.description.clone(),
        untested: c.untested,
        committed_at: wire::timestamp(c.committed_ms),
    }
}

/// An agent's answer beside the checkpoint, for `live --observed`.
pub fn observation(o: &Observation) -> pb::ObservedProject {
    let running = o.running.as_ref();
    pb::ObservedProject {
        project: o.project.to_string(),
        expected_version: o
            .expected
            .as_ref()
            .map(|e| e.version.to_string())
            .unwrap_or_default(),
        running_version: running.map(|r| r.live_version.clone()).unwrap_or_default(),
        expected_schema: o.expected.as_ref().and_then(|e| schema(&e.schema)),
        running_schema: running.and_then(|r| schema(&r.schema)),
        staged: running
            .map(|r| {
                r.staged
                    .iter()
                    .map(|(tx, v)| format!("{v} ({tx})"))
                    .collect()
            })
            .unwrap_or_default(),
        error: o.error.clone(),
        drift: o.drift(),
        held_by: o
            .held_by
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default(),
        observed_at: wire::timestamp(o.at_ms),
    }
}

/// A drift the drift check found, as `live` shows it.
pub fn drift(d: &DriftRecord) -> pb::ObservedProject {
    pb::ObservedProject {
        project: d.project.to_string(),
        expected_version: d.expected_version.clone(),
        running_version: d.running_version.clone(),
        running_schema: schema(&d.running_schema),
        drift: true,
        observed_at: wire::timestamp(d.observed_ms),
        ..Default::default()
    }
}

/// The etcd cluster as `GetCluster` answers it.
pub fn cluster(view: &lockstep_store::etcd_lead::ClusterView) -> pb::ClusterStatus {
    pb::ClusterStatus {
        store: "etcd".into(),
        leader: view.leader.clone(),
        term: u64::try_from(view.term).unwrap_or_default(),
        members: view
            .members
            .iter()
            .map(|(name, urls)| format!("{name} {}", urls.join(",")))
            .collect(),
        lease_seconds_left: view.lease.0,
        lease_seconds_granted: view.lease.1,
    }
}
