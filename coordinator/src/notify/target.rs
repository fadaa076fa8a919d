//! Where webhooks may go. A subscription URL is a request the coordinator makes on a
//! caller's behalf from inside the deployment's network, so its address is checked
//! after DNS resolution: when it is added, and again at every connection (DNS can
//! change between the two), through a resolver that refuses instead of resolving.
//!
//! The policy: loopback and public addresses are allowed; link-local ones
//! (169.254.0.0/16, fe80::/10), cloud metadata endpoints (169.254.169.254,
//! fd00:ec2::254, `metadata.google.internal`, ...), private ranges (10.0.0.0/8,
//! 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, fc00::/7) and addresses that are not
//! unicast are refused. Private ranges are refused because that is where the services
//! an outsider must not reach live; a receiver there is named with `--notify-allow`
//! (a range or a host name), and an explicit entry always wins.

use std::{
    collections::BTreeSet,
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use reqwest::{
    Url,
    dns::{Addrs, Name, Resolve, Resolving},
};

/// Metadata endpoints reached by address (AWS, GCP, Azure, Oracle, Alibaba, ECS/EKS).
const METADATA_ADDRESSES: [IpAddr; 7] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 0, 192)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
];

/// Metadata endpoints reached by name (refused whatever they resolve to).
const METADATA_NAMES: [&str; 5] = [
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// One `--notify-allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// An address range (a bare address is a range of one).
    Range(IpNet),
    /// A host name, allowed whatever it resolves to.
    Host(String),
}

/// Parses `--notify-allow CIDR|ADDRESS|HOST`.
pub fn parse_allow(value: &str) -> Result<Allowed, String> {
    let value = value.trim();
    if let Ok(net) = value.parse::<IpNet>() {
        return Ok(Allowed::Range(net.trunc()));
    }
    if let Ok(ip) = value.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(Allowed::Range(IpNet::from(ip)));
    }
    let host = normal(value);
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    if host.is_empty() || !host.chars().all(valid) {
        return Err(format!(
            "{value:?} is no address range, address or host name"
        ));
    }
    Ok(Allowed::Host(host))
}

/// What kind of address, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// Anything not below.
    Public,
    /// A private or shared range.
    Private,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// A cloud metadata endpoint.
    Metadata,
    /// Unspecified, broadcast, multicast or reserved: not a unicast receiver.
    NotUnicast,
}

impl Kind {
    /// How a refusal names it.
    fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "a loopback address",
            Self::Public => "a public address",
            Self::Private => "a private address",
            Self::LinkLocal => "a link-local address",
            Self::Metadata => "a cloud metadata address",
            Self::NotUnicast => "not a unicast address",
        }
    }

    /// Whether webhooks may go there unless `--notify-allow` says so.
    fn allowed_by_default(self) -> bool {
        matches!(self, Self::Loopback | Self::Public)
    }
}

/// The kind of `ip` (IPv4 inside IPv6, mapped or NAT64, counts as the IPv4 address).
pub fn kind(ip: IpAddr) -> Kind {
    let ip = match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if METADATA_ADDRESSES.contains(&ip) {
        return Kind::Metadata;
    }
    match ip {
        IpAddr::V4(v4) => kind_v4(v4),
        IpAddr::V6(v6) => kind_v6(v6),
    }
}

/// The IPv4 address an IPv6 one carries: `::ffff:a.b.c.d` or NAT64 `64:ff9b::a.b.c.d`.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let nat64 = v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    let [.., a, b, c, d] = v6.octets();
    v6.to_ipv4_mapped()
        .or_else(|| nat64.then_some(Ipv4Addr::new(a, b, c, d)))
}

fn kind_v4(ip: Ipv4Addr) -> Kind {
    let [a, b, ..] = ip.octets();
    let shared = a == 100 && (64..128).contains(&b);
    if ip.is_loopback() {
        Kind::Loopback
    } else if ip.is_link_local() {
        Kind::LinkLocal
    } else if ip.is_private() || shared {
        Kind::Private
    } else if a == 0 || a >= 224 {
        Kind::NotUnicast
    } else {
        Kind::Public
    }
}

fn kind_v6(ip: Ipv6Addr) -> Kind {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Kind::Loopback
    } else if ip.is_unicast_link_local() {
        Kind::LinkLocal
    } else if ip.is_unique_local() || first & 0xffc0 == 0xfec0 {
        Kind::Private
    } else if ip.is_unspecified() || ip.is_multicast() {
        Kind::NotUnicast
    } else {
        Kind::Public
    }
}

/// A host name as compared: lower case, without a trailing dot.
fn normal(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The policy: the defaults and the `--notify-allow` entries.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    ranges: Vec<IpNet>,
    hosts: BTreeSet<String>,
}

impl Policy {
    /// The default policy widened by `allowed`.
    pub fn new(allowed: &[Allowed]) -> Self {
        let mut policy = Self::default();
        for entry in allowed {
            match entry {
                Allowed::Range(net) => policy.ranges.push(*net),
                Allowed::Host(host) => drop(policy.hosts.insert(host.clone())),
            }
        }
        policy
    }

