//! Answers made for the console out of several gRPC calls, each made for the caller
//! with its own permission check: who the caller is and what it may do (so the page
//! hides what the server would refuse), and the environment × project matrix.

use std::collections::{BTreeMap, BTreeSet};

use axum::{
    extract::{Query, State, rejection::QueryRejection},
    response::{IntoResponse, Response},
};
use lockstep::{
    names::{Environment, ProjectName, TxId},
    pb,
    pb::coordinator_server::Coordinator as Rpc,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::Status;

use super::{
    Api,
    caller::{Caller, failure},
    routes::{Fields, invoke},
};
use crate::{
    access::{
        Principal,
        roles::person,
        table::{TABLE, Target},
    },
    service::CoordinatorService,
};

/// What `whoami` is asked about: an environment, or one transaction (not both). An
/// unknown parameter is refused: `?transactionId=T4` answered for every environment
/// would tell the creator of T4 it may approve it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct About {
    environment: Option<String>,
    transaction: Option<String>,
}

/// `GET /api/v1/whoami[?environment=E|transaction=T]`: the principal, what it holds,
/// and for every call of the permission table whether it may make it there.
pub async fn whoami(
    State(api): State<Api>,
    caller: Caller,
    about: Result<Query<About>, QueryRejection>,
) -> Response {
    let about = about.map_err(|e| Status::invalid_argument(format!("whoami: {}", e.body_text())));
    match about {
        Ok(about) => json_or_failure(allowed(&api, &caller, &about).await),
        Err(refused) => failure(&refused),
    }
}

async fn allowed(api: &Api, caller: &Caller, about: &About) -> Result<Value, Status> {
    let principal = caller.principal(api)?;
    let (target, creator) = target(api, caller, about).await?;
    let mut may: BTreeMap<&str, bool> = TABLE
        .iter()
        .map(|rule| (rule.key, rule.admits(&principal, &target)))
        .collect();
    let mut notes = serde_json::Map::new();
    // Four eyes is for approval only: the creator may Reject, as it may Abort.
    if creator.as_deref().is_some_and(|c| created(&principal, c)) {
        may.insert("Approve", false);
        let why = "you created it: approval needs another person (four eyes)";
        notes.insert("Approve".into(), why.into());
    }
    Ok(json!({
        "actor": principal.actor,
        "holds": principal.holds(),
        "secure": api.access.is_secure(),
        "may": may,
        "notes": notes,
    }))
}

/// Whether `principal` is the person who created a transaction (`creator`).
fn created(principal: &Principal, creator: &str) -> bool {
    !creator.is_empty() && person(creator) == person(&principal.actor)
}

/// The target `about` names, and the creator of the transaction it names.
async fn target(
    api: &Api,
    caller: &Caller,
    about: &About,
) -> Result<(Target, Option<String>), Status> {
    if about.transaction.is_some() && about.environment.is_some() {
        let why = "environment, transaction: name one (a transaction has its own environment)";
        return Err(Status::invalid_argument(why));
    }
    if let Some(id) = &about.transaction {
        let id = TxId::parse("transaction", id)?;
        let fields = Fields::from_iter([("id".to_string(), Value::String(id.to_string()))]);
        let tx = invoke(
            api,
            caller,
            Ok(fields),
            |s: CoordinatorService, r| async move { Rpc::get_release(&s, r).await },
        )
        .await?
        .into_inner();
        let env = Environment::parse("environment", &tx.environment)?;
        let projects = tx.participants.iter();
        let projects: Result<Vec<_>, _> = projects
            .map(|p| ProjectName::parse("project", &p.project))
            .collect();
        return Ok((Target::projects(&env, projects?), Some(tx.created_by)));
    }
    match &about.environment {
        Some(env) => Ok((
            Target::environment(&Environment::parse_or_default("environment", env)?),
            None,
        )),
        None => Ok((Target::every(), None)),
    }
}

/// `GET /api/v1/matrix`: every environment the caller may read, along the promotion
/// path (upstreams first), its checkpoint and what is active there, and one cell per
/// environment and project the caller may read: the live version and schema, and the
/// transaction holding it, if one does; and the head of the log, for a page that
/// follows the log from there.
pub async fn matrix(
    State(api): State<Api>,
    caller: Caller,
    none: Result<Query<NoParameters>, QueryRejection>,
) -> Response {
    match none {
        Ok(_) => json_or_failure(build_matrix(&api, &caller).await),
        Err(e) => failure(&Status::invalid_argument(format!(
            "matrix: {}",
            e.body_text()
        ))),
    }
}

