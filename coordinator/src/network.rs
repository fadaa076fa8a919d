//! How the coordinator reaches participants: [`GrpcParticipants`] is the gRPC
//! implementation of the participant network port ([`crate::ports::Participants`]).
//! Tonic's statuses are classified here, once, into the protocol's transient and final
//! failures; nothing above this module sees a status code.
//!
//! Underneath, a [`ParticipantNet`] gives a client per endpoint: production connects over
//! TCP ([`TcpNet`]), and simulation plugs in a connector over its simulated network, so
//! the protocol and its gRPC edge are the same in both.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use lockstep::{
    orders::{AbortOrder, CommitOrder, PrepareOrder, Schema, VoteAnswer},
    pb::{self, participant_client::ParticipantClient},
    retry::Failure,
};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::ports::{Observed, Participants, Pending, Preview};

/// Gives a client for a participant endpoint.
pub trait ParticipantNet: Send + Sync + 'static {
    /// A client for `endpoint` (connection made lazily). Errors describe a malformed
    /// endpoint; unreachable participants fail on the call instead.
    fn client(&self, endpoint: &str) -> Result<ParticipantClient<Channel>, String>;

    /// A call to `endpoint` did not get through: the next one should dial again
    /// rather than reuse a connection a partition may have left half-open.
    fn forget(&self, endpoint: &str) {
        let _ = endpoint;
    }
}

/// Tonic over TCP, one lazily connected channel per endpoint, reused by every call until
/// one fails to get through. No keepalive pings go to agents (see
/// [`lockstep::edge::agent_endpoint`]): a failed or timed-out call drops the channel,
/// so the retry dials afresh.
#[derive(Default, Clone)]
pub struct TcpNet {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Mutual TLS towards agents (the coordinator's certificate and the CA); None:
    /// plaintext (`--insecure`).
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl TcpNet {
    /// Dials agents over TLS with `tls` (which presents the coordinator's certificate).
    pub fn with_tls(tls: tonic::transport::ClientTlsConfig) -> Self {
        Self {
            tls: Some(tls),
            ..Self::default()
        }
    }
}

impl ParticipantNet for TcpNet {
    fn client(&self, endpoint: &str) -> Result<ParticipantClient<Channel>, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = channels.get(endpoint) {
            return Ok(ParticipantClient::new(ch.clone()));
        }
        let plain = lockstep::edge::agent_endpoint(endpoint)
            .map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
        let channel = lockstep::edge::secured(plain, self.tls.as_ref())?.connect_lazy();
        channels.insert(endpoint.to_string(), channel.clone());
        Ok(ParticipantClient::new(channel))
    }

    fn forget(&self, endpoint: &str) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.remove(endpoint);
    }
}

/// Checks an endpoint URL at registration time, so a typo is refused then rather than
/// discovered during a release.
pub fn validate_endpoint(field: &str, endpoint: &str) -> Result<(), lockstep::names::FieldError> {
    use lockstep::names::FieldError;
    if endpoint.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(FieldError::new(
            field,
            format!("{endpoint:?} must start with http:// or https://"),
        ));
    }
    let uri: tonic::codegen::http::Uri = endpoint
        .parse()
        .map_err(|e| FieldError::new(field, format!("{endpoint:?} is not a URL: {e}")))?;
    if uri.host().is_none_or(|h| h.is_empty()) {
        return Err(FieldError::new(field, format!("{endpoint:?} has no host")));
    }
    valid_port(field, endpoint, uri.authority().map_or("", |a| a.as_str()))
}

/// A port, when the endpoint names one, is 1 to 65535: the URL parser takes any digits,
/// and tonic dials one it cannot read as the scheme's default port (80 or 443).
fn valid_port(
    field: &str,
    endpoint: &str,
    authority: &str,
) -> Result<(), lockstep::names::FieldError> {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let after_host = host_port
        .rsplit_once(']')
        .map_or(host_port, |(_, rest)| rest);
    let Some((_, port)) = after_host.rsplit_once(':') else {
        return Ok(());
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(lockstep::names::FieldError::new(
            field,
            format!("{endpoint:?} has port {port:?}; a port is 1 to 65535"),
        )),
    }
}

