//! `lockstep certs init DIR`: a development CA and certificates for a local deployment,
//! so mutual TLS is one command away. Each certificate names its holder by a SPIFFE URI
//! SAN (`spiffe://lockstep/coordinator`, `.../agent/<env>/<project>`, `.../user/<name>`),
//! which is what the servers authorize by; server certificates are also valid for
//! localhost, 127.0.0.1 and `--hosts`. Keys are written readable by their owner only.
//! An existing CA in DIR is reused, so rerunning renews the other certificates (then
//! SIGHUP the servers: they re-read their files without a restart).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use lockstep::{
    identity::{Identity, valid_user},
    names::{Environment, ProjectName},
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::{
    Failure, OK, Result,
    args::{CertsCommand, Output},
};

/// The CA's subject: fixed, so a rerun can sign with an existing CA key.
const CA_NAME: &str = "Lockstep development CA";

/// Runs `lockstep certs init`.
pub fn run(c: &CertsCommand, output: Output) -> Result<u8> {
    let CertsCommand::Init {
        dir,
        environment,
        agents,
        users,
        hosts,
        valid_for,
    } = c;
    let holders = holders(environment, agents, users)?;
    // Every name checked before anything is written: a bad --hosts used to be found
    // after the CA and the first certificates were on disk.
    server_names(hosts)?;
    std::fs::create_dir_all(dir).map_err(|e| io_failure(dir, e))?;
    let (ca, reused) = ca(dir)?;
    for (file, identity) in &holders {
        leaf(dir, file, identity, hosts, *valid_for, &ca)?;
    }
    let made: Vec<String> = holders.iter().map(|(f, _)| format!("{f}.crt")).collect();
    let ca_note = if reused { "reused" } else { "new" };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"dir": dir.display().to_string(), "ca": {"file": "ca.crt", "reused": reused}, "certificates": made})
        ),
        Output::Table => println!("{}: ca.crt ({ca_note}), {}", dir.display(), made.join(", ")),
    }
    Ok(OK)
}

/// File stem and identity of every certificate to make.
fn holders(env: &str, agents: &[String], users: &[String]) -> Result<Vec<(String, Identity)>> {
    let usage = |e: lockstep::names::FieldError| Failure::usage(e.to_string());
    let environment = Environment::parse("--env", env).map_err(usage)?;
    let mut out = vec![("coordinator".to_string(), Identity::Coordinator)];
    for agent in agents {
        let project = ProjectName::parse("--agents", agent).map_err(usage)?;
        let file = format!("agent-{environment}-{project}");
        let identity = Identity::Agent {
            environment: environment.clone(),
            project,
        };
        out.push((file, identity));
    }
    for user in users {
        if !valid_user(user) {
            return Err(Failure::usage(format!(
                "--users {user:?}: a user name is 1-64 letters, digits, '-', '_' or '.'"
            )));
        }
        let identity = Identity::User { name: user.clone() };
        out.push((format!("user-{user}"), identity));
    }
    Ok(out)
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_failure)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// The CA in `dir` (made now unless both files are there) and whether it was reused.
fn ca(dir: &Path) -> Result<(Issuer<'static, KeyPair>, bool)> {
    let (cert_file, key_file) = (dir.join("ca.crt"), dir.join("ca.key"));
    if cert_file.is_file() && key_file.is_file() {
        let pem = std::fs::read_to_string(&key_file).map_err(|e| io_failure(&key_file, e))?;
        let key = KeyPair::from_pem(&pem)
            .map_err(|e| Failure::usage(format!("{}: {e}", key_file.display())))?;
        return Ok((Issuer::new(ca_params()?, key), true));
    }
    let key = KeyPair::generate().map_err(rcgen_failure)?;
    let params = ca_params()?;
    let cert = params.self_signed(&key).map_err(rcgen_failure)?;
    write(&cert_file, &cert.pem(), false)?;
    write(&key_file, &key.serialize_pem(), true)?;
    Ok((Issuer::new(params, key), false))
}

fn leaf(
    dir: &Path,
    file: &str,
    identity: &Identity,
    hosts: &[String],
    valid_for: Duration,
    ca: &Issuer<'static, KeyPair>,
) -> Result<()> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_failure)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, identity.to_string());
    let uri = identity.uri().try_into().map_err(rcgen_failure)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if !matches!(identity, Identity::User { .. }) {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        params.subject_alt_names.extend(server_names(hosts)?);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + valid_for;
    let key = KeyPair::generate().map_err(rcgen_failure)?;
    let cert = params.signed_by(&key, ca).map_err(rcgen_failure)?;
    write(&dir.join(format!("{file}.crt")), &cert.pem(), false)?;
    write(&dir.join(format!("{file}.key")), &key.serialize_pem(), true)
}

/// localhost, 127.0.0.1, ::1 and `hosts` (IP addresses or DNS names).
fn server_names(hosts: &[String]) -> Result<Vec<SanType>> {
    let defaults = ["localhost", "127.0.0.1", "::1"].map(String::from);
    let mut out = Vec::new();
    for host in defaults.iter().chain(hosts) {
        let san =
            match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.as_str().try_into().map_err(|e| {
                    Failure::usage(format!("--hosts {host:?}: not a DNS name: {e}"))
                })?),
            };
        out.push(san);
    }
    Ok(out)
}

fn write(path: &PathBuf, text: &str, secret: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mode = if secret { 0o600 } else { 0o644 };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(mode);
    let mut file = options.open(path).map_err(|e| io_failure(path, e))?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| io_failure(path, e))
}

fn io_failure(path: &Path, e: std::io::Error) -> Failure {
    Failure::new(crate::REFUSED, format!("{}: {e}", path.display()))
}

fn rcgen_failure(e: rcgen::Error) -> Failure {
    Failure::new(crate::REFUSED, format!("making certificates: {e}"))
}
