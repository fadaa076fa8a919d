//! Calling the coordinator's HTTP API (`--http-listen`) over real HTTPS, as the
//! deployment's CA and users' certificates allow.

use reqwest::{Client, StatusCode};
use serde_json::Value;

use super::secure::Secure;

/// An HTTPS client trusting the deployment's CA, presenting `user`'s certificate.
pub fn client(s: &Secure, user: Option<&str>) -> Client {
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
pub async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Reads SSE events from `response` until `done` says so of the ids read so far;
/// returns them.
pub async fn sse_ids(mut response: reqwest::Response, done: impl Fn(&[u64]) -> bool) -> Vec<u64> {
    let mut text = String::new();
    let mut ids = Vec::new();
    while !done(&ids) {
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
    ids
}

/// Reads the SSE stream `response` until it ends (60 s at most): its events'
/// `data` as JSON, and the data of its `error` event, if one came.
pub async fn sse_to_end(mut response: reqwest::Response) -> (Vec<Value>, Option<String>) {
    let read = async {
        let mut text = String::new();
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    };
    let text = tokio::time::timeout(std::time::Duration::from_secs(60), read)
        .await
        .expect("the stream did not end within 60 s");
    let (mut events, mut error) = (Vec::new(), None);
    for block in text.split("\n\n") {
        let data = block.lines().find_map(|l| l.strip_prefix("data:"));
        let Some(data) = data.map(str::trim) else {
            continue;
        };
        match block.lines().any(|l| l.trim() == "event: error") {
            true => error = Some(data.to_string()),
            false => events.push(serde_json::from_str(data).unwrap()),
        }
    }
    (events, error)
}
