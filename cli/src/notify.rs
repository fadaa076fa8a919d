//! `lockstep notify`: webhook subscriptions (operators add, remove and ping them;
//! anyone who may read sees their progress).

use std::path::Path;

use lockstep::pb;

use crate::{
    Failure, OK, REFUSED, Result,
    args::{NotifyCommand, Output},
    dial::Client,
    render,
};

/// Runs `lockstep notify add|list|remove|test`.
pub async fn run(client: &mut Client, out: Output, c: NotifyCommand) -> Result<u8> {
    match c {
        NotifyCommand::Add { .. } => {
            let request = add_request(c)?;
            let s = client.add_subscription(request).await?.into_inner();
            show(out, std::slice::from_ref(&s), "added");
        }
        NotifyCommand::List => {
            let request = pb::ListSubscriptionsRequest {};
            let r = client.list_subscriptions(request).await?.into_inner();
            match out {
                Output::Json => render::json(&r),
                Output::Table => table(&r.subscriptions),
            }
        }
        NotifyCommand::Remove { name } => {
            let request = pb::RemoveSubscriptionRequest { name };
            let r = client.remove_subscription(request).await?.into_inner();
            show(out, r.subscription.as_slice(), "removed");
        }
        NotifyCommand::Test { name } => return test(client, out, name).await,
    }
    Ok(OK)
}

/// `lockstep -e ENV notify add ...`: the environment named on the command line filters
/// the subscription as `--env ENV` does. Until stop 62 it was ignored, and the
/// subscription got every environment's events. Both naming different environments is
/// a usage error.
pub fn filter_on(c: &mut NotifyCommand, named: &str) -> Result<()> {
    let NotifyCommand::Add { env, .. } = c else {
        return Ok(());
    };
    match env {
        None => *env = Some(named.to_string()),
        Some(given) if given != named => {
            return Err(Failure::usage(format!(
                "--env {given} and -e {named} name different environments: a subscription filters on one (give --env alone)"
            )));
        }
        Some(_) => {}
    }
    Ok(())
}

fn add_request(c: NotifyCommand) -> Result<pb::AddSubscriptionRequest> {
    let NotifyCommand::Add {
        name,
        url,
        events,
        env,
        project,
        mode,
        secret_file,
        from_seq,
        ticket_sink,
    } = c
    else {
        unreachable!("only add is routed here")
    };
    Ok(pb::AddSubscriptionRequest {
        name,
        url,
        events: events
            .into_iter()
            .flat_map(|e| e.split(',').map(str::to_string).collect::<Vec<_>>())
            .filter(|e| !e.is_empty())
            .collect(),
        environment: env.unwrap_or_default(),
        project: project.unwrap_or_default(),
        mode: mode.unwrap_or_default(),
        secret: secret_file
            .as_deref()
            .map(secret)
            .transpose()?
            .unwrap_or_default(),
        from_seq: from_seq.unwrap_or(0),
        ticket_sink,
    })
}

/// The secret in `path`, without its trailing newline.
fn secret(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("--secret-file {}: {e}", path.display())))?;
    let secret = text.trim_end_matches(['\n', '\r']).to_string();
    if secret.is_empty() {
        return Err(Failure::usage(format!(
            "--secret-file {}: the file is empty",
            path.display()
        )));
    }
    Ok(secret)
}

async fn test(client: &mut Client, out: Output, name: String) -> Result<u8> {
    let request = pb::TestSubscriptionRequest { name: name.clone() };
    let r = client.test_subscription(request).await?.into_inner();
    match out {
        Output::Json => render::json(&r),
        Output::Table if r.error.is_empty() => {
            println!("{name}: ping {} answered {}", r.event_id, r.status)
        }
        Output::Table => println!(
            "{name}: ping {} failed: {} (status {})",
            r.event_id, r.error, r.status
        ),
    }
    Ok(if r.error.is_empty() { OK } else { REFUSED })
}

fn show(out: Output, subscriptions: &[pb::Subscription], what: &str) {
    match (out, subscriptions.first()) {
        (Output::Json, Some(s)) => render::json(s),
        (Output::Table, Some(s)) => println!(
            "subscription {} {what}: {} from sequence {}",
            s.name,
            s.url,
            s.cursor + 1
        ),
        (_, None) => {}
    }
}

fn table(subscriptions: &[pb::Subscription]) {
    let header = ["NAME", "URL", "FILTER", "CURSOR", "LAG", "LAST", "STATUS"];
    let rows = subscriptions.iter().map(|s| {
        vec![
            s.name.clone(),
            s.url.clone(),
            filter(s),
            s.cursor.to_string(),
            s.lag.to_string(),
            if s.last_status == 0 {
                "-".into()
            } else {
                s.last_status.to_string()
            },
            status(s),
        ]
    });
    render::table(&header, rows.collect());
}

fn filter(s: &pb::Subscription) -> String {
    let mut parts = Vec::new();
    if !s.environment.is_empty() {
        parts.push(format!("env={}", s.environment));
    }
    if !s.project.is_empty() {
        parts.push(format!("project={}", s.project));
    }
    if s.ticket_sink {
        parts.push("tickets".into());
    }
    if !s.events.is_empty() {
        parts.push(s.events.join(","));
    }
    if parts.is_empty() {
        "all events".into()
    } else {
        parts.join(" ")
    }
}

fn status(s: &pb::Subscription) -> String {
    if !s.disabled.is_empty() {
        format!("disabled: {}", s.disabled)
    } else if !s.last_error.is_empty() {
        format!("retrying: {}", s.last_error)
    } else {
        "ok".into()
    }
}
