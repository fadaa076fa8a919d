//! Who a certificate says its holder is: the URI SAN of a Lockstep certificate, in the
//! SPIFFE form (`spiffe://lockstep/coordinator`, `spiffe://lockstep/agent/<env>/<project>`,
//! `spiffe://lockstep/user/<name>`), so identities survive moves between hosts and need
//! no DNS names, and the same names work for tokens' subjects.

use std::fmt;

use rustls::pki_types::CertificateDer;

use crate::names::{Environment, ProjectName};

/// The trust domain of every Lockstep identity.
pub const TRUST_DOMAIN: &str = "lockstep";

/// A process or person, as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The coordinator: the only caller an agent takes Prepare, Commit, Abort and
    /// Preview from.
    Coordinator,
    /// The agent of one project in one environment.
    Agent {
        /// Its environment.
        environment: Environment,
        /// Its project.
        project: ProjectName,
    },
    /// A person or a CI job with a certificate.
    User {
        /// The name in the certificate.
        name: String,
    },
}

impl Identity {
    /// Parses a SPIFFE URI; `Err` says what is wrong with it.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let prefix = format!("spiffe://{TRUST_DOMAIN}/");
        let path = uri
            .strip_prefix(&prefix)
            .ok_or_else(|| format!("{uri:?} is not a {prefix}... identity"))?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["coordinator"] => Ok(Self::Coordinator),
            ["agent", env, project] => Ok(Self::Agent {
                environment: Environment::parse("agent environment", env)
                    .map_err(|e| e.to_string())?,
                project: ProjectName::parse("agent project", project).map_err(|e| e.to_string())?,
            }),
            ["user", name] if valid_user(name) => Ok(Self::User {
                name: (*name).to_string(),
            }),
            _ => Err(format!(
                "{uri:?} names no Lockstep identity (coordinator, agent/<env>/<project>, user/<name>)"
            )),
        }
    }

    /// The identity of a certificate: its one Lockstep URI SAN.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| format!("unreadable certificate: {e}"))?;
        let san = parsed
            .subject_alternative_name()
            .map_err(|e| format!("unreadable subject alternative names: {e}"))?
            .ok_or_else(|| "the certificate has no subject alternative names".to_string())?;
        let uris = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                _ => None,
            });
        let mut found = uris.filter(|u| u.starts_with("spiffe://"));
        match (found.next(), found.next()) {
            (Some(uri), None) => Self::parse(uri),
            (None, _) => Err("the certificate has no spiffe:// URI SAN".into()),
            (Some(_), Some(_)) => Err("the certificate has more than one spiffe:// URI SAN".into()),
        }
    }

    /// The SPIFFE URI.
    pub fn uri(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/{}", self.path())
    }

    fn path(&self) -> String {
        match self {
            Self::Coordinator => "coordinator".into(),
            Self::Agent {
                environment,
                project,
            } => format!("agent/{environment}/{project}"),
            Self::User { name } => format!("user/{name}"),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

/// A user name: what a project name may be (letters, digits, `-`, `_`, `.`), so it
/// reads the same in a URI, a token and the log.
pub fn valid_user(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_identity_reads_back_from_its_uri() {
        let all = [
            Identity::Coordinator,
            Identity::Agent {
                environment: Environment::parse("e", "staging").unwrap(),
                project: ProjectName::parse("p", "T4A").unwrap(),
            },
            Identity::User {
                name: "alice".into(),
            },
        ];
        for identity in all {
            assert_eq!(Identity::parse(&identity.uri()).unwrap(), identity);
        }
    }

    #[test]
    fn foreign_and_malformed_uris_are_refused_with_the_reason() {
        let refused = [
            "spiffe://other/coordinator",
            "spiffe://lockstep/agent/staging",
            "spiffe://lockstep/user/a b",
            "spiffe://lockstep/root",
        ];
        for uri in refused {
            let e = Identity::parse(uri).unwrap_err();
            assert!(e.contains(uri), "{e}");
        }
    }
}
