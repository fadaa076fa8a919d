//! Turns an HTTP request into the gRPC call it stands for, and its answer back: the
//! caller's credentials become the call's (bearer token as `authorization` metadata,
//! the TLS session with its client certificate as the connection info tonic reads),
//! authenticated by the same [`Access`](crate::access::Access); a `tonic::Status`
//! becomes the HTTP status that means the same, with the gRPC code and message as JSON.

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};
use tonic::{Code, Status};

use super::{Api, Peer};
use crate::access::{Principal, principal_of};

/// The caller's credentials as an HTTP request brought them.
pub struct Caller {
    headers: HeaderMap,
    peer: Peer,
    /// The authority the request was made to (HTTP/2's `:authority`, else `Host`).
    authority: Option<String>,
    /// `METHOD /path`, the name of the call's span.
    route: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<Peer>>();
        let host = parts.headers.get("host").and_then(|v| v.to_str().ok());
        let authority = parts.uri.authority().map(|a| a.as_str()).or(host);
        Ok(Caller {
            authority: authority.map(str::to_string),
            route: format!("{} {}", parts.method, parts.uri.path()),
            headers: parts.headers.clone(),
            peer: peer.map(|c| c.0.clone()).unwrap_or_default(),
        })
    }
}

/// HTTP headers carried into the call's metadata as they are.
const CARRIED: [&str; 2] = ["authorization", "traceparent"];

impl Caller {
    /// The span of this call: a child of the `traceparent` the request carried (a new
    /// trace without one), as a gRPC call's, so what it starts is in the caller's trace.
    pub fn span(&self) -> tracing::Span {
        lockstep::trace::incoming(&self.route, &self.headers)
    }

    /// The gRPC request made of `fields` for this caller: authenticated first (as the
    /// gRPC interceptor does, so a call without credentials is 401 whatever it asks),
    /// then read as the message `T`.
    pub fn request<T: DeserializeOwned>(
        &self,
        api: &Api,
        fields: Result<Map<String, Value>, Status>,
    ) -> Result<tonic::Request<T>, Status> {
        same_site(&self.headers, self.authority.as_deref())?;
        let mut request = tonic::Request::new(());
        for name in CARRIED {
            let Some(given) = self.headers.get(name) else {
                continue;
            };
            match given.to_str().ok().and_then(|v| v.parse().ok()) {
                Some(value) => {
                    request.metadata_mut().insert(name, value);
                }
                // A credential that cannot be carried is refused, never dropped: the
                // call would run as the browser's certificate instead of the token.
                None if name == "authorization" => return Err(unreadable_credential()),
                None => {}
            }
        }
        if let Some(tls) = &self.peer.0 {
            request.extensions_mut().insert(tls.clone());
        }
        let principal = api.access.authenticate(&request)?;
        request.extensions_mut().insert(principal);
        let (metadata, extensions, ()) = request.into_parts();
        Ok(tonic::Request::from_parts(
            metadata,
            extensions,
            message(fields?)?,
        ))
    }

    /// Who the caller is, authenticated as [`Caller::request`] does.
    pub fn principal(&self, api: &Api) -> Result<Principal, Status> {
        let request = self.request::<serde::de::IgnoredAny>(api, Ok(Map::new()))?;
        Ok(principal_of(&request))
    }
}

/// The refusal of an `Authorization` header that is not text, as gRPC words it.
fn unreadable_credential() -> Status {
    Status::unauthenticated(
        "authorization: expected \"Bearer <token>\" in visible ASCII; refusing rather than act as the certificate",
    )
}

/// Refuses a request a browser made for a page of another site (CSRF): a browser
/// presents its client certificate to every page's request, and a plain-text POST needs
/// no CORS preflight, so without this another site's page could act as the person.
/// Browsers say where a request comes from (`Sec-Fetch-Site`, `Origin`); a client that
/// is not a browser sends neither and is answered as before.
fn same_site(headers: &HeaderMap, authority: Option<&str>) -> Result<(), Status> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let refused = |what: String| {
        Status::permission_denied(format!(
            "{what}: the HTTP API answers its own console's pages and clients that are not browsers, never a page of another site"
        ))
    };
    if let Some(site) = header("sec-fetch-site").filter(|s| !matches!(*s, "same-origin" | "none")) {
        return Err(refused(format!("sec-fetch-site: {site}")));
    }
    let Some(origin) = header("origin") else {
        return Ok(());
    };
    let from = origin.split_once("://").map(|(_, a)| a);
    match (from, authority) {
        (Some(from), Some(to)) if from.eq_ignore_ascii_case(to) => Ok(()),
        _ => Err(refused(format!("origin: {origin}"))),
    }
}

/// Reads `fields` (query parameters, path parameters, a JSON body merged into one
/// object) as the request message `T`, in the proto3 JSON mapping.
fn message<T: DeserializeOwned>(fields: Map<String, Value>) -> Result<T, Status> {
    serde_json::from_value(Value::Object(fields.clone())).map_err(|e| {
        // serde names an unknown field but not a bad value's: find the field alone.
        let alone = |(k, v): &(&String, &Value)| {
            let one = Map::from_iter([((*k).clone(), (*v).clone())]);
            serde_json::from_value::<T>(Value::Object(one)).is_err()
        };
        match fields.iter().find(|f| alone(f)) {
            Some((field, _)) => Status::invalid_argument(format!("{field}: {e}")),
            None => Status::invalid_argument(format!("request body: {e}")),
        }
    })
}

/// An answer as JSON (200), or the error as [`failure`].
pub fn answer<T: Serialize>(result: Result<tonic::Response<T>, Status>) -> Response {
    match result {
        Ok(response) => axum::Json(response.into_inner()).into_response(),
        Err(status) => failure(&status),
    }
}

/// `{"code": "NOT_FOUND", "message": "..."}` with the HTTP status of the gRPC code.
pub fn failure(status: &Status) -> Response {
    let body = serde_json::json!({
        "code": lockstep::status::code_name(status.code()),
        "message": status.message(),
    });
    (http_status(status.code()), axum::Json(body)).into_response()
}

/// The HTTP status that means what gRPC's `code` means (as grpc-gateway maps them).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
