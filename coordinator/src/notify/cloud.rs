//! One log event as a CloudEvent 1.0 HTTP request (structured or binary mode, through
//! the `cloudevents-sdk` crate), signed when the subscription has a secret, and what the
//! receiver's answer means for delivery.
//!
//! The `id` is the event's log sequence number and the `source` names this data
//! directory, so a redelivery is recognisably the same event; the `sequence` extension
//! carries the same number zero-padded, so that it sorts as a string.

use std::time::{Duration, SystemTime};

use cloudevents::{EventBuilder, EventBuilderV10, binding::reqwest::RequestBuilderExt};
use lockstep::pb;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use super::{
    kinds,
    subscription::{Mode, SubscriptionRecord},
};

/// The header carrying `sha256=<hex>`: HMAC-SHA256 of the body with the secret.
pub const SIGNATURE: &str = "x-lockstep-signature-256";

/// Standard Webhooks: the message id (the CloudEvent id, the same on every attempt).
pub const WEBHOOK_ID: &str = "webhook-id";
/// Standard Webhooks: when this attempt was signed, in seconds since the epoch.
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// Standard Webhooks: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// The longest `Retry-After` honoured as given (longer ones wait this long).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `seq` as 20 digits.
pub fn sequence(seq: u64) -> String {
    format!("{seq:020}")
}

