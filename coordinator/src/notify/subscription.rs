//! A webhook subscription as stored: where to send, which events, how, and how far
//! delivery got (its durable cursor). Validated here from the wire request, so that a
//! bad request is refused naming its field before anything is stored.

use std::collections::BTreeSet;

use lockstep::{
    names::{Environment, FieldError, ProjectName},
    pb,
};

use super::kinds;
use crate::convert;
pub use crate::model::{Mode, SubscriptionRecord};

impl Mode {
    fn parse(value: &str) -> Result<Self, FieldError> {
        match value {
            "" | "structured" => Ok(Self::Structured),
            "binary" => Ok(Self::Binary),
            other => Err(FieldError::new(
                "mode",
                format!("{other:?} is no mode (structured or binary)"),
            )),
        }
    }

    /// Its name, as `parse` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Structured => "structured",
            Self::Binary => "binary",
        }
    }
}

impl SubscriptionRecord {
    /// Validates an AddSubscription request; `head` is the log's newest sequence number
    /// (where delivery starts unless `from_seq` says otherwise).
    pub fn from_request(
        r: &pb::AddSubscriptionRequest,
        head: u64,
        actor: &str,
    ) -> Result<Self, FieldError> {
        let name = ProjectName::parse("name", &r.name)?.to_string();
        convert::http_url("url", &r.url)?;
        convert::text("secret", &r.secret, 1024)?;
        Ok(Self {
            name,
            url: r.url.clone(),
            events: events(&r.events)?,
            environment: optional(&r.environment, |v| Environment::parse("environment", v))?,
            project: optional(&r.project, |v| ProjectName::parse("project", v))?,
            mode: Mode::parse(&r.mode)?,
            secret: r.secret.clone(),
            ticket_sink: r.ticket_sink,
            cursor: if r.from_seq == 0 {
                head
            } else {
                r.from_seq - 1
            },
            disabled: String::new(),
            created_by: actor.to_string(),
        })
    }

    /// Whether it gets only some events (an environment's, a project's, tickets'):
    /// failures reach such a subscription only by their route.
    pub fn is_scoped(&self) -> bool {
        self.ticket_sink || self.environment.is_some() || self.project.is_some()
    }

    /// Its environment filter's name ("" none).
    pub fn environment_name(&self) -> String {
        self.environment
            .as_ref()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    /// Its project filter's name ("" none).
    pub fn project_name(&self) -> String {
        self.project
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default()
    }

    /// As the wire shows it (never the secret, the URL [`shown`]); `head` gives the lag.
    pub fn message(&self, head: u64) -> pb::Subscription {
        pb::Subscription {
            name: self.name.clone(),
            url: shown(&self.url),
            events: self.events.iter().map(|k| kinds::name(*k).into()).collect(),
            environment: self
                .environment
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            project: self
                .project
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            mode: self.mode.name().into(),
            has_secret: !self.secret.is_empty(),
            ticket_sink: self.ticket_sink,
            cursor: self.cursor,
            lag: head.saturating_sub(self.cursor),
            disabled: self.disabled.clone(),
            created_by: self.created_by.clone(),
            ..Default::default()
        }
    }
}

pub use crate::convert::shown_url as shown;

fn events(names: &[String]) -> Result<BTreeSet<i32>, FieldError> {
    let parse = |n: &String| kinds::parse(n.trim()).map(|k| k as i32);
    names
        .iter()
        .map(|n| parse(n).map_err(|why| FieldError::new("events", why)))
        .collect()
}

fn optional<T>(
    value: &str,
    parse: impl Fn(&str) -> Result<T, FieldError>,
) -> Result<Option<T>, FieldError> {
    (!value.is_empty()).then(|| parse(value)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::AddSubscriptionRequest {
        pb::AddSubscriptionRequest {
            name: "driver".into(),
            url: "http://127.0.0.1:9/hook".into(),
            ..Default::default()
        }
    }

    fn refusal(change: impl Fn(&mut pb::AddSubscriptionRequest)) -> String {
        let mut r = request();
        change(&mut r);
        SubscriptionRecord::from_request(&r, 7, "")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_requests_name_their_field() {
        assert!(refusal(|r| r.url = "ftp://x/".into()).contains("url"));
        assert!(refusal(|r| r.url = "not a url".into()).contains("url"));
        assert!(refusal(|r| r.events = vec!["nope".into()]).contains("events"));
        assert!(refusal(|r| r.mode = "json".into()).contains("mode"));
        assert!(refusal(|r| r.name = "no spaces".into()).contains("name"));
    }

    #[test]
    fn urls_are_shown_without_userinfo_or_query() {
        let cases = [
            ("https://hooks.example/a", "https://hooks.example/a"),
            ("http://127.0.0.1:9", "http://127.0.0.1:9"),
            (
                "https://user:pass@hooks.example:8443/a/b?token=x&y=z#frag",
                "https://***@hooks.example:8443/a/b?***",
            ),
            ("https://token@hooks.example/", "https://***@hooks.example/"),
            ("https://:pass@hooks.example/", "https://***@hooks.example/"),
            (
                "https://hooks.example/a?sig=abc",
                "https://hooks.example/a?***",
            ),
            ("https://hooks.example/a#x", "https://hooks.example/a"),
            ("ftp://u:s3cret@host/", "ftp://***@host/"),
            ("http://u:s@cret@ho st/h?t=s3cret", "http://***@ho st/h?***"),
            ("not a url", "not a url"),
        ];
        for (url, expected) in cases {
            assert_eq!(shown(url), expected, "{url}");
        }
        let r = pb::AddSubscriptionRequest {
            url: "https://u:p@hooks.example/h?k=v".into(),
            ..request()
        };
        let record = SubscriptionRecord::from_request(&r, 0, "").unwrap();
        assert_eq!(record.url, r.url, "the stored URL is whole");
        assert_eq!(record.message(0).url, "https://***@hooks.example/h?***");
    }

    #[test]
    fn delivery_starts_at_the_head_unless_told_otherwise() {
        let at_head = SubscriptionRecord::from_request(&request(), 7, "").unwrap();
        assert_eq!(at_head.cursor, 7);
        let mut r = request();
        r.from_seq = 3;
        assert_eq!(
            SubscriptionRecord::from_request(&r, 7, "").unwrap().cursor,
            2
        );
    }
}