    /// Whether webhooks may go to `ip`; otherwise why not.
    pub fn address(&self, ip: IpAddr) -> Result<(), String> {
        let kind = kind(ip);
        let listed = self.ranges.iter().any(|net| net.contains(&ip));
        if listed || kind.allowed_by_default() {
            return Ok(());
        }
        Err(format!(
            "{ip} is {}; webhooks do not go there unless the coordinator runs with --notify-allow naming it",
            kind.describe()
        ))
    }

    /// `Some(Ok)` when host name `host` is allowed as such, `Some(Err)` when it is
    /// refused as such (a metadata name), `None` when its addresses decide.
    fn name(&self, host: &str) -> Option<Result<(), String>> {
        let host = normal(host);
        if self.hosts.contains(&host) {
            return Some(Ok(()));
        }
        METADATA_NAMES.contains(&host.as_str()).then(|| {
            Err(format!(
                "{host} is a cloud metadata address; webhooks do not go there unless the coordinator runs with --notify-allow {host}"
            ))
        })
    }

    /// Whether `host`, resolved to `addresses`, may be sent to: every address must be.
    pub fn resolved(&self, host: &str, addresses: &[IpAddr]) -> Result<(), String> {
        if let Some(verdict) = self.name(host) {
            return verdict;
        }
        if addresses.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        let refused = addresses.iter().map(|ip| self.address(*ip));
        let why = refused.filter_map(Result::err).next();
        why.map_or(Ok(()), |why| Err(format!("{host} resolves to {why}")))
    }

    /// The check of a URL whose host is an address or a refused name, which needs no
    /// resolution (the resolver is not asked for addresses): `Ok` for other names.
    pub fn literal(&self, url: &Url) -> Result<(), String> {
        match host(url) {
            Some(Host::Address(ip)) => self.address(ip),
            Some(Host::Name(name)) => self.name(name).unwrap_or(Ok(())),
            None => Err("the URL has no host".into()),
        }
    }
}

/// A URL's host.
enum Host<'a> {
    Address(IpAddr),
    Name(&'a str),
}

fn host(url: &Url) -> Option<Host<'_>> {
    let host = url.host_str()?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    Some(match bare.parse() {
        Ok(ip) => Host::Address(ip),
        Err(_) => Host::Name(host),
    })
}

/// Looks a host name up (the system resolver; a fake one in tests).
pub type Lookup = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> + Send + Sync,
>;

/// The system resolver (`getaddrinfo`, on tokio's blocking pool).
pub fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(found.map(|a| a.ip()).collect())
        })
    })
}

/// The policy with its resolver: checks URLs when they are added, and is the HTTP
/// client's resolver, so that every connection is to an address just checked.
#[derive(Clone)]
pub struct Guard {
    policy: Arc<Policy>,
    lookup: Lookup,
}

impl Guard {
    /// `policy`, resolving names with `lookup`.
    pub fn new(policy: Policy, lookup: Lookup) -> Self {
        Self {
            policy: Arc::new(policy),
            lookup,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether webhooks may go to `url` now, its host resolved if it is a name.
    pub async fn check(&self, url: &Url) -> Result<(), String> {
        let Some(Host::Name(name)) = host(url) else {
            return self.policy.literal(url);
        };
        if let Some(verdict) = self.policy.name(name) {
            return verdict;
        }
        let found = (self.lookup)(name.to_string()).await;
        let addresses = found.map_err(|e| format!("{name} does not resolve: {e}"))?;
        self.policy.resolved(name, &addresses)
    }

    /// The redirect rule: follow at most 10, each to a place the policy allows (a
    /// redirect to a name is checked by the resolver when it connects).
    pub fn redirects(&self) -> reqwest::redirect::Policy {
        let policy = self.policy.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("more than 10 redirects");
            }
            match policy.literal(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(format!("refused redirect: {why}")),
            }
        })
    }
}

/// A refusal as a delivery reports it.
pub fn refused(why: String) -> String {
    format!("refused: {why}")
}

/// The HTTP client deliveries use: every name resolved through `guard`, redirects
/// checked, no proxy (the address connected to is the one checked), `timeout` to
/// connect and to read.
pub fn client(guard: &Guard, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(guard.clone()))
        .redirect(guard.redirects())
        .no_proxy()
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .timeout(timeout)
        .build()
}

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let policy = self.policy.clone();
        let found = (self.lookup)(host.clone());
        Box::pin(async move {
            let addresses = found.await?;
            policy
                .resolved(&host, &addresses)
                .map_err(|why| io::Error::new(io::ErrorKind::PermissionDenied, refused(why)))?;
            let addrs = addresses.into_iter().map(|ip| SocketAddr::new(ip, 0));
            Ok(Box::new(addrs) as Addrs)
        })
    }
}

#[cfg(test)]
#[path = "target_tests.rs"]
mod tests;
