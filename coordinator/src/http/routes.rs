//! The routes of `/api/v1/` (docs/http-api.md): each one the gRPC call of the same
//! name, its fields taken from the path, the query string and the JSON body.

use std::collections::BTreeSet;

use axum::{
    Router,
    body::Bytes,
    extract::{
        DefaultBodyLimit, Path, Query, State,
        rejection::{BytesRejection, QueryRejection},
    },
    http::StatusCode,
    response::Response,
    routing::{MethodFilter, MethodRouter, get, on},
};
use lockstep::limits::MAX_MESSAGE_BYTES;
use lockstep::pb::coordinator_server::Coordinator as Rpc;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};
use tonic::Status;

use super::{
    Api,
    caller::{Caller, answer, failure},
    console, events, views,
};
use crate::service::CoordinatorService;

/// The gRPC method `$m` as a function of the service and the request.
macro_rules! rpc {
    ($m:ident) => {
        |s: CoordinatorService, r| async move { Rpc::$m(&s, r).await }
    };
}

const GET: MethodFilter = MethodFilter::GET;
const POST: MethodFilter = MethodFilter::POST;

/// Every route: method, gRPC call, and the field the path's `{...}` fills.
pub fn router(api: Api) -> Router {
    let api_routes = Router::new()
        .route("/projects", on_rpc(GET, "", rpc!(list_projects)))
        .route("/environments", on_rpc(GET, "", rpc!(list_environments)))
        .route(
            "/environments/{name}",
            on_rpc(GET, "name", rpc!(get_environment)),
        )
        .route("/live", on_rpc(GET, "", rpc!(get_live_state)))
        .route("/history", on_rpc(GET, "", rpc!(get_history)))
        .route("/audit", on_rpc(GET, "", rpc!(list_audit)))
        .route("/subscriptions", on_rpc(GET, "", rpc!(list_subscriptions)))
        .route("/cluster", on_rpc(GET, "", rpc!(get_cluster)))
        .route("/events", get(events::stream))
        .route("/whoami", get(views::whoami))
        .route("/matrix", get(views::matrix))
        .route(
            "/releases",
            on_rpc(GET, "", rpc!(list_releases)).merge(on_rpc(POST, "", rpc!(create_release))),
        )
        .route("/releases/{id}", on_rpc(GET, "id", rpc!(get_release)))
        .route(
            "/releases/{id}/revert",
            on_rpc(POST, "releaseId", rpc!(revert_release)),
        )
        .route(
            "/releases/{id}/approve",
            on_rpc(POST, "transactionId", rpc!(approve)),
        )
        .route(
            "/releases/{id}/reject",
            on_rpc(POST, "transactionId", rpc!(reject)),
        )
        .route(
            "/releases/{id}/abort",
            on_rpc(POST, "id", rpc!(abort_release)),
        )
        .route(
            "/releases/{id}/retry",
            on_rpc(POST, "transactionId", rpc!(retry_delivery)),
        )
        .route(
            "/releases/{id}/resolve",
            on_rpc(POST, "transactionId", rpc!(resolve_participant)),
        )
        .route(
            "/releases/{id}/verify",
            on_rpc(POST, "transactionId", rpc!(report_verify)),
        )
        .route("/rollback", on_rpc(POST, "", rpc!(rollback)))
        .route("/promote", on_rpc(POST, "", rpc!(promote)))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        // As large a request as gRPC takes.
        .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES));
    Router::new()
        .nest("/api/v1", api_routes)
        .merge(console::router())
        .with_state(api)
}

async fn no_route(axum::extract::OriginalUri(uri): axum::extract::OriginalUri) -> Response {
    failure(&Status::not_found(format!(
        "no route {}: docs/http-api.md lists them",
        uri.path()
    )))
}

async fn wrong_method(
    method: axum::http::Method,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
) -> Response {
    let why = format!(
        "{method} {}: not a method of this route (docs/http-api.md)",
        uri.path()
    );
    let mut answer = failure(&Status::unimplemented(why));
    *answer.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    answer
}

/// Carries out `rpc` with `fields` for `caller`.
async fn call<Req, Resp, F, Fut>(
    api: Api,
    caller: Caller,
    fields: Result<Fields, Status>,
    rpc: F,
) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(CoordinatorService, tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    answer(invoke(&api, &caller, fields, rpc).await)
}

