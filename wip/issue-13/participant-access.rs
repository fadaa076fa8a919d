//! Only the coordinator may give an agent orders: with TLS, every call to the
//! Participant API (Prepare, Commit, Abort, Preview, status) must come with a client
//! certificate that chains to the deployment's CA and names the coordinator identity the
//! agent was configured with. Anyone else who can reach the agent would otherwise abort
//! a prepared participant behind the coordinator's back and split a release.

use lockstep::{caller::Credentials, identity::Identity, tls::ServerTls};
use tonic::{Request, Status, service::Interceptor};

/// The interceptor in front of the Participant service.
#[derive(Clone)]
pub struct OnlyCoordinator {
    /// The server's TLS (None: `--insecure`, everyone is let through).
    tls: Option<ServerTls>,
    /// The one identity orders are taken from.
    coordinator: Identity,
}

impl OnlyCoordinator {
    /// Takes orders only from `coordinator`, as `tls` authenticates callers; without
    /// TLS, from anyone.
    pub fn new(tls: Option<ServerTls>, coordinator: Identity) -> Self {
        Self { tls, coordinator }
    }

    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let credentials = Credentials::of(request, tls)?;
        match credentials.certificate {
            Some(identity) if identity == self.coordinator => Ok(()),
            Some(other) => Err(Status::permission_denied(format!(
                "the Participant API takes orders from {} only; the caller is {}",
                self.coordinator.uri(),
                other.uri()
            ))),
            None if credentials.token.is_some() => Err(Status::unauthenticated(
                "agents take no tokens: only the coordinator's client certificate",
            )),
            None => Err(Credentials::none_given()),
        }
    }
}

impl Interceptor for OnlyCoordinator {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request).inspect_err(|refused| {
            tracing::warn!(
                code = ?refused.code(),
                "refused a call to the Participant API: {}",
                refused.message()
            );
        })?;
        Ok(request)
    }
}