/// The CloudEvent of log event `e` from coordinator `source`.
pub fn from_log(e: &pb::Event, source: &str) -> Result<cloudevents::Event, String> {
    let data = serde_json::to_value(e).map_err(|err| err.to_string())?;
    let millis = lockstep::wire::millis_of(e.time.as_ref());
    let subject = match e.transaction_id.is_empty() {
        true => &e.project,
        false => &e.transaction_id,
    };
    let mut builder = EventBuilderV10::new()
        .id(sequence(e.seq))
        .source(source)
        .ty(format!("{}{}", kinds::TYPE_PREFIX, kinds::name(e.kind)))
        .time(rfc3339(
            SystemTime::UNIX_EPOCH + Duration::from_millis(millis),
        ))
        .extension("sequence", sequence(e.seq))
        .data("application/json", data);
    if !subject.is_empty() {
        builder = builder.subject(subject.as_str());
    }
    // The CloudEvents distributed tracing extension: the release's trace.
    if !e.trace_parent.is_empty() {
        builder = builder.extension("traceparent", e.trace_parent.as_str());
    }
    builder.build().map_err(|err| err.to_string())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The `dev.lockstep.ping` CloudEvent that `notify test` sends to `name`.
pub fn ping(name: &str, source: &str) -> Result<cloudevents::Event, String> {
    let now = lockstep::wire::now_millis();
    let data =
        serde_json::json!({ "subscription": name, "message": "ping from lockstep notify test" });
    EventBuilderV10::new()
        .id(format!("ping-{now}"))
        .source(source)
        .ty(format!("{}ping", kinds::TYPE_PREFIX))
        .subject(name)
        .time(rfc3339(SystemTime::now()))
        .data("application/json", data)
        .build()
        .map_err(|err| err.to_string())
}

/// The POST of `event` to `s`, in its mode, signed with its secret (both ways).
pub fn request(
    client: &reqwest::Client,
    s: &SubscriptionRecord,
    event: cloudevents::Event,
) -> Result<reqwest::Request, String> {
    let id = cloudevents::AttributesReader::id(&event).to_string();
    let traceparent = event.extension("traceparent").map(|t| t.to_string());
    let post = client.post(&s.url);
    let post = match s.mode {
        Mode::Binary => post.event(event).map_err(|e| e.to_string())?,
        Mode::Structured => {
            let body = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
            post.header(CONTENT_TYPE, "application/cloudevents+json")
                .body(body)
        }
    };
    let mut request = post.build().map_err(|e| describe(&e))?;
    // And as the W3C header, for receivers that trace their HTTP calls.
    if let Some(value) = traceparent.and_then(|t| t.parse().ok()) {
        request.headers_mut().insert("traceparent", value);
    }
    if !s.secret.is_empty() {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
        let timestamp = now.map_or(0, |d| d.as_secs());
        sign_request(&mut request, &s.secret, &id, timestamp)?;
    }
    Ok(request)
}

/// Adds both signatures of `request`'s body under `secret`: the Lockstep header, and
/// the Standard Webhooks headers for message `id` sent at `timestamp`.
fn sign_request(
    request: &mut reqwest::Request,
    secret: &str,
    id: &str,
    timestamp: u64,
) -> Result<(), String> {
    let body = request
        .body()
        .and_then(|b| b.as_bytes())
        .unwrap_or_default();
    let standard = standard_signature(secret, id, timestamp, body);
    let headers = [
        (SIGNATURE, sign(secret, body)),
        (WEBHOOK_ID, id.to_string()),
        (WEBHOOK_TIMESTAMP, timestamp.to_string()),
        (WEBHOOK_SIGNATURE, standard),
    ];
    for (name, value) in headers {
        let value = HeaderValue::from_str(&value).map_err(|e| e.to_string())?;
        request.headers_mut().insert(name, value);
    }
    Ok(())
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The Standard Webhooks signature of `body` as message `id` sent at `timestamp`:
/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. A receiver checks it and
/// refuses a timestamp too far from its clock, so a captured request cannot be replayed
/// later. The key is [`standard_key`].
pub fn standard_signature(secret: &str, id: &str, timestamp: u64, body: &[u8]) -> String {
    use base64::Engine;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &standard_key(secret));
    let mut signed = ring::hmac::Context::with_key(&key);
    signed.update(format!("{id}.{timestamp}.").as_bytes());
    signed.update(body);
    let tag = signed.sign();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// The Standard Webhooks key of `secret`: a `whsec_` secret (the spec's form) is the
/// base64 of the key; any other secret is the key's bytes, as for the Lockstep header.
pub fn standard_key(secret: &str) -> Vec<u8> {
    use base64::Engine;
    let encoded = secret.strip_prefix("whsec_");
    let decoded = encoded.and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
    decoded.unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A 2xx: the receiver has it.
    Delivered(u16),
    /// 410 Gone: the receiver wants nothing more, ever.
    Gone(u16),
    /// 429 or 503 with a `Retry-After` in seconds: try again after it.
    Later(u16, Duration),
    /// Anything else (another status, or no answer: status 0): back off and retry.
    Failed(u16, String),
}

impl Answer {
    /// The HTTP status (0: none).
    pub fn status(&self) -> u16 {
        match self {
            Self::Delivered(s) | Self::Gone(s) | Self::Later(s, _) | Self::Failed(s, _) => *s,
        }
    }

    /// Why it did not work ("" when it did).
    pub fn error(&self) -> String {
        match self {
            Self::Delivered(_) => String::new(),
            Self::Gone(s) => format!("the receiver answered {s} Gone"),
            Self::Later(s, wait) => format!("the receiver answered {s}, retry after {wait:?}"),
            Self::Failed(_, why) => why.clone(),
        }
    }
}

/// Sends `request` once.
pub async fn send(client: &reqwest::Client, request: reqwest::Request) -> Answer {
    match client.execute(request).await {
        Ok(response) => classify(
            response.status().as_u16(),
            response.headers().get(RETRY_AFTER),
        ),
        Err(e) => Answer::Failed(0, describe(&e)),
    }
}

fn classify(status: u16, retry_after: Option<&HeaderValue>) -> Answer {
    let wait = retry_after
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
    match (status, wait) {
        (200..=299, _) => Answer::Delivered(status),
        (410, _) => Answer::Gone(status),
        (429 | 503, Some(wait)) => Answer::Later(status, wait),
        _ => Answer::Failed(status, format!("the receiver answered {status}")),
    }
}

/// A reqwest error in one line with its causes (its own message hides them), its URL
/// [`shown`](super::subscription::shown) without credentials; the http verify steps say
/// the same.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let mut why = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        why = format!("{why}: {inner}");
        source = inner.source();
    }
    if let Some(url) = e.url() {
        why = why.replace(url.as_str(), &super::subscription::shown(url.as_str()));
    }
    format!("{what}: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_mean_what_the_http_spec_says() {
        let one = HeaderValue::from_static("1");
        assert_eq!(classify(204, None), Answer::Delivered(204));
        assert_eq!(classify(410, None), Answer::Gone(410));
        assert_eq!(
            classify(429, Some(&one)),
            Answer::Later(429, Duration::from_secs(1))
        );
        assert!(matches!(classify(429, None), Answer::Failed(429, _)));
        assert!(matches!(classify(500, Some(&one)), Answer::Failed(500, _)));
    }

    #[test]
    fn the_signature_is_hmac_sha256_in_hex() {
        // RFC 4231 test case 2.
        let tag = sign("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            tag,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_standard_signature_matches_the_specs_example() {
        // The Standard Webhooks reference libraries' test vector.
        let signature = standard_signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(standard_key("plain secret"), b"plain secret");
        assert_eq!(standard_key("whsec_not base64!"), b"whsec_not base64!");
    }

    #[test]
    fn a_signed_request_carries_both_signatures() {
        let client = reqwest::Client::new();
        let mut request = client
            .post("http://127.0.0.1:9/hook")
            .body("{}")
            .build()
            .unwrap();
        sign_request(&mut request, "k", "00000000000000000007", 1700000000).unwrap();
        let header = |name: &str| request.headers()[name].to_str().unwrap().to_string();
        assert_eq!(header(SIGNATURE), sign("k", b"{}"));
        assert_eq!(header(WEBHOOK_ID), "00000000000000000007");
        assert_eq!(header(WEBHOOK_TIMESTAMP), "1700000000");
        assert_eq!(
            header(WEBHOOK_SIGNATURE),
            standard_signature("k", "00000000000000000007", 1700000000, b"{}")
        );
    }

    #[test]
    fn the_id_is_the_zero_padded_sequence() {
        let e = pb::Event {
            seq: 42,
            kind: pb::EventKind::TransactionAborted as i32,
            transaction_id: "T4".into(),
            ..Default::default()
        };
        let ce = from_log(&e, "urn:lockstep:x").unwrap();
        use cloudevents::AttributesReader;
        assert_eq!(ce.id(), "00000000000000000042");
        assert_eq!(ce.ty(), "dev.lockstep.transaction.aborted");
        assert_eq!(ce.subject(), Some("T4"));
    }
}
