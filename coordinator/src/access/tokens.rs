//! Bearer tokens for CI and people: signed (HS256, with a key made once with the data
//! directory and never leaving it), expiring, and revocable by id. A token's claims are
//! a [`Grant`] plus who it was made for, so a later identity provider could mint the
//! same claims.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::roles::Grant;

/// Who issues Lockstep tokens (the `iss` claim).
pub const ISSUER: &str = "lockstep";

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Its id: what `lockstep token revoke` names.
    pub jti: String,
    /// Who it was made for (free text, shown as the actor).
    pub sub: String,
    /// Who issued it.
    pub iss: String,
    /// When it was made, seconds since the epoch.
    pub iat: u64,
    /// When it stops working, seconds since the epoch.
    pub exp: u64,
    /// What it allows.
    #[serde(flatten)]
    pub grant: Grant,
}

/// The key tokens are signed and checked with.
#[derive(Clone)]
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// The key from its secret bytes.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A signed token carrying `claims`.
    pub fn issue(&self, claims: &Claims) -> Result<String, String> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| format!("signing the token: {e}"))
    }

    /// The claims of a token this key signed, if it has not expired at `now_s`. `Err`
    /// says why not, for the caller's UNAUTHENTICATED.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, String> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        // Expiry is checked below against the caller's clock, with no leeway.
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| format!("token not accepted: {e}"))?
            .claims;
        if claims.exp <= now_s {
            return Err(format!("token {} expired", claims.jti));
        }
        Ok(claims)
    }
}

/// A fresh secret for a new data directory, from the operating system's randomness.
pub fn new_secret() -> Result<Vec<u8>, String> {
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| format!("no randomness for the token key: {e}"))?;
    Ok(secret)
}

/// A fresh token id: 64 random bits, in hex, after `tok-`.
pub fn new_id() -> Result<String, String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a token id: {e}"))?;
    Ok(format!(
        "tok-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::access::roles::Role;

    fn claims(exp: u64) -> Claims {
        Claims {
            jti: "tok-1".into(),
            sub: "ci".into(),
            iss: ISSUER.into(),
            iat: 0,
            exp,
            grant: Grant::everywhere(Role::Releaser),
        }
    }

    #[test]
    fn a_token_reads_back_until_it_expires() {
        let key = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let token = key.issue(&claims(100)).unwrap();
        assert_eq!(key.verify(&token, 99).unwrap(), claims(100));
        assert!(key.verify(&token, 100).unwrap_err().contains("expired"));
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let ours = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let theirs = TokenKey::new(b"fedcba9876543210fedcba9876543210");
        let token = theirs.issue(&claims(100)).unwrap();
        assert!(ours.verify(&token, 1).unwrap_err().contains("not accepted"));
    }
}
