//! The one grammar of an artifact reference, read by the coordinator when it admits a
//! release (so a malformed one is refused naming its field before anything is sent)
//! and by the reference agent when it stages: a path on the agent's machine (a
//! directory or a `.tar.gz`), `file://PATH`, or an `http(s)://` URL of a `.tar.gz`,
//! each optionally followed by `@sha256:HEX`; a URL must carry its digest, since a
//! build named only by where it lives can change under the name.

use std::path::PathBuf;

/// A reference as a release gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// No artifact.
    None,
    /// A path on this machine (`file://` URLs too), with an optional digest.
    Local(PathBuf, Option<String>),
    /// An `http(s)://` URL and its digest (hex).
    Remote(String, String),
}

/// Splits `text` into where and which digest; `Err` says what is wrong.
pub fn parse(text: &str) -> Result<Reference, String> {
    if text.is_empty() {
        return Ok(Reference::None);
    }
    let (place, digest) = split_digest(text)?;
    if place.starts_with("http://") || place.starts_with("https://") {
        let digest = digest.ok_or_else(|| {
            format!("artifact {place}: a URL artifact needs its digest (`{place}@sha256:HEX`)")
        })?;
        return Ok(Reference::Remote(place.to_string(), digest));
    }
    let path = place.strip_prefix("file://").unwrap_or(place);
    Ok(Reference::Local(PathBuf::from(path), digest))
}

/// `(place, Some(hex))` for `place@sha256:HEX`; a malformed digest is an error.
fn split_digest(text: &str) -> Result<(&str, Option<String>), String> {
    let Some((place, digest)) = text.rsplit_once("@sha256:") else {
        return Ok((text, None));
    };
    let hex = digest.to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "artifact {text}: the digest must be sha256: and 64 hex digits"
        ));
    }
    Ok((place, Some(hex)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_parse_into_where_and_which_digest() {
        assert_eq!(parse("").unwrap(), Reference::None);
        assert_eq!(
            parse("/b/app.tar.gz").unwrap(),
            Reference::Local("/b/app.tar.gz".into(), None)
        );
        assert_eq!(
            parse(&format!("file:///b/app.tar.gz@sha256:{D}")).unwrap(),
            Reference::Local("/b/app.tar.gz".into(), Some(D.into()))
        );
        assert_eq!(
            parse(&format!("https://h/app.tar.gz@sha256:{}", D.to_uppercase())).unwrap(),
            Reference::Remote("https://h/app.tar.gz".into(), D.into())
        );
    }

    #[test]
    fn a_url_without_a_digest_or_a_malformed_digest_is_refused() {
        let bare = parse("https://h/app.tar.gz").unwrap_err();
        assert!(bare.contains("needs its digest"), "{bare}");
        let short = parse("https://h/app.tar.gz@sha256:abc").unwrap_err();
        assert!(short.contains("64 hex digits"), "{short}");
    }
}
