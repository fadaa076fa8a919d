//! A standby on etcd answers reads itself, from the tables as etcd has them at the
//! moment of the call: a read-only view is built for each call
//! ([`Coordinator::read_only`]) and the call goes through the same access check and
//! handlers as on the leader. Every other call gets UNAVAILABLE naming the leader
//! ([`Standby`]), so a write can only ever be made by the instance whose term fences it.
//!
//! GetDecision is not a read here: its answer decides what a participant does with its
//! prepared state, so only the leader gives it (an agent asks each instance in turn).
//! WatchEvents follows the leader's log as it grows, which a view does not.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use lockstep::{
    limits::MAX_MESSAGE_BYTES, pb::coordinator_server::CoordinatorServer, standby::Standby,
};
use tonic::{
    body::Body, codegen::http, server::NamedService, service::interceptor::InterceptedService,
};
use tower::ServiceExt;

use crate::{access::Access, coordinator::Coordinator, service::CoordinatorService};

/// The calls a standby answers from its view (the rest name the leader).
pub const READS: &[&str] = &[
    "ListProjects",
    "GetRelease",
    "ListReleases",
    "GetLiveState",
    "GetHistory",
    "ListAudit",
    "ListSubscriptions",
    "ListEnvironments",
    "GetEnvironment",
    "GetCluster",
];

/// Builds the view one call reads, with how its callers are authenticated (the token
/// deny list is read with it). Runs on a blocking thread.
pub type View = Arc<dyn Fn() -> Result<(Coordinator, Access), String> + Send + Sync>;

/// The coordinator service of a standby: reads answered from a fresh view, the rest
/// refused naming the leader.
#[derive(Clone)]
pub struct StandbyService {
    standby: Standby,
    view: View,
}

impl StandbyService {
    /// Refuses as `standby` says, and reads through `view`.
    pub fn new(standby: Standby, view: View) -> Self {
        Self { standby, view }
    }

    /// Whether the call to `path` (`/lockstep.v1.Coordinator/Method`) is a read.
    fn reads(path: &str) -> bool {
        let method = path.strip_prefix(concat!("/", "lockstep.v1.Coordinator", "/"));
        method.is_some_and(|m| READS.contains(&m))
    }
}

impl NamedService for StandbyService {
    const NAME: &'static str = "lockstep.v1.Coordinator";
}

impl tower::Service<http::Request<Body>> for StandbyService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let standby = self.standby.clone();
        if !Self::reads(request.uri().path()) {
            return Box::pin(std::future::ready(Ok(standby.refusal().into_http())));
        }
        let view = self.view.clone();
        Box::pin(async move {
            let opened = tokio::task::spawn_blocking(move || view()).await;
            let (coordinator, access) = match opened {
                Ok(Ok(view)) => view,
                Ok(Err(why)) => return Ok(standby.unable(&why).into_http()),
                Err(panicked) => return Ok(standby.unable(&panicked.to_string()).into_http()),
            };
            let service = CoordinatorService::new(coordinator, access.clone());
            let server =
                CoordinatorServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES);
            let answered = InterceptedService::new(server, access)
                .oneshot(request)
                .await;
            answered.map(|response| response.map(Body::new))
        })
    }
}
