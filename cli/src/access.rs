//! `lockstep token` and `lockstep audit`: tokens for CI and people (admins), and the log
//! of who did what and who was refused (operators).

use lockstep::pb;

use crate::{
    OK, Result,
    args::{Output, TokenCommand},
    dial::Client,
    render,
};

/// Runs `lockstep token create|revoke`.
pub async fn token(client: &mut Client, out: Output, c: TokenCommand) -> Result<u8> {
    match c {
        TokenCommand::Create {
            role,
            environments,
            projects,
            ttl,
            subject,
        } => {
            let request = pb::CreateTokenRequest {
                role,
                environments,
                projects,
                ttl: ttl.map(lockstep::wire::duration),
                subject: subject.unwrap_or_default(),
            };
            let r = client.create_token(request).await?.into_inner();
            render::token(out, &r);
        }
        TokenCommand::Revoke { id } => {
            let request = pb::RevokeTokenRequest { id: id.clone() };
            let r = client.revoke_token(request).await?.into_inner();
            match (out, r.revoked) {
                (Output::Json, _) => {
                    println!("{}", serde_json::json!({ "id": id, "revoked": r.revoked }))
                }
                (_, true) => println!("token {id} revoked"),
                (_, false) => println!("token {id} was revoked already"),
            }
        }
    }
    Ok(OK)
}

/// Runs `lockstep audit`: every page from `since` on.
pub async fn audit(client: &mut Client, out: Output, since: u64) -> Result<u8> {
    let mut events = Vec::new();
    let mut next = since;
    loop {
        let request = pb::ListAuditRequest {
            since_seq: next,
            page_size: 1000,
        };
        let page = client.list_audit(request).await?.into_inner();
        events.extend(page.events);
        if page.next_seq == 0 || page.next_seq <= next {
            break;
        }
        next = page.next_seq;
    }
    render::audit(out, &events);
    Ok(OK)
}
