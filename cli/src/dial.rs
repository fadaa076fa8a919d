//! How the CLI reaches the coordinator: the URL, TLS (the CA to trust, and a client
//! certificate when given) and a bearer token sent with every call. One [`Dial`], so a
//! watcher that reconnects presents the same credentials as the first call.

use std::{path::PathBuf, time::Duration};

use lockstep::pb::coordinator_client::CoordinatorClient;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, ClientTlsConfig},
};

use crate::{Failure, Result, UNREACHABLE};

/// How long each of several coordinators is given to say whether it leads.
const LEADER_PROBE: Duration = Duration::from_secs(2);

/// A coordinator client that presents the CLI's token, if any.
pub type Client = CoordinatorClient<InterceptedService<Channel, Outgoing>>;

/// What every call carries: `authorization: Bearer <token>` when a token was given, the
/// trace context, and its deadline (`grpc-timeout`: `--call-timeout`, unless the call
/// set one of its own), which tonic also holds the call to on this side. A coordinator
/// that takes the call and never answers (a handler stalled while the process still
/// answers HTTP/2 pings, which `lockstep::edge`'s keepalive checks) fails it after that
/// long instead of hanging the command.
#[derive(Clone)]
pub struct Outgoing {
    token: Option<MetadataValue<Ascii>>,
    timeout: Duration,
}

impl Interceptor for Outgoing {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        if !request.metadata().contains_key("grpc-timeout") {
            request.set_timeout(self.timeout);
        }
        // The command's span, so the coordinator's work joins the CLI's trace.
        lockstep::trace::inject(request.metadata_mut());
        Ok(request)
    }
}

/// The credentials flags: `--ca`, `--cert`/`--key`, `--token`.
pub struct Credentials {
    /// The CA the coordinator's certificate chains to.
    pub ca: Option<PathBuf>,
    /// A client certificate.
    pub cert: Option<PathBuf>,
    /// Its key.
    pub key: Option<PathBuf>,
    /// A bearer token.
    pub token: Option<String>,
    /// How long each call waits for its answer (`--call-timeout`).
    pub call_timeout: Duration,
}

/// Everything needed to (re)connect.
#[derive(Clone)]
pub struct Dial {
    /// The coordinator's URL.
    pub url: String,
    tls: Option<ClientTlsConfig>,
    outgoing: Outgoing,
}

impl Dial {
    /// Checks the flags (exit 2 on a bad combination or an unreadable file).
    pub fn new(url: &str, c: Credentials) -> Result<Self> {
        let identity = match (&c.cert, &c.key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => return Err(Failure::usage("--cert and --key go together")),
        };
        let tls = match &c.ca {
            Some(ca) => Some(
                lockstep::tls::client_config(ca, identity)
                    .map_err(|e| Failure::usage(e.to_string()))?,
            ),
            None if identity.is_some() => {
                return Err(Failure::usage(
                    "--cert needs --ca (the CA the coordinator's certificate chains to)",
                ));
            }
            None => None,
        };
        let token = c.token.map(|t| bearer(&t, tls.is_some())).transpose()?;
        Ok(Self {
            url: url.to_string(),
            tls,
            outgoing: Outgoing {
                token,
                timeout: c.call_timeout,
            },
        })
    }

    /// A connected client (exit 3 when the coordinator cannot be reached). Given
    /// several URLs (comma-separated: every instance of a coordinator on etcd), the one
    /// whose health says it leads.
    pub async fn connect(&self) -> Result<Client> {
        let urls: Vec<&str> = self.url.split(',').map(str::trim).collect();
        urls.iter().try_for_each(|url| with_scheme(url))?;
        if let [one] = urls.as_slice() {
            return self.connect_to(one).await.map(|c| self.client(c));
        }
        let mut seen = Vec::new();
        for url in urls {
            match self.connect_to(url).await {
                Ok(c) if lockstep::standby::leads(c.clone(), LEADER_PROBE).await => {
                    return Ok(self.client(c));
                }
                Ok(_) => seen.push(format!("{url}: not leading")),
                Err(e) => seen.push(e.message),
            }
        }
        Err(Failure::new(
            UNREACHABLE,
            format!(
                "no coordinator of --coordinator leads now ({})",
                seen.join("; ")
            ),
        ))
    }

    fn client(&self, channel: Channel) -> Client {
        let client = CoordinatorClient::with_interceptor(channel, self.outgoing.clone());
        client.max_decoding_message_size(lockstep::limits::MAX_MESSAGE_BYTES)
    }

    async fn connect_to(&self, url: &str) -> Result<Channel> {
        let endpoint = lockstep::edge::endpoint(url)
            .map_err(|e| Failure::usage(format!("--coordinator {url:?} is not a URL: {e}")))?
            .connect_timeout(Duration::from_secs(5));
        let endpoint = lockstep::edge::secured(endpoint, self.tls.as_ref())
            .map_err(|e| Failure::usage(format!("--coordinator {e}")))?;
        endpoint.connect().await.map_err(|e| {
            Failure::new(
                UNREACHABLE,
                format!("cannot reach the coordinator at {url}: {}", causes(&e)),
            )
        })
    }
}

/// `127.0.0.1:7700` parses as a URL of scheme `127.0.0.1`, then fails to connect: a
/// usage error, said as one (the scheme in any case, as the URL parser takes it).
fn with_scheme(url: &str) -> Result<()> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("http" | "https") => Ok(()),
        _ => Err(Failure::usage(format!(
            "--coordinator {url:?}: give http:// or https:// (e.g. http://{url})"
        ))),
    }
}

/// An error with every cause under it (`transport error: tcp connect error: Connection
/// refused`): tonic's transport error alone says only "transport error", whether the
/// port was closed or the certificate was not trusted.
fn causes(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !out.contains(&said) {
            out = format!("{out}: {said}");
        }
        source = cause.source();
    }
    out
}

fn bearer(token: &str, tls: bool) -> Result<MetadataValue<Ascii>> {
    if !tls {
        return Err(Failure::usage(
            "--token needs TLS (--ca and an https:// coordinator): it would travel in the clear",
        ));
    }
    format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| Failure::usage("--token: not a token (unexpected characters)"))
}
