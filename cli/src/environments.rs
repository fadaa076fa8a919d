//! `lockstep env` and `lockstep live --all`: the environments on the promotion path,
//! and the environment × project matrix of what is live (version, schema, checkpoint).

use std::collections::BTreeSet;

use lockstep::pb;

use crate::{
    OK, Result,
    args::{EnvCommand, Output},
    dial::Client,
    render,
};

/// Runs `lockstep env add|list|show`.
pub async fn run(client: &mut Client, out: Output, c: EnvCommand) -> Result<u8> {
    match c {
        EnvCommand::Add { name, after } => {
            let after = after
                .iter()
                .flat_map(|a| a.split(','))
                .filter(|a| !a.is_empty());
            let request = pb::AddEnvironmentRequest {
                name,
                after: after.map(str::to_string).collect(),
            };
            let e = client.add_environment(request).await?.into_inner();
            match out {
                Output::Json => render::json(&e),
                Output::Table if e.unchanged => println!("environment {} unchanged", e.name),
                Output::Table => println!("environment {} declared{}", e.name, upstream(&e)),
            }
        }
        EnvCommand::Apply {
            file,
            dry_run,
            unchecked,
        } => return apply(client, out, &file, (dry_run, unchecked)).await,
        EnvCommand::List => {
            let r = client
                .list_environments(pb::ListEnvironmentsRequest {})
                .await?
                .into_inner();
            match out {
                Output::Json => render::json(&r),
                Output::Table => table(&r.environments),
            }
        }
        EnvCommand::Show { name } => {
            let e = client
                .get_environment(pb::GetEnvironmentRequest { name })
                .await?
                .into_inner();
            match out {
                Output::Json => render::json(&e),
                Output::Table => show(&e),
            }
        }
    }
    Ok(OK)
}

async fn apply(
    client: &mut Client,
    out: Output,
    file: &std::path::Path,
    (dry_run, unchecked): (bool, bool),
) -> Result<u8> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| crate::Failure::usage(format!("-f {}: {e}", file.display())))?;
    let request = pb::ApplyPipelineRequest {
        text,
        dry_run,
        unchecked,
    };
    let r = client.apply_pipeline(request).await?.into_inner();
    match out {
        Output::Json => render::json(&r),
        Output::Table => {
            for change in &r.changes {
                println!("{change}");
            }
            match (dry_run, r.applied) {
                (true, _) => println!(
                    "dry run: nothing applied (pipeline version {} in force)",
                    r.version
                ),
                (false, true) => println!("pipeline version {} applied", r.version),
                (false, false) => {
                    println!("nothing changed (pipeline version {} in force)", r.version)
                }
            }
        }
    }
    Ok(OK)
}

/// Runs `lockstep live --all`.
pub async fn live_all(client: &mut Client, out: Output) -> Result<u8> {
    let list = client
        .list_environments(pb::ListEnvironmentsRequest {})
        .await?
        .into_inner();
    let mut lives = Vec::new();
    for e in promotion_order(&list.environments) {
        let request = pb::GetLiveStateRequest {
            environment: e.name.clone(),
            observe: false,
        };
        lives.push(client.get_live_state(request).await?.into_inner());
    }
    match out {
        Output::Json => render::json(&serde_json::json!({ "environments": lives })),
        Output::Table => matrix(&lives),
    }
    Ok(OK)
}

/// Upstreams before downstreams (then by name): the order of the promotion path. An
/// upstream not in the list (one the caller may not read) counts as placed, so a
/// caller who reads only production still sees production. Whatever is left (never,
/// the coordinator keeps the graph acyclic) comes last, never dropped.
fn promotion_order(all: &[pb::EnvironmentInfo]) -> Vec<&pb::EnvironmentInfo> {
    let listed: BTreeSet<&str> = all.iter().map(|e| e.name.as_str()).collect();
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::new();
    while order.len() < all.len() {
        let ready = all.iter().filter(|e| !placed.contains(e.name.as_str()));
        let upstream_placed =
            |a: &String| placed.contains(a.as_str()) || !listed.contains(a.as_str());
        let ready: Vec<_> = ready
            .filter(|e| e.after.iter().all(upstream_placed))
            .collect();
        if ready.is_empty() {
            order.extend(all.iter().filter(|e| !placed.contains(e.name.as_str())));
            break;
        }
        placed.extend(ready.iter().map(|e| e.name.as_str()));
        order.extend(ready);
    }
    order
}

