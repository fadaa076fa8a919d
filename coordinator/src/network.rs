//! How the coordinator reaches participants. The protocol asks a [`ParticipantNet`] for
//! a client per endpoint; production connects over TCP with tonic, and simulation plugs
//! in a connector over its simulated network, so the protocol code is the same in both.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use lockstep::pb::participant_client::ParticipantClient;
use tonic::transport::Channel;

/// Gives a client for a participant endpoint.
pub trait ParticipantNet: Send + Sync + 'static {
    /// A client for `endpoint` (connection made lazily). Errors describe a malformed
    /// endpoint; unreachable participants fail on the call instead.
    fn client(&self, endpoint: &str) -> Result<ParticipantClient<Channel>, String>;
}

/// Tonic over TCP, one lazily connected channel per endpoint, reused by every call.
#[derive(Default, Clone)]
pub struct TcpNet {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl ParticipantNet for TcpNet {
    fn client(&self, endpoint: &str) -> Result<ParticipantClient<Channel>, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = channels.get(endpoint) {
            return Ok(ParticipantClient::new(ch.clone()));
        }
        let channel = lockstep::edge::endpoint(endpoint)
            .map_err(|e| format!("endpoint {endpoint:?}: {e}"))?
            .connect_lazy();
        channels.insert(endpoint.to_string(), channel.clone());
        Ok(ParticipantClient::new(channel))
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
    Ok(())
}
