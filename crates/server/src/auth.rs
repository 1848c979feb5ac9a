//! Who is calling: a user (JWT), a publisher (publish key) or an operator (admin key).
//!
//! Subscribers present a JWT whose `sub` names the user; publishers and
//! operators present opaque keys, compared in constant time. In dev mode the
//! server makes up its own JWT secret, hands out tokens at `/dev/token`, uses a
//! well-known publish key if none is set, and opens the operator routes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentwire_protocol::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::config::{DEV_PUBLISH_KEY, ServerConfig};

/// A token that does not let its bearer in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// The claims agentwire reads from a subscriber's JWT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A subscriber, until `exp` (seconds since the epoch).
    User {
        id: UserId,
        exp: u64,
    },
    Publisher,
    Operator,
}

/// The server's credentials.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    publish_keys: Vec<Vec<u8>>,
    admin_key: Option<Vec<u8>>,
    dev_mode: bool,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn key_matches(candidate: &[u8], key: &[u8]) -> bool {
    candidate.ct_eq(key).into()
}

impl Auth {
    /// Credentials from the settings. In dev mode without a secret, a random one
    /// is made up for this process.
    pub fn from_config(config: &ServerConfig) -> Result<Self, AuthError> {
        let dev_mode = config.dev_mode();
        let secret = match &config.jwt_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => rand::random::<[u8; 32]>().to_vec(),
        };
        let mut publish_keys: Vec<Vec<u8>> =
            config.publish_keys.iter().filter(|k| !k.is_empty()).map(|k| k.as_bytes().to_vec()).collect();
        if publish_keys.is_empty() && dev_mode {
            publish_keys.push(DEV_PUBLISH_KEY.as_bytes().to_vec());
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        let key_error = |e: jsonwebtoken::errors::Error| AuthError::Invalid(format!("unusable JWT secret: {e}"));
        Ok(Self {
            encoding: EncodingKey::from_secret(&secret).map_err(key_error)?,
            decoding: DecodingKey::from_secret(&secret).map_err(key_error)?,
            validation,
            publish_keys,
            admin_key: config.admin_key.as_ref().filter(|k| !k.is_empty()).map(|k| k.as_bytes().to_vec()),
            dev_mode,
        })
    }

    /// Whether the server runs in dev mode.
    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// Whether any publish key is configured.
    pub fn has_publish_keys(&self) -> bool {
        !self.publish_keys.is_empty()
    }

    /// Who `token` belongs to: a publish key, the admin key, or a valid JWT.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        // Every key is compared, so the time taken does not tell which one nearly matched.
        let publisher = self.publish_keys.iter().fold(false, |hit, k| hit | key_matches(token.as_bytes(), k));
        if publisher {
            return Ok(Principal::Publisher);
        }
        if self.admin_key.as_ref().is_some_and(|k| key_matches(token.as_bytes(), k)) {
            return Ok(Principal::Operator);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let id = UserId::parse(&data.claims.sub).map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok(Principal::User { id, exp: data.claims.exp })
    }

    /// Whether `principal` may use the operator routes (always in dev mode).
    pub fn is_operator(&self, principal: Option<&Principal>) -> bool {
        self.dev_mode || matches!(principal, Some(Principal::Operator))
    }

    /// Signs a token for `user`, valid for `ttl` (dev mode's `/dev/token`, and tests).
    pub fn issue(&self, user: &UserId, ttl: Duration) -> Result<(String, u64), AuthError> {
        let iat = now_secs();
        let exp = iat + ttl.as_secs();
        let claims = Claims { sub: user.to_string(), exp, iat: Some(iat) };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok((token, exp))
    }
}

/// Seconds left before `exp`.
pub fn remaining(exp: u64) -> Duration {
    Duration::from_secs(exp.saturating_sub(now_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: Option<&str>, listen: &str) -> ServerConfig {
        let mut c = ServerConfig::from_env().unwrap();
        c.jwt_secret = secret.map(str::to_owned);
        c.listen = listen.parse().unwrap();
        c.publish_keys = vec!["pk-1".into(), "pk-2".into()];
        c.admin_key = Some("admin".into());
        c
    }

    #[test]
    fn tells_users_publishers_and_operators_apart() {
        let auth = Auth::from_config(&config(Some("s3cret"), "0.0.0.0:1")).unwrap();
        assert!(!auth.dev_mode());
        let alice = UserId::parse("alice").unwrap();
        let (token, exp) = auth.issue(&alice, Duration::from_secs(60)).unwrap();
        assert_eq!(auth.authenticate(Some(&token)).unwrap(), Principal::User { id: alice, exp });
        assert_eq!(auth.authenticate(Some("pk-2")).unwrap(), Principal::Publisher);
        assert_eq!(auth.authenticate(Some("admin")).unwrap(), Principal::Operator);
        assert!(matches!(auth.authenticate(None), Err(AuthError::Missing)));
        assert!(matches!(auth.authenticate(Some("pk-3")), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn refuses_forged_and_expired_tokens() {
        let auth = Auth::from_config(&config(Some("s3cret"), "0.0.0.0:1")).unwrap();
        let other = Auth::from_config(&config(Some("another"), "0.0.0.0:1")).unwrap();
        let bob = UserId::parse("bob").unwrap();
        let (forged, _) = other.issue(&bob, Duration::from_secs(60)).unwrap();
        assert!(auth.authenticate(Some(&forged)).is_err());
        let claims = Claims { sub: "bob".into(), exp: now_secs() - 60, iat: None };
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret").unwrap(),
        )
        .unwrap();
        assert!(auth.authenticate(Some(&expired)).is_err());
    }

    #[test]
    fn dev_mode_needs_loopback_and_no_secret() {
        let mut c = config(None, "127.0.0.1:0");
        c.publish_keys.clear();
        let dev = Auth::from_config(&c).unwrap();
        assert!(dev.dev_mode());
        assert_eq!(dev.authenticate(Some(DEV_PUBLISH_KEY)).unwrap(), Principal::Publisher);
        assert!(dev.is_operator(None));
        assert!(!Auth::from_config(&config(Some("s"), "127.0.0.1:0")).unwrap().dev_mode());
    }
}