fn matrix(lives: &[pb::LiveState]) {
    let versions = |l: &pb::LiveState| {
        l.checkpoint
            .as_ref()
            .map(|c| c.versions.clone())
            .unwrap_or_default()
    };
    let projects: BTreeSet<String> = lives.iter().flat_map(versions).map(|v| v.project).collect();
    let mut header = vec!["PROJECT".to_string()];
    header.extend(lives.iter().map(|l| match &l.checkpoint {
        Some(c) => format!("{} (checkpoint {})", l.environment, c.revision),
        None => format!("{} (none)", l.environment),
    }));
    let rows = projects.iter().map(|p| {
        let mut row = vec![p.clone()];
        row.extend(lives.iter().map(|l| cell(&versions(l), p)));
        row
    });
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    render::table(&header, rows.collect());
}

fn cell(versions: &[pb::LiveVersion], project: &str) -> String {
    match versions.iter().find(|v| v.project == project) {
        Some(v) => match &v.schema {
            Some(s) if s.version != 0 => format!("{} (schema {})", v.version, s.version),
            _ => v.version.clone(),
        },
        None => "-".into(),
    }
}

fn upstream(e: &pb::EnvironmentInfo) -> String {
    match e.after.is_empty() {
        true => String::new(),
        false => format!(" after {}", e.after.join(", ")),
    }
}

fn table(environments: &[pb::EnvironmentInfo]) {
    let header = ["ENVIRONMENT", "AFTER", "PROJECTS", "CHECKPOINT", "DECLARED"];
    let rows = promotion_order(environments).into_iter().map(|e| {
        vec![
            e.name.clone(),
            render::or_none(&e.after.join(",")),
            render::or_none(&e.projects.join(",")),
            if e.checkpoint == 0 {
                "-".into()
            } else {
                e.checkpoint.to_string()
            },
            if e.declared {
                "yes".into()
            } else {
                "no (has projects)".into()
            },
        ]
    });
    render::table(&header, rows.collect());
}

fn show(e: &pb::EnvironmentInfo) {
    println!(
        "environment {}{}",
        e.name,
        if e.declared {
            ""
        } else {
            " (not declared: it has projects)"
        }
    );
    println!("  after:      {}", render::or_none(&e.after.join(", ")));
    println!("  before:     {}", render::or_none(&e.before.join(", ")));
    println!("  projects:   {}", render::or_none(&e.projects.join(", ")));
    let checkpoint = if e.checkpoint == 0 {
        "-".into()
    } else {
        e.checkpoint.to_string()
    };
    println!("  checkpoint: {checkpoint}");
    println!("  in force:   {}", e.stages);
    if e.pipeline_version != 0 {
        println!("  from pipeline version {}", e.pipeline_version);
    }
    if !e.created_by.is_empty() {
        println!("  declared by {}", e.created_by);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str, after: &[&str]) -> pb::EnvironmentInfo {
        pb::EnvironmentInfo {
            name: name.into(),
            after: after.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn an_environment_whose_upstream_the_caller_cannot_read_is_still_listed() {
        let all = [env("production", &["hardening"])];
        let order: Vec<_> = promotion_order(&all)
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(order, ["production"]);
    }

    #[test]
    fn upstreams_come_first() {
        let all = [
            env("production", &["hardening"]),
            env("dev", &[]),
            env("hardening", &["dev"]),
        ];
        let order: Vec<_> = promotion_order(&all)
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(order, ["dev", "hardening", "production"]);
    }
}