/// The query of a route that takes none: anything given is refused, not ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParameters {}

async fn build_matrix(api: &Api, caller: &Caller) -> Result<Value, Status> {
    let listed = invoke(
        api,
        caller,
        Ok(Fields::new()),
        |s: CoordinatorService, r| async move { Rpc::list_environments(&s, r).await },
    )
    .await?
    .into_inner();
    let mut environments = Vec::new();
    let mut cells = Vec::new();
    let mut projects = BTreeSet::new();
    let mut last_event_seq = 0;
    for info in along_the_path(listed.environments) {
        let live = live_state(api, caller, &info.name).await?;
        last_event_seq = last_event_seq.max(live.last_event_seq);
        projects.extend(info.projects.iter().cloned());
        cells.extend(env_cells(&info, &live));
        environments.push(env_column(&info, &live));
    }
    Ok(json!({
        "projects": projects,
        "environments": environments,
        "cells": cells,
        "lastEventSeq": last_event_seq.to_string(),
    }))
}

async fn live_state(api: &Api, caller: &Caller, env: &str) -> Result<pb::LiveState, Status> {
    let fields = Fields::from_iter([("environment".into(), Value::String(env.into()))]);
    let live = invoke(
        api,
        caller,
        Ok(fields),
        |s: CoordinatorService, r| async move { Rpc::get_live_state(&s, r).await },
    );
    Ok(live.await?.into_inner())
}

/// Environments with every upstream before its downstreams (ties by name).
fn along_the_path(mut left: Vec<pb::EnvironmentInfo>) -> Vec<pb::EnvironmentInfo> {
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut ordered = Vec::new();
    while !left.is_empty() {
        let ready = |e: &pb::EnvironmentInfo| {
            e.after
                .iter()
                .all(|u| placed.contains(u) || !left.iter().any(|l| &l.name == u))
        };
        let next = left.iter().position(ready).unwrap_or(0);
        let env = left.remove(next);
        placed.insert(env.name.clone());
        ordered.push(env);
    }
    ordered
}

/// One environment's column head: its place on the path, checkpoint and activity.
fn env_column(info: &pb::EnvironmentInfo, live: &pb::LiveState) -> Value {
    let active: Vec<Value> = live
        .in_flight
        .iter()
        .chain(&live.pending)
        .map(|t| {
            json!({"id": t.id, "state": state_name(t.state), "kind": kind_name(t.kind),
                   "promotedFrom": t.promoted_from})
        })
        .collect();
    json!({
        "name": info.name,
        "after": info.after,
        "stages": info.stages,
        "checkpoint": live.checkpoint,
        "active": active,
        "drift": live.drift.iter().map(|d| &d.project).collect::<Vec<_>>(),
    })
}

/// The cells of one environment: each project's live version and its holder.
fn env_cells(info: &pb::EnvironmentInfo, live: &pb::LiveState) -> Vec<Value> {
    let versions = live.checkpoint.as_ref().map(|c| c.versions.as_slice());
    let holder = |project: &str| {
        live.in_flight
            .iter()
            .chain(&live.pending)
            .find(|t| t.participants.iter().any(|p| p.project == project))
    };
    info.projects
        .iter()
        .map(|project| {
            let live = versions.and_then(|v| v.iter().find(|v| &v.project == project));
            let held = holder(project);
            json!({
                "environment": info.name,
                "project": project,
                "version": live.map(|l| l.version.as_str()).unwrap_or(""),
                "schema": live.and_then(|l| l.schema.as_ref()),
                "heldBy": held.map(|t| t.id.as_str()),
                "heldState": held.map(|t| state_name(t.state)),
            })
        })
        .collect()
}

fn state_name(state: i32) -> &'static str {
    pb::TransactionState::try_from(state)
        .map(|s| s.as_str_name())
        .unwrap_or("TRANSACTION_STATE_UNSPECIFIED")
}

fn kind_name(kind: i32) -> &'static str {
    pb::TransactionKind::try_from(kind)
        .map(|k| k.as_str_name())
        .unwrap_or("TRANSACTION_KIND_UNSPECIFIED")
}

fn json_or_failure(answer: Result<Value, Status>) -> Response {
    match answer {
        Ok(value) => axum::Json(value).into_response(),
        Err(status) => failure(&status),
    }
}