/// Most calls to participants in flight at once: after a restart thousands of drivers
/// resume at once, and unbounded they would allocate buffers for all their calls.
const MAX_CALLS_IN_FLIGHT: usize = 256;

/// How long a dry run waits for each participant's preview.
const PREVIEW_TIMEOUT: Duration = Duration::from_secs(3);

/// The participant network over gRPC.
#[derive(Clone)]
pub struct GrpcParticipants {
    net: Arc<dyn ParticipantNet>,
    calls: Arc<Semaphore>,
    delivery_timeout: Duration,
    incarnation: String,
    term: u64,
}

impl GrpcParticipants {
    /// Calls through `net`, stamping every order with `incarnation` and `term` (the
    /// leader's term on etcd, 0 for a single coordinator); a Commit or Abort without an
    /// answer within `delivery_timeout` is a transient failure (retried).
    pub fn new(
        net: Arc<dyn ParticipantNet>,
        delivery_timeout: Duration,
        (incarnation, term): (String, u64),
    ) -> Self {
        Self {
            net,
            calls: Arc::new(Semaphore::new(MAX_CALLS_IN_FLIGHT)),
            delivery_timeout,
            incarnation,
            term,
        }
    }

    /// Runs one call with a permit, classifying a failed outcome with `classify`.
    fn call<T, F>(
        &self,
        endpoint: &str,
        (timeout, classify): (Option<Duration>, fn(&tonic::Status) -> Failure),
        call: impl FnOnce(ParticipantClient<Channel>) -> F + Send + 'static,
    ) -> Pending<Result<T, Failure>>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send,
        T: Send + 'static,
    {
        let client = self.net.client(endpoint);
        let (net, endpoint) = (self.net.clone(), endpoint.to_string());
        let calls = self.calls.clone();
        Box::pin(async move {
            // A malformed endpoint is refused at registration; one that slips through
            // is the participant's final answer, not something a retry fixes.
            let client = client.map_err(Failure::Final)?;
            let _permit = calls
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let answer = match timeout {
                Some(t) => tokio::time::timeout(t, call(client)).await.ok(),
                None => Some(call(client).await),
            };
            // Only a call that did not get through (no answer in time, or a status made
            // here from a transport error) leaves the connection suspect; an agent that
            // answered, even with an error, keeps it.
            let (failure, through) = match answer {
                Some(Ok(r)) => return Ok(r.into_inner()),
                Some(Err(status)) => (
                    classify(&status),
                    std::error::Error::source(&status).is_none(),
                ),
                None => {
                    let waited = timeout.unwrap_or_default();
                    (
                        Failure::Transient(format!("no answer within {waited:?}")),
                        false,
                    )
                }
            };
            if !through {
                net.forget(&endpoint);
            }
            Err(failure)
        })
    }
}

/// The span of one order to one participant (a child of the transaction's span), made
/// only when spans are exported (see [`lockstep::trace::export_on`]).
fn order_span(order: &str, tx: &impl std::fmt::Display, project: &str) -> tracing::Span {
    if !lockstep::trace::exporting() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "order",
        otel.name = %format!("{order} {project}"),
        transaction_id = %tx,
        project = %project,
    )
}

