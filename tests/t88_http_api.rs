//! The HTTP/JSON API (issue 30), end to end over real HTTPS: a coordinator with
//! `--http-listen` and mutual TLS, callers with bearer tokens or the deployment's client
//! certificates. The API is the gRPC service under another encoding: the same
//! principals, the same permission table (a refused action writes nothing), errors with
//! the gRPC code and a message naming the field, and the event log as Server-Sent
//! Events that resume from `Last-Event-ID` with no gap and no duplicate.

#![allow(clippy::unwrap_used)]

mod support;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use support::{free_port, secure::Secure, wait_for};

/// A secure cluster with A and B registered and the API on `https://127.0.0.1:PORT`.
async fn cluster() -> (Secure, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let s = Secure::start(&["A", "B"], &["--http-listen", &listen]).await;
    (s, format!("https://127.0.0.1:{port}/api/v1"))
}

/// An HTTPS client trusting the deployment's CA, presenting `user`'s certificate.
fn client(s: &Secure, user: Option<&str>) -> Client {
    let ca = std::fs::read(s.certs.join("ca.crt")).unwrap();
    let mut builder = Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap());
    if let Some(user) = user {
        let mut pem = std::fs::read(s.certs.join(format!("user-{user}.crt"))).unwrap();
        pem.extend(std::fs::read(s.certs.join(format!("user-{user}.key"))).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

/// One call: its status and JSON body.
async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Waits until release `id` is `state`, read over the API with `token`.
async fn wait_state(http: &Client, api: &str, token: &str, id: &str, state: &str) -> Value {
    wait_for(&format!("{id} to be {state}"), || async {
        let get = http.get(format!("{api}/releases/{id}")).bearer_auth(token);
        let (_, body) = call(get).await;
        (body["state"] == state).then_some(body)
    })
    .await
}

/// Given tokens for a viewer, a releaser of B and an operator, and the admin's client
/// certificate: every call is authenticated and checked as over gRPC.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_as_grpc_does_with_the_same_permissions() {
    let (s, api) = cluster().await;
    let (_, viewer) = s.token(&["--role", "viewer", "--subject", "dash"]).await;
    let scope = ["--role", "releaser", "--project", "B", "--subject", "ci-b"];
    let (_, releaser) = s.token(&scope).await;
    let (_, operator) = s
        .token(&["--role", "operator", "--subject", "oncall"])
        .await;
    let http = client(&s, None);

    // No credential: 401, as UNAUTHENTICATED over gRPC, whatever the route.
    let (status, body) = call(http.get(format!("{api}/live"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], "UNAUTHENTICATED");

    // A releaser of B creates a release of B (the body is the CreateRelease request in
    // proto3 JSON) and it commits.
    let r1 = json!({"id": "R1", "components": [{"project": "B", "version": "1.0"}]});
    let create = http
        .post(format!("{api}/releases"))
        .bearer_auth(&releaser)
        .json(&r1);
    let (status, body) = call(create).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["transaction"]["id"], "R1", "{body}");
    let r1 = wait_state(&http, &api, &viewer, "R1", "TRANSACTION_STATE_COMMITTED").await;
    assert_eq!(r1["participants"][0]["project"], "B", "{r1}");

    // Outside its scope: 403 naming the permission, and nothing is written.
    let r2 = json!({"id": "R2", "components": [{"project": "A", "version": "1.0"}]});
    let create = http
        .post(format!("{api}/releases"))
        .bearer_auth(&releaser)
        .json(&r2);
    let (status, body) = call(create).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "PERMISSION_DENIED");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("permission release"),
        "{body}"
    );
    let (status, _) = call(
        http.get(format!("{api}/releases/R2"))
            .bearer_auth(&operator),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "R2 was never written");

    // A viewer reads the live state and the matrix's cells, and may not abort.
    let live = http
        .get(format!("{api}/live?environment=default"))
        .bearer_auth(&viewer);
    let (status, live) = call(live).await;
    assert_eq!(status, StatusCode::OK, "{live}");
    assert!(
        live.to_string().contains("\"1.0\""),
        "B 1.0 is live: {live}"
    );
    let abort = http
        .post(format!("{api}/releases/R1/abort"))
        .bearer_auth(&viewer);
    let (status, body) = call(abort.json(&json!({"reason": "no"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Bad input: 400 naming the field; an unknown route or release: 404.
    let bad = http
        .get(format!("{api}/releases?limit=many"))
        .bearer_auth(&viewer);
    let (status, body) = call(bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with("limit:"),
        "{body}"
    );
    let typo = json!({"idd": "R3"});
    let create = http
        .post(format!("{api}/releases"))
        .bearer_auth(&operator)
        .json(&typo);
    let (status, body) = call(create).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"].as_str().unwrap().contains("idd"), "{body}");
    let (status, body) = call(http.get(format!("{api}/nothing")).bearer_auth(&viewer)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = call(http.get(format!("{api}/releases/R9")).bearer_auth(&viewer)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NOT_FOUND"))
    );

    // The admin's client certificate is a credential too: it reads the audit log,
    // which holds the refused release.
    let as_admin = client(&s, Some("admin"));
    let (status, audit) = call(as_admin.get(format!("{api}/audit"))).await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    assert!(
        audit.to_string().contains("ci-b"),
        "the refusal is audited: {audit}"
    );
}

/// Reads SSE events from `response` until `count` have come; returns their ids.
async fn sse_ids(mut response: reqwest::Response, count: usize) -> Vec<u64> {
    let mut text = String::new();
    let mut ids = Vec::new();
    while ids.len() < count {
        let chunk = response
            .chunk()
            .await
            .unwrap()
            .expect("the stream ended early");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            let id = event.lines().find_map(|l| l.strip_prefix("id:"));
            ids.extend(id.map(|i| i.trim().parse::<u64>().unwrap()));
        }
    }
    ids.truncate(count);
    ids
}

/// Given a log with events, a stream from sequence 1 numbers each event with its
/// sequence; reconnecting with the last id seen resumes right after it.
#[tokio::test(flavor = "multi_thread")]
async fn events_resume_from_the_last_event_id_with_no_gap_or_duplicate() {
    let (s, api) = cluster().await;
    let http = client(&s, Some("admin"));
    for (id, version) in [("R1", "1.0"), ("R2", "2.0")] {
        let body = json!({"id": id, "components": [{"project": "A", "version": version}]});
        let (status, body) = call(http.post(format!("{api}/releases")).json(&body)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let first = http
        .get(format!("{api}/events?from=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let seen = sse_ids(first, 6).await;
    assert_eq!(seen, (1..=6).collect::<Vec<_>>(), "from 1, in order");
    let again = http
        .get(format!("{api}/events?from=1"))
        .header("Last-Event-ID", "6");
    let resumed = sse_ids(again.send().await.unwrap(), 3).await;
    assert_eq!(resumed, vec![7, 8, 9], "right after the last one seen");
}
