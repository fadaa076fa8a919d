//! `GET /api/v1/events`: the event log as Server-Sent Events, each event's `id` its
//! sequence number, so a browser's `EventSource` that lost its connection resumes
//! from the `Last-Event-ID` it sends, with no gap and no duplicate. Served by the gRPC
//! WatchEvents call, with its permission check and its filtering to what the caller
//! may read.

use std::convert::Infallible;

use axum::{
    extract::{Query, State},
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use lockstep::pb::{self, coordinator_server::Coordinator as Rpc};
use serde_json::Value;
use tokio_stream::StreamExt;

use super::{
    Api,
    caller::{Caller, failure},
    encoded::EncodedEvents,
};

/// The stream of events from `from` (or just after `Last-Event-ID`), as the query
/// string's WatchEvents fields ask (`transactionId`, `untilTerminal`...).
pub async fn stream(
    State(api): State<Api>,
    caller: Caller,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let query: Vec<(String, String)> = query.into_iter().map(|(k, v)| (named(k), v)).collect();
    if let Err(status) = super::routes::once_each(&query) {
        return failure(&status);
    }
    let mut fields = serde_json::Map::new();
    for (key, value) in query {
        // `true`/`false` is a boolean only for a boolean field (a transaction may be
        // named `true`).
        let value = super::routes::typed::<pb::WatchEventsRequest>(&key, value);
        fields.insert(key, value);
    }
    match last_event_id(&headers) {
        Ok(Some(next)) => {
            fields.insert("fromSeq".into(), Value::String(next.to_string()));
        }
        Ok(None) => {}
        Err(status) => return failure(&status),
    }
    let request = caller.request::<pb::WatchEventsRequest>(&api, Ok(fields));
    let watched = match request {
        Ok(request) => Rpc::watch_events(&api.service, request).await,
        Err(status) => Err(status),
    };
    match watched {
        Ok(events) => {
            let encoded = api.encoded.clone();
            Sse::new(events.into_inner().map(move |e| sse(&encoded, e)))
                .keep_alive(KeepAlive::default())
                .into_response()
        }
        Err(status) => failure(&status),
    }
}

/// The request's field a query parameter names: `from` is `fromSeq` (so that both
/// given count as one given twice, refused as any other: before stop 64 the last won).
fn named(key: String) -> String {
    match key.as_str() {
        "from" => "fromSeq".into(),
        _ => key,
    }
}

/// The sequence number to resume from: the one after the last a reconnecting
/// `EventSource` saw (none without the header). An id that is no event's (not a number,
/// or the last one there can be) is refused, naming the header, rather than read as
/// "from the start".
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, tonic::Status> {
    let Some(id) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let seen = id
        .to_str()
        .ok()
        .and_then(|id| id.trim().parse::<u64>().ok());
    match seen.and_then(|seen| seen.checked_add(1)) {
        Some(next) => Ok(Some(next)),
        None => Err(tonic::Status::invalid_argument(format!(
            "Last-Event-ID: {id:?} is not the sequence number of an event"
        ))),
    }
}

/// One log event as an SSE event (`id` its sequence number, `data` its proto3 JSON,
/// from `encoded`); a failed stream ends with an `error` event naming why.
fn sse(
    encoded: &EncodedEvents,
    event: Result<pb::Event, tonic::Status>,
) -> Result<Event, Infallible> {
    Ok(match event {
        Ok(e) => Event::default()
            .id(e.seq.to_string())
            .data(&*encoded.json(&e)),
        Err(status) => Event::default().event("error").data(format!(
            "{}: {}",
            lockstep::status::code_name(status.code()),
            status.message()
        )),
    })
}
