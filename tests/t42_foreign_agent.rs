//! Agents written from the proto on other gRPC stacks: whatever status an agent's
//! Prepare returns is its answer (a refusal carrying the code and message), decided at
//! once; only a failure to reach the agent is retried until the prepare deadline.

#![allow(clippy::unwrap_used)]

mod support;

use lockstep::pb::{self, participant_server};
use support::Cluster;
use tonic::{Request, Response, Status};

/// An agent on a plain gRPC server whose Prepare fails the way grpcio reports an
/// uncaught exception (UNKNOWN); Abort is acknowledged.
struct Throwing;

#[tonic::async_trait]
impl participant_server::Participant for Throwing {
    async fn prepare(
        &self,
        _: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        Err(Status::unknown("Exception calling application: disk full"))
    }

    async fn commit(
        &self,
        _: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        Err(Status::failed_precondition("never prepared here"))
    }

    async fn abort(
        &self,
        _: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        Ok(Response::new(pb::AbortResponse::default()))
    }

    async fn preview(
        &self,
        _: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PreviewResponse>, Status> {
        Err(Status::unimplemented("no preview"))
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::ParticipantStatus>, Status> {
        Ok(Response::new(pb::ParticipantStatus::default()))
    }
}

/// Serves [`Throwing`] on a free port; returns its URL.
async fn throwing_agent() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(participant_server::ParticipantServer::new(Throwing))
            .serve_with_incoming(incoming),
    );
    url
}

/// Given an agent whose Prepare answers UNKNOWN, when a release includes it, then ABORT
/// is decided at once with the agent's code and message, not after the deadline.
#[tokio::test(flavor = "multi_thread")]
async fn an_error_status_from_prepare_is_a_refusal_with_its_code_and_message() {
    let c = Cluster::new().await;
    let url = throwing_agent().await;
    let out = c
        .cli(&["project", "add", "X", "--endpoint", &url, "--unchecked"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");

    let out = c
        .cli(&[
            "release",
            "create",
            "T1",
            "X=v1",
            "--wait",
            "--timeout",
            "60s",
        ])
        .await;

    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("Unknown: Exception calling application: disk full"),
        "{out:?}"
    );
    let t = c.transaction("T1").await;
    assert!(!t.reason.contains("no answer"), "{}", t.reason);
}

/// Given a registered endpoint where nothing listens, when a release includes it, then
/// Prepare is sent again until the deadline, which decides ABORT naming the silence.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_cannot_be_reached_is_asked_again_until_the_deadline() {
    let c = Cluster::new().await;
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let out = c
        .cli(&["project", "add", "X", "--endpoint", &url, "--unchecked"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");

    let out = c
        .cli(&[
            "release",
            "create",
            "T1",
            "X=v1",
            "--wait",
            "--timeout",
            "2s",
        ])
        .await;

    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("no answer from X within"), "{out:?}");
    // Defect 5 of issue 27: "it finishes on its own" never did for a wrong address.
    assert!(
        out.stderr.contains("project set X --endpoint")
            && out
                .stderr
                .contains("resolve T1 --participant X --as aborted"),
        "says what ends the wait: {out:?}"
    );
}
