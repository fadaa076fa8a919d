//! What a call brings to say who makes it: the identity of a client certificate that
//! chains to the deployment's CA, and a bearer token. Servers turn these into their own
//! idea of the caller (an agent: is it the coordinator; the coordinator: roles); this
//! module only reads and checks them, the same way for every server.

use tonic::{Request, Status, metadata::MetadataMap};

use crate::{identity::Identity, tls::ServerTls};

/// What a call proved about its caller.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The identity of its certificate, which chains to the CA.
    pub certificate: Option<Identity>,
    /// The bearer token from the `authorization` header, unchecked.
    pub token: Option<String>,
}

impl Credentials {
    /// Reads a call's credentials. A certificate that does not chain to the CA, or has
    /// no Lockstep identity, is UNAUTHENTICATED (a caller that presents one must mean
    /// it), as is a malformed `authorization` header.
    pub fn of<T>(request: &Request<T>, tls: &ServerTls) -> Result<Self, Status> {
        let certificate = match request.peer_certs() {
            Some(chain) if !chain.is_empty() => Some(certified(&chain, tls)?),
            _ => None,
        };
        let token = bearer(request.metadata())?;
        Ok(Self { certificate, token })
    }

    /// UNAUTHENTICATED for a call that brought nothing.
    pub fn none_given() -> Status {
        Status::unauthenticated(
            "no credentials: present a client certificate issued by the deployment's CA \
             (--cert/--key) or a token (--token, LOCKSTEP_TOKEN)",
        )
    }
}

fn certified(
    chain: &[rustls::pki_types::CertificateDer<'static>],
    tls: &ServerTls,
) -> Result<Identity, Status> {
    tls.verify_peer(chain).map_err(|e| {
        Status::unauthenticated(format!(
            "client certificate not accepted: {e} (it must be issued by this deployment's CA)"
        ))
    })?;
    Identity::of_certificate(&chain[0])
        .map_err(|e| Status::unauthenticated(format!("client certificate not accepted: {e}")))
}

fn bearer(metadata: &MetadataMap) -> Result<Option<String>, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(None);
    };
    let malformed = || Status::unauthenticated("authorization: expected \"Bearer <token>\"");
    let text = value.to_str().map_err(|_| malformed())?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(malformed)?;
    Ok(Some(token.trim().to_string()))
}
