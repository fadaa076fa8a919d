//! The address policy, the resolver that applies it at every connection, and the
//! `--notify-allow` entries.

use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a test address")
}

fn url(text: &str) -> Url {
    Url::parse(text).expect("a test URL")
}

/// A resolver that answers what the test last set: DNS that changes.
fn changing(first: &str) -> (Lookup, Arc<Mutex<Vec<IpAddr>>>) {
    let answer = Arc::new(Mutex::new(vec![ip(first)]));
    let shared = answer.clone();
    let lookup: Lookup = Arc::new(move |_host: String| {
        let now = shared.lock().expect("not poisoned").clone();
        Box::pin(async move { Ok(now) })
    });
    (lookup, answer)
}

#[test]
fn addresses_are_classified_with_ipv4_inside_ipv6_as_ipv4() {
    let cases = [
        ("127.0.0.1", Kind::Loopback),
        ("::1", Kind::Loopback),
        ("93.184.216.34", Kind::Public),
        ("2606:4700::1111", Kind::Public),
        ("10.1.2.3", Kind::Private),
        ("172.16.0.1", Kind::Private),
        ("192.168.1.1", Kind::Private),
        ("100.64.0.1", Kind::Private),
        ("fd12:3456::1", Kind::Private),
        ("169.254.10.20", Kind::LinkLocal),
        ("fe80::1", Kind::LinkLocal),
        ("169.254.169.254", Kind::Metadata),
        ("fd00:ec2::254", Kind::Metadata),
        ("100.100.100.200", Kind::Metadata),
        ("::ffff:169.254.169.254", Kind::Metadata),
        ("64:ff9b::a9fe:a9fe", Kind::Metadata),
        ("::ffff:10.0.0.1", Kind::Private),
        ("0.0.0.0", Kind::NotUnicast),
        ("::", Kind::NotUnicast),
        ("224.0.0.1", Kind::NotUnicast),
        ("255.255.255.255", Kind::NotUnicast),
    ];
    for (address, expected) in cases {
        assert_eq!(kind(ip(address)), expected, "{address}");
    }
}

#[test]
fn loopback_and_public_are_allowed_the_rest_refused_saying_why() {
    let policy = Policy::default();
    assert!(policy.address(ip("127.0.0.1")).is_ok());
    assert!(policy.address(ip("8.8.8.8")).is_ok());
    let why = policy.address(ip("169.254.169.254")).unwrap_err();
    assert!(
        why.contains("metadata") && why.contains("--notify-allow"),
        "{why}"
    );
    assert!(
        policy
            .address(ip("fe80::1"))
            .unwrap_err()
            .contains("link-local")
    );
    assert!(
        policy
            .address(ip("192.168.0.7"))
            .unwrap_err()
            .contains("private")
    );
    let named = policy
        .literal(&url("http://Metadata.Google.Internal./x"))
        .unwrap_err();
    assert!(named.contains("metadata"), "{named}");
    assert!(policy.literal(&url("http://[fe80::1]:80/")).is_err());
    assert!(
        policy.literal(&url("http://example.com/")).is_ok(),
        "resolved later"
    );
}

#[test]
fn an_explicit_entry_always_wins() {
    let allowed: Vec<Allowed> = ["10.0.0.0/8", "fd00:ec2::254", "metadata", "hooks.internal"]
        .iter()
        .map(|v| parse_allow(v).unwrap())
        .collect();
    let policy = Policy::new(&allowed);
    assert!(policy.address(ip("10.9.8.7")).is_ok());
    assert!(policy.address(ip("11.0.0.1")).is_ok(), "public anyway");
    assert!(policy.address(ip("fd00:ec2::254")).is_ok());
    assert!(policy.address(ip("192.168.0.1")).is_err(), "not listed");
    assert!(
        policy
            .resolved("metadata", &[ip("169.254.169.254")])
            .is_ok()
    );
    assert!(
        policy
            .resolved("HOOKS.internal.", &[ip("172.16.0.9")])
            .is_ok()
    );
    assert!(
        policy
            .resolved("other.internal", &[ip("172.16.0.9")])
            .is_err()
    );
}

#[test]
fn allow_entries_are_ranges_addresses_or_host_names() {
    let range = |v: &str| Allowed::Range(v.parse().unwrap());
    assert_eq!(parse_allow("10.1.2.3/8"), Ok(range("10.0.0.0/8")));
    assert_eq!(parse_allow("10.1.2.3"), Ok(range("10.1.2.3/32")));
    assert_eq!(parse_allow("[fe80::1]"), Ok(range("fe80::1/128")));
    assert_eq!(
        parse_allow("Hooks.Example."),
        Ok(Allowed::Host("hooks.example".into()))
    );
    assert!(parse_allow("").is_err());
    assert!(parse_allow("http://x/").is_err());
}

#[test]
fn a_name_is_refused_if_any_of_its_addresses_is() {
    let policy = Policy::default();
    let mixed = [ip("93.184.216.34"), ip("169.254.1.1")];
    let why = policy.resolved("twofaced.example", &mixed).unwrap_err();
    assert!(
        why.contains("twofaced.example") && why.contains("link-local"),
        "{why}"
    );
    assert!(policy.resolved("nothing.example", &[]).is_err());
}

#[tokio::test]
async fn a_name_is_checked_again_when_its_answer_changes() {
    let (lookup, answer) = changing("127.0.0.1");
    let guard = Guard::new(Policy::default(), lookup);
    let hook = url("http://hooks.example:8080/hook");
    assert_eq!(guard.check(&hook).await, Ok(()));
    *answer.lock().unwrap() = vec![ip("169.254.169.254")];
    let why = guard.check(&hook).await.unwrap_err();
    assert!(why.contains("metadata"), "{why}");
}

/// A real HTTP server on loopback that answers 200 and counts its connections.
async fn server() -> (u16, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut buffer = [0u8; 4096];
            let _ = socket.read(&mut buffer).await;
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            let _ = socket.write_all(answer).await;
        }
    });
    (port, connections)
}

#[tokio::test]
async fn every_connection_is_to_an_address_checked_just_before() {
    let (port, connections) = server().await;
    let (lookup, answer) = changing("127.0.0.1");
    let guard = Guard::new(Policy::default(), lookup);
    let http = client(&guard, Duration::from_secs(5)).unwrap();
    let hook = format!("http://hooks.example:{port}/hook");
    let first = http.post(&hook).send().await.unwrap();
    assert_eq!(first.status(), 200);

    // The name now points at the metadata service: the next delivery is refused
    // before any connection is made.
    *answer.lock().unwrap() = vec![ip("169.254.169.254")];
    let refused = http.post(&hook).send().await.unwrap_err();
    let why = crate::notify::cloud::describe(&refused);
    assert!(why.contains("metadata"), "{why}");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_redirect_to_a_refused_address_is_not_followed() {
    let guard = Guard::new(Policy::default(), changing("127.0.0.1").0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buffer = [0u8; 4096];
        let _ = socket.read(&mut buffer).await;
        let answer = "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://169.254.169.254/latest\r\ncontent-length: 0\r\n\r\n";
        let _ = socket.write_all(answer.as_bytes()).await;
    });
    let http = client(&guard, Duration::from_secs(5)).unwrap();
    let hook = format!("http://127.0.0.1:{port}/hook");
    let refused = http.post(&hook).send().await.unwrap_err();
    let why = crate::notify::cloud::describe(&refused);
    assert!(
        why.contains("refused redirect") && why.contains("metadata"),
        "{why}"
    );
}
