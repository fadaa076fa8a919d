//! How `lockstep` shows things: aligned tables for people, the proto3 JSON mapping for
//! scripts (`-o json`, the same shape grpcurl prints).

use lockstep::pb;
use serde::Serialize;

use crate::args::Output;

/// Prints a message in the proto3 JSON mapping (what `-o json` prints).
pub fn json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("messages serialize")
    );
}

/// Prints rows as columns aligned on the widest cell.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// `-` for an empty cell.
pub fn or_none(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

/// `TRANSACTION_STATE_COMMITTED` → `COMMITTED`.
fn state(s: i32) -> String {
    pb::TransactionState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TRANSACTION_STATE_")
                .to_string()
        })
        .unwrap_or_else(|_| s.to_string())
}

fn kind(k: i32) -> String {
    pb::TransactionKind::try_from(k)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("TRANSACTION_KIND_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

/// What a participant's move does, in words: a version that was live before is
/// re-activated (whether it is older or newer by its name: "downgrade" misnamed a move
/// from 1.3.0 back to 3.0.0).
fn action(a: i32) -> String {
    match pb::Action::try_from(a) {
        Ok(pb::Action::Downgrade) => "re-activate".into(),
        Ok(a) => a.as_str_name().trim_start_matches("ACTION_").to_lowercase(),
        Err(_) => String::new(),
    }
}

fn vote(v: i32) -> String {
    match pb::Vote::try_from(v) {
        Ok(pb::Vote::Prepared) => "prepared".into(),
        Ok(pb::Vote::Refused) => "REFUSED".into(),
        Ok(pb::Vote::NoAnswer) => "NO ANSWER".into(),
        _ => "-".into(),
    }
}

pub fn schema(s: &Option<pb::SchemaVersion>) -> String {
    match s {
        Some(s) if s.version != 0 => format!("{} {}", s.version, s.name),
        _ => "-".into(),
    }
}

/// `1 create_users -> 2 add_email`, or just the version when it does not move.
fn schema_move(from: &Option<pb::SchemaVersion>, to: &Option<pb::SchemaVersion>) -> String {
    match (schema(from).as_str(), schema(to).as_str()) {
        ("-", "-") => "-".into(),
        (a, b) if a == b => a.to_string(),
        (a, b) => format!("{a} -> {b}"),
    }
}

/// The commit waves as `0) B, C  1) A`: numbered from 0, as `wave` in the JSON is.
fn waves(waves: &[pb::CommitWave]) -> String {
    waves
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{i}) {}", w.projects.join(", ")))
        .collect::<Vec<_>>()
        .join("  ")
}

/// `project add`.
pub fn project_registered(out: Output, r: &pb::RegisterProjectResponse) {
    let what = if r.changed { "registered" } else { "unchanged" };
    project_stored(out, r, r.project.as_ref(), what);
}

/// `project remove`.
pub fn project_removed(out: Output, r: &pb::RemoveProjectResponse) {
    project_stored(out, r, r.project.as_ref(), "removed");
}

/// `project set`.
pub fn project_updated(out: Output, r: &pb::UpdateProjectResponse) {
    let what = if r.changed { "changed" } else { "unchanged" };
    project_stored(out, r, r.project.as_ref(), what);
}

fn project_stored<T: serde::Serialize>(out: Output, r: &T, p: Option<&pb::Project>, what: &str) {
    match out {
        Output::Json => json(r),
        Output::Table => {
            let p = p.cloned().unwrap_or_default();
            println!(
                "project {} {what}: {}{}",
                p.name,
                p.endpoint,
                requires(&p.requires)
            );
        }
    }
}

fn requires(r: &[String]) -> String {
    if r.is_empty() {
        String::new()
    } else {
        format!(" (requires {})", r.join(", "))
    }
}

/// `project list`.
/// `project list`. `scheme` is how this CLI reaches the coordinator (`https://` when it
/// runs mutual TLS, which it then also uses to reach agents): an endpoint of the other
/// scheme is flagged, as its agent cannot be reached.
pub fn projects(out: Output, r: &pb::ListProjectsResponse, scheme: &str) {
    match out {
        Output::Json => json(r),
        Output::Table => table(
            &["PROJECT", "ENDPOINT", "REQUIRES"],
            r.projects
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        endpoint(&p.endpoint, scheme),
                        or_none(&p.requires.join(",")),
                    ]
                })
                .collect(),
        ),
    }
}

