//! How the simulation's clients reach the coordinator: where it listens, and a bound
//! on every call (a call without an answer in time has an unknown outcome).

use std::time::Duration;

use lockstep::pb::coordinator_client::CoordinatorClient;
use tonic::{Code, transport::Channel};

use crate::net;

/// The coordinator's host.
pub const COORDINATOR: &str = "coordinator";
/// The coordinator's port.
pub const COORDINATOR_PORT: u16 = 7700;

/// `http://host:port`.
pub fn url(host: &str, port: u16) -> String {
    format!("http://{host}:{port}")
}

/// A client of the coordinator over the simulated network.
pub fn coordinator_client() -> CoordinatorClient<Channel> {
    CoordinatorClient::new(net::channel(&url(COORDINATOR, COORDINATOR_PORT)))
}

/// Bounds a call: a call without an answer in time has an unknown outcome.
pub async fn bounded<T>(
    f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(Duration::from_secs(3), f).await {
        Ok(r) => r.map(|r| r.into_inner()),
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer within 3s")),
    }
}

/// A call whose outcome the client cannot know (the one classification of transient
/// failures, shared with the coordinator and the CLI).
pub fn unknown(code: Code) -> bool {
    lockstep::retry::is_transient(code)
}