impl Participants for GrpcParticipants {
    fn prepare(&self, endpoint: &str, order: PrepareOrder) -> Pending<Result<VoteAnswer, Failure>> {
        let mut request = pb::PrepareRequest::from(&order);
        request.coordinator_incarnation = self.incarnation.clone();
        request.coordinator_term = self.term;
        // Any status the agent sends is its vote (a refusal with its code and
        // message); only a call that did not get through is made again. A call lives
        // until the phase 1 deadline drops it (no timeout of its own: a staging of 32 s
        // is not cut at 30 s and sent again); TCP keepalive (lockstep::edge) finds a
        // half-open connection.
        let timeout = None;
        let span = order_span("Prepare", &order.tx, order.project.as_str());
        let request = span.in_scope(|| lockstep::trace::request(request));
        let call = self.call(
            endpoint,
            (timeout, Failure::of_answer),
            |mut c| async move { c.prepare(request).await },
        );
        Box::pin(tracing::Instrument::instrument(
            async move { call.await.map(VoteAnswer::from) },
            span,
        ))
    }

    fn commit(&self, endpoint: &str, order: CommitOrder) -> Pending<Result<(), Failure>> {
        let mut request = pb::CommitRequest::from(&order);
        request.coordinator_incarnation = self.incarnation.clone();
        request.coordinator_term = self.term;
        let timeout = Some(self.delivery_timeout);
        let project = order
            .project
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let span = order_span("Commit", &order.tx, &project);
        let request = span.in_scope(|| lockstep::trace::request(request));
        let call = self.call(endpoint, (timeout, Failure::of), |mut c| async move {
            c.commit(request).await
        });
        Box::pin(tracing::Instrument::instrument(
            async move { call.await.map(|_| ()) },
            span,
        ))
    }

    fn abort(&self, endpoint: &str, order: AbortOrder) -> Pending<Result<(), Failure>> {
        let mut request = pb::AbortRequest::from(&order);
        request.coordinator_incarnation = self.incarnation.clone();
        request.coordinator_term = self.term;
        let timeout = Some(self.delivery_timeout);
        let project = order
            .project
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let span = order_span("Abort", &order.tx, &project);
        let request = span.in_scope(|| lockstep::trace::request(request));
        let call = self.call(endpoint, (timeout, Failure::of), |mut c| async move {
            c.abort(request).await
        });
        Box::pin(tracing::Instrument::instrument(
            async move { call.await.map(|_| ()) },
            span,
        ))
    }

    fn preview(&self, endpoint: &str, order: PrepareOrder) -> Pending<Result<Preview, String>> {
        let mut request = pb::PrepareRequest::from(&order);
        request.coordinator_incarnation = self.incarnation.clone();
        let timeout = Some(PREVIEW_TIMEOUT);
        let call = self.call(endpoint, (timeout, Failure::of), |mut c| async move {
            c.preview(request).await
        });
        Box::pin(async move {
            let r = call.await.map_err(|f| preview_error(&f))?;
            Ok(Preview {
                would_prepare: r.would_prepare,
                reason: r.reason,
                from_schema: r.from_schema.map(Schema::from),
                to_schema: r.to_schema.map(Schema::from),
                migrations: r.migrations,
            })
        })
    }

    fn status(&self, endpoint: &str) -> Pending<Result<Observed, String>> {
        let timeout = Some(PREVIEW_TIMEOUT);
        let call = self.call(endpoint, (timeout, Failure::of), |mut c| async move {
            c.get_status(pb::GetStatusRequest {}).await
        });
        Box::pin(async move { call.await.map(observed).map_err(|f| preview_error(&f)) })
    }
}

/// GetStatus's answer as the coordinator keeps it.
fn observed(s: pb::ParticipantStatus) -> Observed {
    Observed {
        project: s.project,
        environment: s.environment,
        live_version: s.live_version,
        schema: s.schema.map(Schema::from),
        staged: s
            .staged
            .into_iter()
            .map(|t| (t.transaction_id, t.version))
            .collect(),
    }
}

/// A dry run shows the participant's own message (without the status code), or how
/// long it waited.
fn preview_error(failure: &Failure) -> String {
    let text = failure.message();
    match text.split_once(": ") {
        Some((_code, message)) if !text.starts_with("no answer") => message.to_string(),
        _ => text.to_string(),
    }
}
