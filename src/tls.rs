//! TLS for every Lockstep process, from PEM files: the server side accepts connections
//! with certificates that can be swapped while it runs (SIGHUP re-reads the files, new
//! connections use them, open ones keep theirs), and the client side presents its own
//! certificate and trusts only the deployment's CA.
//!
//! A server asks every client for a certificate but lets the handshake finish without
//! one, and with one from a CA it does not trust: the handshake proves only that the
//! client holds the key of what it presented. The chain is checked against the CA
//! afterwards, per call ([`ServerTls::verify_peer`]), so that a caller with no
//! credential or a foreign certificate hears UNAUTHENTICATED with a reason instead of a
//! bare TLS alert, and a caller that brings a bearer token needs no certificate.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    DigitallySignedStruct, DistinguishedName, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};

/// How long a client may take over its TLS handshake before the connection is dropped
/// (a client that stalls its handshake must not hold a connection slot for ever).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS could not be set up; names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing, unreadable or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificates and key do not make a valid configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The three files a process's TLS is made of.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// This process's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA certificate(s) (PEM) that peers' certificates must chain to.
    pub ca: PathBuf,
}

/// The crypto provider every Lockstep TLS configuration uses (ring, as tonic's
/// `tls-ring`), named explicitly so no process-wide default is needed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(fail("holds no certificate".into()));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        reason: format!("not a PEM private key: {e}"),
    })
}

fn roots(ca: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::File {
            path: ca.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// One loading of the files: the acceptor for new connections and the verifier that
/// checks callers' chains against the CA.
struct Loaded {
    acceptor: TlsAcceptor,
    /// The same, offering HTTP/1.1 instead of HTTP/2 (the HTTP API and console).
    http: TlsAcceptor,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl Loaded {
    fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let config = |e: rustls::Error| TlsError::Config(e.to_string());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let handshake = Arc::new(AnyClientCert {
            strict: verifier.clone(),
            algorithms: provider().signature_verification_algorithms,
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_client_cert_verifier(handshake)
            .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)
            .map_err(config)?;
        let mut http = server.clone();
        server.alpn_protocols = vec![b"h2".to_vec()];
        // HTTP/2 first: a browser's tabs then share one connection, where HTTP/1.1's six
        // per host were taken by the console's endless event streams.
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            http: TlsAcceptor::from(Arc::new(http)),
            verifier,
        })
    }
}

/// A server's TLS: accepts connections and checks callers' certificates, with files
/// that [`ServerTls::reload`] re-reads while the server runs.
#[derive(Clone)]
pub struct ServerTls {
    files: TlsFiles,
    current: Arc<RwLock<Arc<Loaded>>>,
}

impl ServerTls {
    /// Reads the files; an error names the file and what is wrong.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let loaded = Loaded::read(&files)?;
        Ok(Self {
            files,
            current: Arc::new(RwLock::new(Arc::new(loaded))),
        })
    }

    /// Re-reads the files (certificate rotation): new connections use them. On an error
    /// the ones in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = Arc::new(Loaded::read(&self.files)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks a caller's certificate chain (as the TLS handshake gave it) against the
    /// CA, now: `Err` says why it is not trusted (another CA, expired, not for clients).
    pub fn verify_peer(&self, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let (end_entity, intermediates) = chain
            .split_first()
            .ok_or_else(|| "an empty certificate chain".to_string())?;
        self.loaded()
            .verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// TLS connections over `tcp`'s: each handshake runs in a task of its own (one slow
    /// client delays nobody else) and is given [`HANDSHAKE_TIMEOUT`]; failed handshakes
    /// are logged and dropped. Accepting stops as soon as the returned stream is
    /// dropped, before another connection is taken: a standby's port shares its socket
    /// with the server that follows it, and must not take that server's callers.
    pub fn incoming(
        &self,
        tcp: impl Stream<Item = io::Result<TcpStream>> + Send + 'static,
    ) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + Send + 'static {
        self.accept_with(tcp, |loaded| loaded.acceptor.clone())
    }

    /// As [`ServerTls::incoming`], for HTTP/1.1 (the HTTP API and console).
    pub fn incoming_http(
        &self,
        tcp: impl Stream<Item = io::Result<TcpStream>> + Send + 'static,
    ) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + Send + 'static {
        self.accept_with(tcp, |loaded| loaded.http.clone())
    }

    fn accept_with(
        &self,
        tcp: impl Stream<Item = io::Result<TcpStream>> + Send + 'static,
        acceptor: fn(&Loaded) -> TlsAcceptor,
    ) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + Send + 'static {
        let (ready, accepted) = tokio::sync::mpsc::channel(64);
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tcp = std::pin::pin!(tcp);
            loop {
                let stream = tokio::select! {
                    biased;
                    () = ready.closed() => return,
                    stream = tcp.next() => stream,
                };
                match stream {
                    Some(Ok(stream)) => {
                        Self::handshake(acceptor(&tls.loaded()), stream, ready.clone())
                    }
                    Some(Err(e)) => tracing::debug!("accept failed: {e}"),
                    None => return,
                }
            }
        });
        ReceiverStream::new(accepted)
    }

    fn handshake(
        acceptor: TlsAcceptor,
        stream: TcpStream,
        ready: tokio::sync::mpsc::Sender<io::Result<TlsStream<TcpStream>>>,
    ) {
        tokio::spawn(async move {
            let peer = stream.peer_addr().ok();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send(Ok(tls)).await;
                }
                Ok(Err(e)) => tracing::info!(?peer, "TLS handshake refused: {e}"),
                Err(_) => tracing::info!(?peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Re-reads `tls`'s files on every SIGHUP, for as long as the process runs (rotation
/// without a restart). Logs what happened either way.
pub fn reload_on_sighup(tls: ServerTls) -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: certificates re-read; new connections use them"),
                Err(e) => {
                    tracing::error!("SIGHUP: certificates not re-read, keeping the old ones: {e}")
                }
            }
        }
    });
    Ok(())
}

/// The client side: trusts `ca` only and, when given, presents `identity` (certificate
/// and key files).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        })
    };
    read_certs(ca)?;
    let mut config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = identity {
        read_certs(cert)?;
        read_key(key)?;
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        config = config.identity(identity);
    }
    Ok(config)
}

/// The handshake's verifier: asks for a certificate, accepts any (or none), and checks
/// only that the client holds its key; [`ServerTls::verify_peer`] checks the chain.
#[derive(Debug)]
struct AnyClientCert {
    strict: Arc<dyn ClientCertVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.strict.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A server's TLS as its flags give it: all three files, or `--insecure` (plaintext, no
/// authentication, warned about in the log), and nothing in between. `Err` says what is
/// missing.
pub fn files_from_flags(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    insecure: bool,
) -> Result<Option<TlsFiles>, String> {
    match (cert, key, ca, insecure) {
        (None, None, None, true) => {
            tracing::warn!(
                "--insecure: plaintext, and every caller may do everything; for local experiments only"
            );
            Ok(None)
        }
        (Some(cert), Some(key), Some(ca), false) => Ok(Some(TlsFiles { cert, key, ca })),
        (_, _, _, true) => Err("--insecure: give it without --tls-cert, --tls-key and --tls-client-ca".into()),
        _ => Err(
            "TLS: give --tls-cert, --tls-key and --tls-client-ca together (`lockstep certs init DIR` makes a development set), or --insecure for plaintext without authentication"
                .into(),
        ),
    }
}