/// Carries out `rpc` with `fields` for `caller` and returns its answer as it is.
pub(super) async fn invoke<Req, Resp, F, Fut>(
    api: &Api,
    caller: &Caller,
    fields: Result<Fields, Status>,
    rpc: F,
) -> Result<tonic::Response<Resp>, Status>
where
    Req: DeserializeOwned,
    F: FnOnce(CoordinatorService, tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let call = rpc(api.service.clone(), caller.request(api, fields)?);
    tracing::Instrument::instrument(call, caller.span()).await
}

/// A request message's fields in the proto3 JSON mapping.
pub(super) type Fields = Map<String, Value>;

/// A query string's parameters as the fields of message `T` (numbers stay strings,
/// which the proto3 JSON mapping accepts).
fn query_fields<T: DeserializeOwned>(query: Vec<(String, String)>) -> Fields {
    query
        .into_iter()
        .map(|(k, v)| (k.clone(), typed::<T>(&k, v)))
        .collect()
}

/// Query value `v` of field `k`: a boolean where `T`'s field is one and `v` is
/// `true`/`false`, else the string it is (an environment or project may be called
/// `true`: before stop 54 every such value became a boolean, refused for a name).
pub(super) fn typed<T: DeserializeOwned>(k: &str, v: String) -> Value {
    let boolean = match v.as_str() {
        "true" => true,
        "false" => false,
        _ => return Value::String(v),
    };
    let as_text = Map::from_iter([(k.to_string(), Value::String(v.clone()))]);
    match serde_json::from_value::<T>(Value::Object(as_text)) {
        Ok(_) => Value::String(v),
        Err(_) => Value::Bool(boolean),
    }
}

/// A JSON body's fields (none when empty).
fn body_fields(body: &[u8]) -> Result<Fields, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Fields::new());
    }
    serde_json::from_slice(body)
        .map_err(|e| Status::invalid_argument(format!("request body: not a JSON object: {e}")))
}

/// `rpc` on `method`: its fields are the JSON body's, the query string's, and the
/// path's parameter (when the route has one) as field `field`.
fn on_rpc<Req, Resp, F, Fut>(method: MethodFilter, field: &'static str, rpc: F) -> MethodRouter<Api>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: FnOnce(CoordinatorService, tonic::Request<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>> + Send,
{
    on(
        method,
        move |State(api): State<Api>,
              caller: Caller,
              path: Option<Path<String>>,
              query: Result<Query<Vec<(String, String)>>, QueryRejection>,
              body: Result<Bytes, BytesRejection>| async move {
            let fields = request_fields::<Req>(field, path, query, body);
            call(api, caller, fields, rpc).await
        },
    )
}

/// The request's fields: the JSON body's, then the query string's, then the path's
/// `{...}` as `field`. A query or body the extractors refuse is a JSON error that
/// says why, as every other refusal is.
fn request_fields<Req: DeserializeOwned>(
    field: &str,
    path: Option<Path<String>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Fields, Status> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Status::invalid_argument(format!(
            "body: larger than {MAX_MESSAGE_BYTES} bytes, the most a call takes"
        )),
        _ => Status::invalid_argument(format!("body: {}", e.body_text())),
    })?;
    let Query(query) =
        query.map_err(|e| Status::invalid_argument(format!("query: {}", e.body_text())))?;
    once_each(&query)?;
    let mut fields = body_fields(&body)?;
    fields.extend(query_fields::<Req>(query));
    if let Some(Path(id)) = path {
        fields.insert(field.into(), Value::String(id));
    }
    Ok(fields)
}

/// A query parameter given twice is refused, naming it: which one was meant cannot be
/// known (before, the last silently won).
pub(super) fn once_each(query: &[(String, String)]) -> Result<(), Status> {
    let mut seen = BTreeSet::new();
    match query.iter().find(|(k, _)| !seen.insert(k.as_str())) {
        Some((k, _)) => Err(Status::invalid_argument(format!(
            "{k}: given more than once in the query string"
        ))),
        None => Ok(()),
    }
}
