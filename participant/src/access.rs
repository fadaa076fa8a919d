//! Only the coordinator may give an agent orders: with TLS, every Prepare, Commit, Abort
//! and Preview must come with a client certificate that chains to the deployment's CA
//! and names the coordinator identity the agent was configured with. Anyone else who
//! can reach the agent could otherwise abort a prepared participant behind the
//! coordinator's back and split a release. GetStatus (read only) is open to every
//! identity the CA vouches for, so operators and probes can look.

use lockstep::{caller::Credentials, identity::Identity, tls::ServerTls};
use tonic::{Request, Status};

/// Who may call an agent.
#[derive(Clone)]
pub struct OnlyCoordinator {
    /// The server's TLS (None: `--insecure`, everyone is let through).
    tls: Option<ServerTls>,
    /// The one identity orders are taken from.
    coordinator: Identity,
}

impl OnlyCoordinator {
    /// Takes orders only from `coordinator`, as `tls` authenticates callers.
    pub fn new(tls: ServerTls, coordinator: Identity) -> Self {
        Self {
            tls: Some(tls),
            coordinator,
        }
    }

    /// No authentication (`--insecure`, the simulation): everyone may do everything.
    pub fn insecure() -> Self {
        Self {
            tls: None,
            coordinator: Identity::Coordinator,
        }
    }

    /// Lets `request` through if it is an order from the coordinator.
    pub fn orders<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.check(request, true).inspect_err(log)
    }

    /// Lets `request` through if the CA vouches for its caller.
    pub fn reads<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.check(request, false).inspect_err(log)
    }

    fn check<T>(&self, request: &Request<T>, order: bool) -> Result<(), Status> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let credentials = Credentials::of(request, tls)?;
        match credentials.certificate {
            Some(identity) if identity == self.coordinator || !order => Ok(()),
            Some(other) => Err(Status::permission_denied(format!(
                "permission order (Prepare, Commit, Abort, Preview) is the coordinator's alone: this agent takes orders from {} only, and the caller is {}",
                self.coordinator.uri(),
                other.uri()
            ))),
            None if credentials.token.is_some() => Err(Status::unauthenticated(
                "agents take no tokens: present a client certificate issued by the deployment's CA",
            )),
            None => Err(Credentials::none_given()),
        }
    }
}

fn log(refused: &Status) {
    tracing::warn!(
        code = ?refused.code(),
        "refused a call to the Participant API: {}",
        refused.message()
    );
}