fn endpoint(endpoint: &str, scheme: &str) -> String {
    match endpoint.starts_with(scheme) {
        true => endpoint.to_string(),
        false => format!("{endpoint} (! not {scheme}: `project set`)"),
    }
}

/// A plan (dry run, or alongside an accepted transaction).
pub fn plan(out: Output, p: &pb::Plan, title: &str) {
    if out == Output::Json {
        return json(p);
    }
    println!("Plan ({title}):");
    table(
        &["PROJECT", "FROM", "TO", "ACTION", "SCHEMA"],
        p.changes
            .iter()
            .map(|c| {
                vec![
                    c.project.clone(),
                    or_none(&c.from_version),
                    c.to_version.clone(),
                    action(c.action),
                    schema_move(&c.from_schema, &c.to_schema),
                ]
            })
            .collect(),
    );
    for c in p.changes.iter().filter(|c| !c.migrations.is_empty()) {
        println!(
            "Migrations {} would run, in order: {}",
            c.project,
            c.migrations.join(", ")
        );
    }
    println!(
        "Commit waves (children first; undo runs in reverse): {}",
        waves(&p.waves)
    );
    if !p.preconditions.is_empty() {
        println!("Preconditions:");
        for c in &p.preconditions {
            println!(
                "  [{}] {}: {}",
                if c.passed { "ok" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
    }
    if !p.waits_for.is_empty() {
        println!("Would wait for: {}", p.waits_for.join(", "));
    }
    println!("Result: {}", if p.allowed { "allowed" } else { "REFUSED" });
}

/// A transaction accepted without --wait.
pub fn accepted(out: Output, r: &pb::CreateTransactionResponse) {
    if out == Output::Json {
        return json(r);
    }
    accepted_brief(r);
    if let Some(t) = &r.transaction {
        transaction(out, t);
    }
}

/// One line saying a transaction was accepted (to stderr: progress, not the result).
pub fn accepted_brief(r: &pb::CreateTransactionResponse) {
    if let Some(t) = &r.transaction {
        let again = if r.created {
            "accepted"
        } else {
            "already exists (same request): returning it"
        };
        eprintln!(
            "{} {} {again}: {}{}",
            kind(t.kind),
            t.id,
            state(t.state),
            if t.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", t.reason)
            }
        );
    }
}

/// One transaction with its participants.
pub fn transaction(out: Output, t: &pb::Transaction) {
    if out == Output::Json {
        return json(t);
    }
    let mut headline = format!(
        "{} {} [{}]: {}",
        kind(t.kind),
        t.id,
        t.environment,
        state(t.state)
    );
    if t.checkpoint != 0 {
        headline.push_str(&format!(", checkpoint {}", t.checkpoint));
    }
    if t.forced {
        headline.push_str(", FORCED (untested combination)");
    }
    if t.quarantined {
        headline.push_str(", QUARANTINED (pulled by a revert)");
    }
    if t.needs_resolution {
        headline.push_str(", NEEDS RESOLUTION (see `lockstep resolve`)");
    }
    println!("{headline}");
    if !t.created_by.is_empty() {
        println!("  created by {}", t.created_by);
    }
    if !t.ticket.is_empty() {
        println!("  ticket {}", t.ticket);
    }
    if !t.trace_id.is_empty() {
        println!("  trace {}", t.trace_id);
    }
    if !t.reason.is_empty() {
        println!("  {}", t.reason);
    }
    if !t.reverts.is_empty() {
        println!("  reverts: {}", t.reverts.join(", "));
    }
    if !t.promoted_from.is_empty() {
        println!("  promoted from {}", t.promoted_from);
    }
    participants(t);
    for p in t
        .participants
        .iter()
        .filter(|p| !p.staged_artifact.is_empty())
    {
        println!(
            "  {} {} staged: {}",
            p.project, p.to_version, p.staged_artifact
        );
    }
    let staged = [
        pb::TransactionState::Preparing,
        pb::TransactionState::Verifying,
    ];
    if staged.iter().any(|s| *s as i32 == t.state) {
        for p in t.participants.iter().filter(|p| !p.test_uri.is_empty()) {
            println!("  {} {} staged at {}", p.project, p.to_version, p.test_uri);
        }
    }
    if !t.live_check.is_empty() {
        println!("  verification after commit: {}", t.live_check);
    }
    steps(&t.steps);
}

fn participants(t: &pb::Transaction) {
    table(
        &[
            "PROJECT", "FROM", "TO", "ACTION", "WAVE", "VOTE", "ACKED", "SCHEMA", "NOTE",
        ],
        t.participants
            .iter()
            .map(|p| {
                vec![
                    p.project.clone(),
                    or_none(&p.from_version),
                    p.to_version.clone(),
                    action(p.action),
                    p.wave.to_string(),
                    vote(p.vote),
                    if p.acknowledged {
                        "yes".into()
                    } else {
                        "-".into()
                    },
                    schema(&p.to_schema),
                    note(p),
                ]
            })
            .collect(),
    );
}

/// The verify steps, in the order they run, with their outcomes.
fn steps(steps: &[pb::VerifyStep]) {
    if steps.is_empty() {
        return;
    }
    println!("verify steps:");
    let row = |s: &pb::VerifyStep| {
        let status = pb::StepStatus::try_from(s.status).map_or("?", |s| s.as_str_name());
        let mut outcome = s.reason.clone();
        if !s.link.is_empty() {
            outcome = format!("{outcome} ({})", s.link).trim().to_string();
        }
        vec![
            s.name.clone(),
            s.kind.clone(),
            status.trim_start_matches("STEP_STATUS_").to_string(),
            or_none(&s.actor),
            or_none(&outcome),
        ]
    };
    table(
        &["STEP", "KIND", "STATUS", "BY", "OUTCOME"],
        steps.iter().map(row).collect(),
    );
}

/// What a participant's row says last: why it needs a person, how one resolved it,
/// its delivery error, or its vote's reason.
fn note(p: &pb::Participation) -> String {
    if p.needs_resolution {
        format!("NEEDS RESOLUTION: {}", p.delivery_error)
    } else if !p.resolution.is_empty() {
        p.resolution.clone()
    } else if !p.delivery_error.is_empty() {
        p.delivery_error.clone()
    } else {
        p.vote_reason.clone()
    }
}

/// `resolve`: what was (or would be) recorded, then the transaction.
pub fn resolved(out: Output, r: &pb::ResolveParticipantResponse) {
    if out == Output::Json {
        return json(r);
    }
    let verb = if r.applied {
        "recorded"
    } else {
        "dry run: would record"
    };
    println!("{verb}; the participant answered: {}", r.participant_status);
    if let Some(t) = &r.transaction {
        transaction(out, t);
    }
}

/// `release list`.
pub fn transactions(out: Output, r: &pb::ListReleasesResponse) {
    if out == Output::Json {
        return json(r);
    }
    table(
        &[
            "ID",
            "ENV",
            "CREATED",
            "KIND",
            "STATE",
            "CHECKPOINT",
            "CHANGES",
            "REASON",
        ],
        r.transactions
            .iter()
            .map(|t| {
                vec![
                    t.id.clone(),
                    t.environment.clone(),
                    when(t.created_at.as_ref()),
                    kind(t.kind),
                    state(t.state),
                    if t.checkpoint == 0 {
                        "-".into()
                    } else {
                        t.checkpoint.to_string()
                    },
                    t.participants
                        .iter()
                        .map(|p| format!("{}={}", p.project, p.to_version))
                        .collect::<Vec<_>>()
                        .join(" "),
                    t.reason.clone(),
                ]
            })
            .collect(),
    );
}

/// A time in a table: UTC to the second, `-` when there is none.
pub fn when(t: Option<&lockstep::wkt::Timestamp>) -> String {
    let Some(t) = t.filter(|t| t.seconds > 0) else {
        return "-".into();
    };
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.seconds as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn versions(c: &pb::Checkpoint) -> String {
    c.versions
        .iter()
        .map(|v| format!("{}={}", v.project, v.version))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `live`.
pub fn live(out: Output, l: &pb::LiveState) {
    if out == Output::Json {
        return json(l);
    }
    match &l.checkpoint {
        None => println!("environment {}: nothing released yet", l.environment),
        Some(c) => {
            println!(
                "environment {}: checkpoint {} ({}){}",
                l.environment,
                c.revision,
                c.description,
                if c.untested {
                    " UNTESTED COMBINATION"
                } else {
                    ""
                }
            );
            table(
                &["PROJECT", "VERSION", "SCHEMA"],
                c.versions
                    .iter()
                    .map(|v| vec![v.project.clone(), v.version.clone(), schema(&v.schema)])
                    .collect(),
            );
        }
    }
    for t in &l.in_flight {
        let acked: Vec<&str> = t
            .participants
            .iter()
            .filter(|p| p.acknowledged)
            .map(|p| p.project.as_str())
            .collect();
        let waiting: Vec<&str> = t
            .participants
            .iter()
            .filter(|p| !p.acknowledged)
            .map(|p| p.project.as_str())
            .collect();
        println!(
            "in phase 2: {} {} {}: acknowledged [{}], waiting for [{}]",
            kind(t.kind),
            t.id,
            state(t.state),
            acked.join(", "),
            waiting.join(", ")
        );
        for p in t
            .participants
            .iter()
            .filter(|p| !p.delivery_error.is_empty())
        {
            println!("  {}: {}", p.project, note(p));
        }
    }
    for t in &l.pending {
        println!("{} {} {}: {}", kind(t.kind), t.id, state(t.state), t.reason);
    }
}

/// `history`.
pub fn history(out: Output, h: &pb::GetHistoryResponse) {
    if out == Output::Json {
        return json(h);
    }
    table(
        &[
            "REVISION",
            "COMMITTED",
            "TRANSACTION",
            "DESCRIPTION",
            "VERSIONS",
            "UNTESTED",
        ],
        h.checkpoints
            .iter()
            .map(|c| {
                vec![
                    c.revision.to_string(),
                    when(c.committed_at.as_ref()),
                    c.transaction_id.clone(),
                    c.description.clone(),
                    versions(c),
                    if c.untested { "YES".into() } else { "-".into() },
                ]
            })
            .collect(),
    );
}

/// One event as a line: `#12 T4 VOTE_RECEIVED C: C refused T4C: ...`.
pub fn event_line(e: &pb::Event) -> String {
    let kind = pb::EventKind::try_from(e.kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("EVENT_KIND_")
                .to_string()
        })
        .unwrap_or_default();
    let subject = if e.transaction_id.is_empty() {
        e.project.clone()
    } else {
        e.transaction_id.clone()
    };
    let by = if e.actor.is_empty() {
        String::new()
    } else {
        format!(" (by {})", e.actor)
    };
    format!("#{} {} {}: {}{by}", e.seq, subject, kind, e.message)
}

/// A new token: the token alone on stdout (for `$(lockstep token create ...)`), its id
/// and expiry on stderr.
pub fn token(out: Output, r: &pb::CreateTokenResponse) {
    if out == Output::Json {
        return json(r);
    }
    println!("{}", r.token);
    let seconds = r.expires.as_ref().map(|t| t.seconds).unwrap_or_default();
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.max(0) as u64);
    let expires = humantime::format_rfc3339_seconds(at);
    eprintln!(
        "token {} (expires {expires}; revoke with `lockstep token revoke {}`)",
        r.id, r.id
    );
}

/// The audit log as a table (or JSON).
pub fn audit(out: Output, events: &[pb::Event]) {
    if out == Output::Json {
        return json(&serde_json::json!({ "events": events }));
    }
    let rows = events
        .iter()
        .map(|e| vec![e.seq.to_string(), or_none(&e.actor), event_line(e)])
        .collect();
    table(&["SEQ", "ACTOR", "EVENT"], rows);
}

/// `lockstep cluster status` (exit 0).
pub fn cluster(out: Output, c: &pb::ClusterStatus) -> u8 {
    if out == Output::Json {
        json(c);
        return 0;
    }
    if c.store != "etcd" {
        println!("store: {} (one instance, on its own disk)", c.store);
        return 0;
    }
    println!("store: etcd");
    println!("leader: {} (term {})", c.leader, c.term);
    println!(
        "lease: {}s left of {}s (renewed every third of it)",
        c.lease_seconds_left, c.lease_seconds_granted
    );
    for m in &c.members {
        println!("member: {m}");
    }
    0
}
